"""Event stream: schema, encode/decode round trip, writer survives a broken pipe, follow()."""

import io
import json
import threading
import time

import pytest

from finetui.engine import events as ev


def sample_events():
    return [
        ev.make("run_started", "r1", config={}, footprint={"params_total": 1}, datasets={"train": 1}, devices=["cpu"]),
        ev.make("step", "r1", step=1, total_steps=2, epoch=0.5, loss=float("nan"), learning_rate=1e-3,
                grad_norm=1.0, tokens_per_s=10.0, samples_per_s=1.0, elapsed_s=1.0, eta_s=1.0,
                memory={"allocated_bytes": 0, "peak_bytes": 0, "rss_bytes": 1}),
        ev.make("eval", "r1", step=1, eval_loss=1.0, perplexity=2.7, metrics={}),
        ev.make("checkpoint", "r1", path="x", step=1),
        ev.make("log", "r1", level="info", message="hi"),
        ev.make("error", "r1", kind="oom", message="out of memory", hint="smaller batch"),
        ev.make("finished", "r1", status="completed", metrics={}, outputs={}),
    ]


def test_round_trip_and_validate():
    for e in sample_events():
        line = ev.encode(e)
        back = ev.decode(line)
        ev.validate(back)
        assert back["type"] == e["type"] and back["v"] == ev.VERSION and back["run_id"] == "r1"
    step = ev.decode(ev.encode(sample_events()[1]))
    assert step["loss"] is None  # NaN is not JSON: sent as null


def test_missing_fields_and_bad_values_are_rejected():
    with pytest.raises(ev.EventError, match="lacks"):
        ev.make("step", "r1", step=1)
    bad = ev.make("error", "r1", kind="oom", message="m", hint=None)
    bad["kind"] = "weird"
    with pytest.raises(ev.EventError):
        ev.validate(bad)


def test_decode_ignores_noise():
    assert ev.decode("Some library warning") is None
    assert ev.decode("{not json") is None
    assert ev.decode('{"a": 1}') is None
    assert ev.decode("") is None


class BrokenStream(io.StringIO):
    def write(self, s):
        raise BrokenPipeError


def test_writer_keeps_file_when_pipe_breaks(tmp_path):
    w = ev.EventWriter("r1", tmp_path / "events.jsonl", stream=BrokenStream())
    w._drop_stream = lambda: setattr(w, "stream", None)  # do not touch the test runner's fd 1
    for e in sample_events()[:3]:
        w.emit(e["type"], **{k: v for k, v in e.items() if k not in ("v", "type", "time", "run_id")})
    w.close()
    assert w.stream is None
    assert [e["type"] for e in ev.read_file(tmp_path / "events.jsonl")] == ["run_started", "step", "eval"]


def test_follow_sees_history_then_live_lines_and_holds_partial_lines(tmp_path):
    path = tmp_path / "events.jsonl"
    events = sample_events()
    path.write_text(ev.encode(events[0]) + "\n")

    def writer():
        with open(path, "a") as fh:
            time.sleep(0.2)
            line = ev.encode(events[1]) + "\n"
            fh.write(line[:10]); fh.flush()  # a partial line must not be decoded early
            time.sleep(0.3)
            fh.write(line[10:]); fh.flush()
            fh.write(ev.encode(events[-1]) + "\n"); fh.flush()

    t = threading.Thread(target=writer)
    t.start()
    seen = [e["type"] for e in ev.follow(path, poll_s=0.05)]
    t.join()
    assert seen == ["run_started", "step", "finished"]


def test_follow_reads_past_a_finished_event_of_an_earlier_session(tmp_path):
    path = tmp_path / "events.jsonl"
    first = sample_events()
    second = [ev.make("run_started", "r1", config={}, footprint={}, datasets={}, devices=["cpu"]),
              ev.make("finished", "r1", status="completed", metrics={}, outputs={})]
    path.write_text("".join(ev.encode(e) + "\n" for e in first + second))
    seen = [e["type"] for e in ev.follow(path, poll_s=0.05)]
    assert seen == [e["type"] for e in first + second]
