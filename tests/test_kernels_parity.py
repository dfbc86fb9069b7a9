"""train.kernels: auto and reference train to the same losses (engine/perf), and the switch
really switches.

Each job runs a few steps of the tiny model both ways in this process, prepared exactly as
the trainer prepares it (engine.perf.plan, engine.perf.apply.prepare, the Trainer class of
engine.lean_trainer.trainer_class, the collator with TrainedLogitsOnly where the plan says):
LoRA and full fine-tuning, packing on and off, fp32 (losses within 1e-5) and bf16 autocast
(within bf16's rounding). A deliberately wrong kernel is caught, and the fused code is
called under auto and never under reference. The GPU parity tests are marked ``gpu`` and
skip cleanly without CUDA. tests/test_train_runs.py runs the switch through a real trainer
process.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from finetui.engine import perf  # noqa: E402
from train_helpers import make_config  # noqa: E402

FP32_TOLERANCE = 1e-5
BF16_TOLERANCE = 2e-2  # relative: bf16 keeps 8 bits of mantissa (~4e-3 a rounding)
STEPS = 4


def run_job(config, device: str = "cpu") -> tuple[list[float], perf.Plan]:
    """The job's per-step training losses, and the plan it ran with."""
    import tempfile

    from transformers import PrinterCallback, set_seed

    from finetui.engine import modeling
    from finetui.engine.data import dataset as dataset_mod
    from finetui.engine.lean_trainer import trainer_class
    from finetui.engine.perf import fused_layers
    from finetui.engine.perf.apply import prepare
    from finetui.engine.train import training_arguments

    set_seed(config.train.seed)
    tokenizer = modeling.load_tokenizer(config.model.name_or_path)
    data = dataset_mod.build(config, tokenizer)
    model = modeling.load_model(config.model, config.method, tokenizer=tokenizer, added_tokens=data.added_tokens,
                                eos_token_ids=data.eos_token_ids, device=device)
    with tempfile.TemporaryDirectory() as out:
        args = training_arguments(config, __import__("pathlib").Path(out), device, False, 1)
        plan = perf.plan(config.train.kernels, device, args.bf16 or args.fp16,
                         dtype=str(next(model.parameters()).dtype).replace("torch.", ""),
                         method=config.method.type, lora_dropout=config.method.lora_dropout,
                         packing=config.data.packing, attn_implementation=config.model.attn_implementation)
        prepare(model, plan, say=lambda message: None)
        args.use_liger_kernel = plan.liger
        collate = dataset_mod.collator(config, tokenizer)
        if plan.trained_logits_only and dataset_mod.trained_logits_supported(model):
            collate = dataset_mod.TrainedLogitsOnly(collate)
        trainer = trainer_class(plan.lean_trainer)(model=model, args=args, data_collator=collate,
                                                   train_dataset=data.train)
        trainer.remove_callback(PrinterCallback)
        try:
            trainer.train()
        finally:
            fused_layers.restore()  # the rotary embedding is replaced module-wide
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == STEPS
    return losses, plan


def job(method: str, packing: bool, precision: str, kernels: str):
    return make_config(method={"type": method}, data={"packing": packing, "test_size": 0},
                       train={"max_steps": STEPS, "eval_strategy": "no", "save_strategy": "no",
                              "precision": precision, "kernels": kernels, "learning_rate": 1e-3})


def assert_same(auto: list[float], reference: list[float], precision: str) -> None:
    if precision == "fp32":
        assert auto == pytest.approx(reference, abs=FP32_TOLERANCE)
    else:
        assert auto == pytest.approx(reference, rel=BF16_TOLERANCE)


JOBS = [(m, p, x) for x in ("fp32", "bf16") for m in ("lora", "full") for p in (True, False)]


@pytest.mark.slow
@pytest.mark.parametrize("method,packing,precision", JOBS,
                         ids=[f"{m}-{'packed' if p else 'padded'}-{x}" for m, p, x in JOBS])
def test_auto_and_reference_train_alike_on_cpu(tiny_model_dir, finetui_cache, method, packing, precision):
    auto, auto_plan = run_job(job(method, packing, precision, "auto"))
    reference, reference_plan = run_job(job(method, packing, precision, "reference"))
    assert auto_plan.lean_trainer and auto_plan.trained_logits_only  # auto uses our code ...
    assert auto_plan.fused_layers == (precision == "fp32")  # ... the fused modules in fp32 only
    assert reference_plan == perf.Plan("reference", "cpu")  # ... reference none of it
    assert_same(auto, reference, precision)
    assert len(set(auto)) > 1  # the losses move: the steps trained


@pytest.mark.slow
def test_a_wrong_kernel_is_caught(tiny_model_dir, finetui_cache, monkeypatch):
    """The fused loss normalised by one target too many (an off-by-one, ~0.3% here): the
    parity check fails."""
    from finetui.engine.perf import fused_loss

    original = fused_loss.linear_cross_entropy

    def off_by_one(hidden, weight, bias, targets, num_items_in_batch=None, **kwargs):
        n = (targets != fused_loss.IGNORE_INDEX).sum() if num_items_in_batch is None else num_items_in_batch
        return original(hidden, weight, bias, targets, n + 1, **kwargs)

    reference, _ = run_job(job("lora", True, "fp32", "reference"))
    assert_same(run_job(job("lora", True, "fp32", "auto"))[0], reference, "fp32")  # the right kernel passes
    monkeypatch.setattr(fused_loss, "linear_cross_entropy", off_by_one)
    wrong, _ = run_job(job("lora", True, "fp32", "auto"))
    with pytest.raises(AssertionError):
        assert_same(wrong, reference, "fp32")


