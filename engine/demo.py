"""`finetui demo`: the offline demo, start to finish, on the built-in tiny model.

Train ``sample_data/quickstart.yaml`` (full fine-tune of ``tiny`` on the finetui FAQ),
merge, ask the merged model a few FAQ questions and one off-topic one, then evaluate on
the held-out split next to the untrained base. Each step is the same sub-command a user
would type, so the demo exercises exactly the public paths.
"""

from __future__ import annotations

import json
import random
import sys
from importlib import resources


def _faq_questions(n_on_topic: int = 4) -> list[str]:
    rows = []
    text = (resources.files("sample_data") / "finetui_faq.jsonl").read_text(encoding="utf-8")
    for line in text.splitlines():
        if line.strip():
            rows.append(json.loads(line))
    moderation = "Let's keep the discussion relevant to finetui."
    on_topic = [r["question"] for r in rows if r["answer"] != moderation]
    off_topic = [r["question"] for r in rows if r["answer"] == moderation]
    rng = random.Random(0)
    return rng.sample(on_topic, n_on_topic) + rng.sample(off_topic, 1)


def command(args) -> int:
    from engine import cli, runs

    def step(title: str, argv: list[str]) -> int:
        print(f"\n== {title}: finetui {' '.join(argv)}", flush=True)
        return cli.main(argv)

    quickstart = resources.files("sample_data") / "quickstart.yaml"
    with resources.as_file(quickstart) as path:
        overrides = [x for o in getattr(args, "overrides", []) for x in ("--set", o)]
        rc = step("train", ["train", str(path), *overrides])
    if rc:
        return rc
    run_id = runs.resolve("last").name
    if step("merge", ["merge", run_id]):
        return 1
    prompts = [x for q in _faq_questions() for x in ("--prompt", q)]
    if step("chat with the merged model", ["chat", run_id, *prompts]):
        return 1
    # What the model was taught (memorised FAQ answers: the point of the demo), then what
    # it was not (held-out questions: a 0.3M-parameter model does not generalise).
    if step("exact match on 20 training questions", ["eval", run_id, "--split", "train", "--limit", "20",
                                                     "--compare-base"]):
        return 1
    if step("evaluate on the held-out split", ["eval", run_id, "--compare-base"]):
        return 1
    print(f"\nDone. Open the TUI with `finetui`, or chat: finetui chat {run_id}", file=sys.stderr)
    return 0
