"""finetui.tui.dashstate without an app: the text clipping of the dashboard's banners, the tail of
stdout.log, the run's config.yaml read forgivingly, and the fix a failed run is offered."""

from __future__ import annotations

from finetui.tui.dashstate import clip, likely_fix, read_yaml, tail_lines
from finetui.tui.runfeed import RunState


def test_clip_wraps_and_cuts_with_an_ellipsis():
    assert clip("a  b\n c", 10, 2) == "a b c"
    out = clip("word " * 20, 12, 2).splitlines()
    assert len(out) == 2 and out[-1].endswith("…") and all(len(line) <= 12 for line in out)
    assert clip("", 10, 1) == ""


def test_tail_of_a_log(tmp_path):
    log = tmp_path / "stdout.log"
    log.write_text("".join(f"line {i}\n" for i in range(1000)) + "\n   \n")
    tail = tail_lines(log, 100)
    assert tail[-1] == "line 999" and tail[0].startswith("line ") and len(tail) < 20
    assert all(line == f"line {int(line.split()[1])}" for line in tail)  # the cut first line is dropped
    assert len(tail_lines(log, 1 << 20)) == 200
    assert tail_lines(tmp_path / "missing.log", 100) == []


def test_config_read_forgivingly(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("train:\n  batch_size: 8\n")
    assert read_yaml(path) == {"train": {"batch_size": 8}}
    path.write_text("train: [unclosed\n")
    assert read_yaml(path) == {} and read_yaml(tmp_path / "none.yaml") == {}


def failed(kind: str) -> RunState:
    state = RunState("r")
    state.apply({"type": "error", "kind": kind, "message": "it broke", "hint": "", "time": 1})
    state.apply({"type": "finished", "status": "failed", "time": 1})
    return state


def test_the_fix_of_a_failed_run():
    fix = likely_fix(failed("oom"), None, {"train": {"batch_size": 1, "gradient_checkpointing": True},
                                           "data": {"max_length": 1024}})
    assert (fix.kind, fix.overrides) == ("settings", {"data.max_length": 512})
    assert likely_fix(failed("data"), None).text == \
        "open this run's config in Settings and change what the data error names"
    assert likely_fix(failed("internal"), None).kind == "stdout"
    done = RunState("d")
    done.apply({"type": "finished", "status": "completed", "time": 1})
    assert likely_fix(done, None) is None
