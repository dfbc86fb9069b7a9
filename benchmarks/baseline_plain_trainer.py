"""Baseline for the training benchmark: a plain ``transformers.Trainer`` + ``peft`` LoRA
script in the style of the usual QLoRA/ChatML fine-tuning guides (no finetui code).

    python benchmarks/baseline_plain_trainer.py --model DIR --data alpaca.json \
        [--rows 400] [--cutoff 256] [--batch-size 8] [--lr 1e-3] [--seed 42] [--out result.json]

What it does, as such a guide would:

- read the alpaca JSON with ``datasets``, join instruction and input with a newline,
  render each record as ChatML (``<|im_start|>user ... <|im_end|>\\n<|im_start|>assistant\\n``
  + reply + ``<|im_end|>``) and tokenise it, truncating at ``--cutoff`` tokens; labels are
  -100 on the prompt (train on the reply only);
- ``DataCollatorForSeq2Seq`` pads each batch to its longest row (no packing);
- LoRA r8 / alpha 16 / dropout 0 on all linear layers, AdamW, cosine schedule, 1 epoch,
  fp32 on the CPU, torch's default threads, the Trainer's defaults for everything else.

It prints (and with ``--out`` writes) one JSON object: train_runtime_s,
train_samples_per_second, train_loss, samples, real_tokens (non-pad tokens of the epoch),
trained_tokens, first_step_time (unix time the first step was logged) and started (unix
time the script began).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

STARTED = time.time()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="plain Trainer + peft LoRA SFT baseline")
    p.add_argument("--model", required=True, help="local Hugging Face model folder")
    p.add_argument("--data", required=True, help="alpaca-format JSON file")
    p.add_argument("--rows", type=int, default=400)
    p.add_argument("--cutoff", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--output-dir", default="/tmp/baseline-plain-trainer")
    p.add_argument("--out", help="write the result JSON here too")
    args = p.parse_args(argv)

    import torch
    from datasets import load_dataset
    from peft import LoraConfig, get_peft_model
    from transformers import (AutoModelForCausalLM, AutoTokenizer, DataCollatorForSeq2Seq, Trainer,
                              TrainerCallback, TrainingArguments, set_seed)

    set_seed(args.seed)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token

    raw = load_dataset("json", data_files=args.data, split="train")
    raw = raw.select(range(min(args.rows, len(raw))))

    def tokenize(example):
        prompt = "\n".join(x for x in (example["instruction"], example.get("input") or "") if x.strip())
        prompt_text = f"<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n"
        full = tokenizer(prompt_text + example["output"] + "<|im_end|>", add_special_tokens=False,
                         truncation=True, max_length=args.cutoff)
        n_prompt = len(tokenizer(prompt_text, add_special_tokens=False)["input_ids"])
        labels = [-100] * min(n_prompt, len(full["input_ids"])) + full["input_ids"][n_prompt:]
        return {"input_ids": full["input_ids"], "attention_mask": full["attention_mask"], "labels": labels}

    data = raw.map(tokenize, remove_columns=raw.column_names)
    data = data.filter(lambda ex: any(label != -100 for label in ex["labels"]))  # nothing to learn

    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear",
                                             task_type="CAUSAL_LM"))

    first_step: list[float] = []

    class FirstStep(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if not first_step:
                first_step.append(time.time())

    training_args = TrainingArguments(
        output_dir=args.output_dir,
        per_device_train_batch_size=args.batch_size,
        num_train_epochs=1,
        learning_rate=args.lr,
        lr_scheduler_type="cosine",
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        seed=args.seed,
        use_cpu=not torch.cuda.is_available(),
        disable_tqdm=True,
    )
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=data,
        data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100),
        callbacks=[FirstStep()],
    )
    result = trainer.train()
    trainer.save_model(args.output_dir)

    out = {
        "train_runtime_s": result.metrics["train_runtime"],
        "train_samples_per_second": result.metrics["train_samples_per_second"],
        "train_loss": result.training_loss,
        "samples": len(data),
        "real_tokens": sum(len(ids) for ids in data["input_ids"]),
        "trained_tokens": sum(sum(1 for x in labels if x != -100) for labels in data["labels"]),
        "first_step_time": first_step[0] if first_step else None,
        "started": STARTED,
    }
    text = json.dumps(out)
    print(text, flush=True)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
