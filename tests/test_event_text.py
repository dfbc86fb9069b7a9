"""engine/events.py as text: one plain line per event, next to the schema."""

from __future__ import annotations

from finetui.engine import events as ev


def test_each_event_type_has_its_line():
    assert ev.format_event({"type": "run_started", "footprint": {"params_total": 10, "params_trainable": 2},
                            "datasets": {"train": 8, "test": 2}, "devices": ["cpu"]}) == (
        "started: 10 params (2 trainable), train 8 / test 2 examples, devices cpu")
    assert ev.format_event({"type": "step", "step": 3, "total_steps": 10, "epoch": 0.25, "loss": 1.23456,
                            "learning_rate": 0.0002, "tokens_per_s": 1234.5, "eta_s": 65}) == (
        "step 3/10  epoch 0.25  loss 1.235  lr 0.0002  1234 tok/s  eta 1:05")
    assert ev.format_event({"type": "eval", "step": 5, "eval_loss": 2.0, "perplexity": None}) == (
        "eval  step 5  eval_loss 2  ppl -")
    assert ev.format_event({"type": "checkpoint", "step": 5, "path": "runs/r/c5"}) == "checkpoint  step 5  runs/r/c5"
    assert ev.format_event({"type": "log", "level": "info", "message": "hi"}) == "[info] hi"
    assert ev.format_event({"type": "error", "kind": "oom", "message": "out", "hint": "smaller batch"}) == (
        "error (oom): out\n  hint: smaller batch")
    assert ev.format_event({"type": "finished", "status": "completed", "metrics": {"loss": 0.5, "note": "x"}}) == (
        "finished: completed  loss 0.5")
    assert ev.format_event({"type": "heartbeat"}) is None


def test_data_line_and_event_lines():
    data = {"counts": {"records": 1000, "ok": 970, "truncated": 3},
            "reasons": {"empty text": 20, "invalid JSON": 5, "too long": 3, "bad role": 2}}
    assert ev.data_line(data) == ("data: 1,000 read · 970 kept · 30 skipped (empty text 20, invalid JSON 5, "
                                  "too long 3, 1 more) · 3 truncated")
    assert ev.data_line(None) is None
    started = {"type": "run_started", "footprint": {}, "datasets": {}, "devices": [], "data": data}
    lines = ev.event_lines(started)
    assert lines[0].startswith("started: ? params") and lines[1].startswith("data: 1,000 read")
    assert "\x1b" not in ev.event_lines({"type": "log", "level": "info", "message": "a\x1b[31mb"})[0]


def test_format_number():
    assert ev.format_number(None) == "-"
    assert ev.format_number(3.14159) == "3.142"
    assert ev.format_number(3.14159, 2) == "3.1"