@pytest.mark.slow
def test_the_switch_switches(tiny_model_dir, finetui_cache, monkeypatch):
    """Calls into our fused code and the lean Trainer: many under auto, none under reference."""
    from finetui.engine.perf import attention, fused_layers, fused_lora, fused_loss
    from finetui.engine.perf import lean_trainer as lean

    calls = {"lora": 0, "layers": 0, "loss": 0, "attention": 0, "lean": 0}

    def counted(owner, name, key, static=True):
        original = getattr(owner, name)

        def wrapper(*args, **kwargs):
            calls[key] += 1
            return original(*args, **kwargs)

        monkeypatch.setattr(owner, name, staticmethod(wrapper) if static else wrapper)

    counted(fused_lora._LoraLinears, "apply", "lora")
    counted(fused_lora._LoraSwiGLU, "apply", "lora")
    counted(fused_layers._RMSNorm, "apply", "layers")
    counted(fused_loss._LinearCrossEntropy, "apply", "loss")
    counted(attention, "packed_sdpa_attention", "attention", static=False)
    counted(lean, "quick_mode_and_grads", "lean", static=False)
    run_job(job("lora", True, "fp32", "reference"))
    assert calls == dict.fromkeys(calls, 0)
    run_job(job("lora", True, "fp32", "auto"))
    assert all(n > 0 for n in calls.values()), calls


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("method,packing", [("lora", True), ("full", False)])
def test_auto_and_reference_train_alike_on_cuda(tiny_model_dir, finetui_cache, method, packing):
    """On CUDA, auto applies Liger Kernel (when installed) and flash-attn (when installed);
    bf16 losses within bf16's rounding of plain transformers + peft."""
    auto, auto_plan = run_job(job(method, packing, "bf16", "auto"), device="cuda")
    reference, _ = run_job(job(method, packing, "bf16", "reference"), device="cuda")
    assert auto_plan.liger == (perf.LIGER in perf.installed_packages())
    assert_same(auto, reference, "bf16")


# --------------------------------------------------------------------------- the plan, as a function


def test_reference_plans_nothing_anywhere():
    for device in ("cpu", "cuda", "cuda:1", "mps"):
        for mixed in (False, True):
            plan = perf.plan("reference", device, mixed, installed=frozenset({perf.LIGER, perf.FLASH_ATTN}))
            assert plan == perf.Plan("reference", device.split(":")[0])
            assert plan.describe().startswith("kernels: reference")


def test_cpu_plans_our_kernels_in_fp32_only():
    fp32 = perf.plan("auto", "cpu", False, packing=True, installed=frozenset())
    assert (fp32.fused_lora, fp32.fused_layers, fp32.fused_loss, fp32.packed_attention, fp32.cpu_threads) == (
        True, True, True, True, True)
    assert not fp32.liger and fp32.attn_implementation is None
    bf16 = perf.plan("auto", "cpu", True, packing=True, installed=frozenset({perf.LIGER}))
    assert not (bf16.fused_lora or bf16.fused_layers or bf16.fused_loss or bf16.liger)  # Liger is CUDA only
    assert bf16.packed_attention and bf16.lean_trainer
    assert not perf.plan("auto", "cpu", False, packing=True, attn_implementation="eager").packed_attention


def test_cuda_plans_liger_and_flash_attention_when_installed():
    both = frozenset({perf.LIGER, perf.FLASH_ATTN})
    plan = perf.plan("auto", "cuda", True, packing=True, installed=both)
    assert plan.liger and plan.attn_implementation == "flash_attention_2"
    assert not (plan.fused_lora or plan.fused_layers or plan.fused_loss or plan.packed_attention or plan.cpu_threads)
    assert not plan.trained_logits_only  # Liger's forward takes no boolean logits_to_keep
    assert "Liger Kernel" in plan.describe() and "flash_attention_2" in plan.describe()
    bare = perf.plan("auto", "cuda:0", True, packing=True, installed=frozenset())
    assert not bare.liger and bare.attn_implementation is None and bare.trained_logits_only
    assert "not installed" in bare.describe()
    # flash-attn needs 16-bit activations and attn_implementation: auto
    assert perf.plan("auto", "cuda", False, installed=both).attn_implementation is None
    assert perf.plan("auto", "cuda", True, attn_implementation="sdpa", installed=both).attn_implementation is None


def test_an_unknown_kernels_value_is_refused():
    with pytest.raises(ValueError, match="train.kernels"):
        perf.plan("fast", "cpu", False)
    from finetui.engine import config as cfg

    with pytest.raises(cfg.ConfigError, match="kernels"):
        make_config(train={"kernels": "fast"})


def test_prepare_switches_attention_as_the_plan_asks(tiny_model_dir):
    """The CUDA plan's attention switch (flash_attention_2 there), run here with eager: the
    model's attention implementation follows and the run's log says so."""
    from transformers import AutoModelForCausalLM

    from finetui.engine.perf.apply import prepare

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), attn_implementation="sdpa")
    said = []
    done = prepare(model, perf.Plan("auto", "cuda", attn_implementation="eager"), say=said.append)
    assert done == ["eager"] and model.config._attn_implementation == "eager"
    assert said == ["attention: eager (packed rows as variable-length sequences)"]
    assert prepare(model, perf.Plan("reference", "cuda"), say=said.append) == [] and len(said) == 1
