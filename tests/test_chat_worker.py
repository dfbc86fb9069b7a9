"""The chat worker (engine/chat.py) through its client (engine/chat_protocol.py).

Workers are real processes on the built-in tiny model; each spawn costs a few seconds on
a small CPU, so one worker serves the well-behaved requests and the fault tests start
their own.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from train_helpers import foreign_adapter

from finetui.engine import chat_protocol as proto
from finetui.engine.chat_protocol import ChatClient, ChatError, WorkerCrashed

REPO = Path(__file__).resolve().parents[1]
USER = [{"role": "user", "content": "How do I start a run?"}]


def _env(cache: Path) -> dict[str, str]:
    return {"FINETUI_CACHE": str(cache)}


@pytest.fixture(scope="module")
def client(finetui_cache_dir):
    c = ChatClient("tiny", env=_env(finetui_cache_dir))
    c.start(timeout=120)
    yield c
    assert c.close() == 0


# ---------------------------------------------------------------------------- protocol


def test_protocol_encode_decode():
    req = proto.generate_request("7", USER, max_new_tokens=4, temperature=0)
    assert proto.decode(proto.encode(req)) == req
    assert proto.decode("") is None
    assert proto.decode("Loading weights: 100%") is None  # a library's stray print
    assert proto.decode("{not json") is None
    assert proto.decode(b'{"type":"token","id":"1","text":"\xc3\xa9"}')["text"] == "é"
    with pytest.raises(ValueError, match="unknown generation parameter"):
        proto.generate_request("1", USER, temprature=0.5)


def test_protocol_module_stays_light():
    code = "import sys, engine.chat_protocol; bad = [m for m in ('torch', 'transformers', 'textual') if m in sys.modules]; print(bad)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ---------------------------------------------------------------------------- answers


def test_ready_describes_the_model(client):
    info = client.ready["model"]
    assert info["source"] == "model" and info["context"] == 1024
    assert "<|im_end|>" in info["eos"]
    assert client.ready["load_s"] > 0
    assert {m["stage"] for m in client.loading} >= {"model", "template"}


def test_streams_tokens_and_matches_bare_generate(client, finetui_cache):
    gen = client.generate(USER, max_new_tokens=24, min_new_tokens=24, temperature=0)
    pieces = [t["text"] for t in gen]
    done = gen.done
    assert done["new_tokens"] == 24 and done["stop_reason"] == "length"
    assert "".join(pieces) == done["text"] and len(pieces) > 1
    assert done["time_to_first_token_s"] > 0 and done["tokens_per_s"] > 0
    assert done["prompt_tokens"] > 5

    # The same prompt through bare transformers: same template, same greedy tokens.
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from finetui.engine import tiny

    tok = AutoTokenizer.from_pretrained(tiny.path())
    model = AutoModelForCausalLM.from_pretrained(tiny.path()).eval()
    ids = tok.apply_chat_template(USER, add_generation_prompt=True, return_tensors="pt", return_dict=True)["input_ids"]
    with torch.inference_mode():
        out = model.generate(ids, max_new_tokens=24, min_new_tokens=24, do_sample=False)
    assert tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True) == done["text"]


def test_cancel_mid_reply_and_while_queued(client):
    first = client.generate(USER, max_new_tokens=900, min_new_tokens=900)
    second = client.generate(USER, max_new_tokens=5)
    second.cancel()  # still queued behind the first: answered at once, no tokens
    tokens = 0
    for _ in first:
        tokens += 1
        if tokens == 1:
            first.cancel()
    assert first.done["stop_reason"] == "cancelled"
    assert 0 < first.done["new_tokens"] < 900
    assert second.result()["stop_reason"] == "cancelled" and second.done["new_tokens"] == 0
    # The worker goes on serving.
    assert client.complete(USER, max_new_tokens=3)["new_tokens"] >= 1


def test_input_errors_keep_the_worker_alive(client):
    with pytest.raises(ChatError) as err:
        client.complete([{"role": "user", "content": "   "}])
    assert err.value.kind == "input" and "empty prompt" in err.value.message
    with pytest.raises(ChatError, match="empty prompt"):
        client.complete([])
    with pytest.raises(ChatError) as err:
        client.complete([{"role": "user", "content": "word " * 1500}])
    assert err.value.kind == "input"
    assert "tokens but the model's context is 1024 tokens" in err.value.message
    with pytest.raises(ChatError, match="temperature must be >= 0"):
        client.complete(USER, temperature=-1)
    client.send({"op": "dance"})
    done = client.complete(USER, max_new_tokens=2)
    assert done["stop_reason"] in ("eos", "length") and client.alive


def test_reply_is_clamped_to_the_context(client):
    # ~970-token prompt + 100 new tokens > 1024: the reply stops at the context's end.
    prompt = "word " * 320
    done = client.complete([{"role": "user", "content": prompt}], max_new_tokens=100, min_new_tokens=100)
    assert done["prompt_tokens"] + done["new_tokens"] <= 1024
    assert done["stop_reason"] == "length"


# ---------------------------------------------------------------------------- faults


def test_missing_model_path(finetui_cache_dir, tmp_path):
    c = ChatClient(str(tmp_path / "no-such-model"), env=_env(finetui_cache_dir))
    with pytest.raises(ChatError) as err:
        c.start(timeout=120)
    assert err.value.kind == "model" and "no such folder" in err.value.message
    assert c.proc.wait(timeout=10) == 2


def test_adapter_that_does_not_fit_the_base(finetui_cache_dir, tmp_path):
    adapter = foreign_adapter(tmp_path / "adapter")
    c = ChatClient(str(adapter), env=_env(finetui_cache_dir))
    with pytest.raises(ChatError) as err:
        c.start(timeout=120)
    assert err.value.kind == "model"
    assert "does not fit" in err.value.message and "size mismatch" in err.value.message


def test_worker_killed_mid_reply(finetui_cache_dir):
    c = ChatClient("tiny", env=_env(finetui_cache_dir))
    c.start(timeout=120)
    gen = c.generate(USER, max_new_tokens=900, min_new_tokens=900)
    started = time.monotonic()
    with pytest.raises(WorkerCrashed) as err:
        for n, _ in enumerate(gen):
            if n == 0:
                os.killpg(c.pid, signal.SIGKILL)
    assert time.monotonic() - started < 15
    assert "killed by SIGKILL" in str(err.value) and err.value.returncode == -signal.SIGKILL
    assert not c.alive
    with pytest.raises(WorkerCrashed):  # later requests fail at once, no hang
        c.generate(USER)
    c.close()


def test_worker_that_dies_before_ready(tmp_path):
    script = tmp_path / "bad_worker.py"
    script.write_text(textwrap.dedent("""
        import sys
        print("some library banner")
        print('{"type": "loading", "stage": "model", "message": "..."}', flush=True)
        sys.stderr.write("Traceback (most recent call last):\\nImportError: libcuda.so.1: cannot open\\n")
        sys.exit(3)
    """))
    c = ChatClient("x", command=[sys.executable, str(script)])
    with pytest.raises(WorkerCrashed) as err:
        c.start(timeout=30)
    assert "exited with status 3" in str(err.value) and "libcuda" in str(err.value)
    assert [m["stage"] for m in c.loading] == ["model"]


def test_worker_that_hangs_times_out(tmp_path):
    script = tmp_path / "silent_worker.py"
    script.write_text("import time\ntime.sleep(60)\n")
    c = ChatClient("x", command=[sys.executable, str(script)])
    started = time.monotonic()
    with pytest.raises(ChatError) as err:
        c.start(timeout=1)
    assert err.value.kind == "timeout" and time.monotonic() - started < 12
    assert c.proc.poll() is not None  # closed: killed after the grace period


def test_worker_exits_when_its_client_goes_away(finetui_cache_dir):
    c = ChatClient("tiny", env=_env(finetui_cache_dir))
    c.start(timeout=120)
    c.proc.stdin.close()  # what a crashed UI leaves behind
    assert c.proc.wait(timeout=15) == 0


def test_shutdown_cancels_what_is_running_and_queued(finetui_cache_dir):
    # Both requests wait in the pipe while the model loads; shutdown right behind them.
    requests = [proto.generate_request(rid, USER, max_new_tokens=900, min_new_tokens=900) for rid in ("a", "b")]
    lines = "".join(proto.encode(r) + "\n" for r in [*requests, proto.shutdown_request()])
    proc = subprocess.run([sys.executable, "-m", "finetui.engine.chat", "--serve", "tiny"], input=lines, cwd=REPO,
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "FINETUI_CACHE": str(finetui_cache_dir)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    done = {m["id"]: m for m in map(proto.decode, proc.stdout.splitlines()) if m and m["type"] == "done"}
    assert set(done) == {"a", "b"}
    assert all(d["stop_reason"] == "cancelled" and d["new_tokens"] < 900 for d in done.values())
    assert done["b"]["new_tokens"] == 0  # never started


# ---------------------------------------------------------------------------- CLI


def _fake_run(root: Path, model_dir: Path, template: str = "auto") -> Path:
    """A run folder whose 'fine-tuned' full model is a copy of tiny (no trainer needed)."""
    from finetui.engine import config as cfg
    from finetui.engine import runs

    c = cfg.validate({"model": {"name_or_path": "tiny"}, "method": {"type": "full"},
                      "data": {"template": template}})
    run_dir = runs.new_run(c, name="chat", root=root)
    shutil.copytree(model_dir, run_dir / "adapter")
    return run_dir


def test_one_shot_cli_with_a_run(finetui_cache, tmp_path, monkeypatch, capsys):
    from finetui.engine import cli, tiny

    monkeypatch.setenv("FINETUI_RUNS_DIR", str(tmp_path))
    run_dir = _fake_run(tmp_path, tiny.path(), template="qa")
    rc = cli.main(["chat", "last", "--prompt", "How do I start a run?", "--prompt", "Hi", "--max-new-tokens", "6",
                   "--json"])
    assert rc == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [x["prompt"] for x in lines] == ["How do I start a run?", "Hi"]
    assert all(1 <= x["new_tokens"] <= 6 for x in lines)

    from finetui.engine import chat

    loaded = chat.load(run_dir.name)
    assert loaded.info["source"] == "full" and loaded.template == "qa"
    text = loaded.tokenizer.decode(loaded.prompt_ids([{"role": "user", "content": "Hi"}]))
    assert text.endswith("### Question: Hi\n### Answer:")  # the run's template, as trained
    assert chat.load(run_dir.name, base=True).info["source"] == "base"

    rc = cli.main(["chat", "last", "--prompt", "Hi", "--max-new-tokens", "3"])
    out = capsys.readouterr().out
    assert rc == 0 and out and not out.startswith(">") and out.endswith("\n")  # the answer only


def test_cli_errors_are_one_line(finetui_cache, tmp_path, monkeypatch, capsys):
    from finetui.engine import cli

    monkeypatch.setenv("FINETUI_RUNS_DIR", str(tmp_path / "none"))
    assert cli.main(["chat", "last", "--prompt", "hi"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("finetui: no runs in")
    assert cli.main(["chat", "tiny", "--prompt", "hi", "--temperature", "-2"]) == 1
    assert "temperature must be >= 0" in capsys.readouterr().err
