"""What already holds, kept as tests with figures (issue 24, item 11).

kill -9 mid-run resumes from the last checkpoint with the loss continuing; killing
`finetui train` (kill -9, SIGHUP) leaves the trainer running and `runs attach` shows every
step; runs started in the same second get distinct ids; run names cannot leave the runs
folder; YAML python tags are refused; Jinja templates run sandboxed; the trainer and the chat
worker open no network socket; checkpoints load with ``weights_only``; the Datasets screen
opens 1,000,000 rows in under a second with the UI under 90 MB.

Each test that guards against hostile input first shows that its payload is live (it does
run where the protection is off), so it cannot pass on a payload that does nothing.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from finetui.engine import config as cfg
from finetui.engine import events as ev
from finetui.engine import runs
from cli_helpers import cli_env
from train_helpers import file_events, finish, launch, new_run, of_type, stdout_log, train, wait_for_step, write_config

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------- kills


@pytest.mark.slow
def test_kill_9_mid_run_resumes_from_the_last_checkpoint_with_the_same_losses(tmp_path, finetui_cache):
    setup = dict(method={"type": "lora", "lora_dropout": 0.1},
                 train={"max_steps": 30, "eval_strategy": "no", "save_strategy": "steps", "save_steps": 4,
                        "save_total_limit": 3, "learning_rate": 5e-3, "lr_scheduler": "cosine", "warmup_steps": 2})
    whole_dir, rc, whole = train(tmp_path, "whole", **setup)
    assert rc == 0, stdout_log(whole_dir)
    expected = {s["step"]: s["loss"] for s in of_type(whole, "step")}

    run_dir = new_run(tmp_path, "killed", **setup)
    proc = launch(run_dir)
    seen = []
    for line in iter(proc.stdout.readline, b""):
        event = ev.decode(line)
        if event is not None:
            seen.append(event)
            if event["type"] == "step" and event["step"] >= 9 and of_type(seen, "checkpoint"):
                os.kill(proc.pid, signal.SIGKILL)  # no checkpoint, no finished event
                break
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    killed_at = of_type(seen, "step")[-1]["step"]
    assert killed_at < 30 and not of_type(file_events(run_dir), "finished")
    last = runs.last_checkpoint(run_dir)
    assert last is not None

    rc, resumed = finish(launch(run_dir, resume=True))
    assert rc == 0, stdout_log(run_dir)
    started = of_type(resumed, "run_started")[0]
    assert started["resumed_from"].endswith(last.name)
    at = int(last.name.split("-")[1])
    steps = of_type(resumed, "step")
    assert [s["step"] for s in steps] == list(range(at + 1, 31))
    for s in steps:
        assert s["loss"] == pytest.approx(expected[s["step"]], abs=1e-5), s["step"]
    assert resumed[-1]["status"] == "completed"
    print(f"killed at step {killed_at}, resumed from {last.name}: step {at + 1} loss {steps[0]['loss']:.6f} "
          f"(uninterrupted {expected[at + 1]:.6f}), step 30 loss {steps[-1]['loss']:.6f} "
          f"(uninterrupted {expected[30]:.6f})")


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGHUP], ids=["kill-9", "hup"])
def test_killing_the_cli_leaves_the_trainer_and_attach_shows_every_step(tmp_path, finetui_cache, sig):
    total = 300
    path = write_config(tmp_path, train={"max_steps": total, "eval_strategy": "no", "save_strategy": "no"})
    # The CLI leads its own process group, as a shell's foreground job does.
    cli = subprocess.Popen([sys.executable, "-m", "finetui.engine.cli", "train", str(path)], cwd=tmp_path, env=cli_env(),
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True)
    run_dir = tmp_path / "runs" / cli.stdout.readline().decode().strip()
    wait_for_step(run_dir)
    if sig == signal.SIGHUP:
        os.killpg(cli.pid, sig)  # the terminal closed / the SSH session dropped: the whole job hears it
    else:
        os.kill(cli.pid, sig)  # kill -9 of the CLI
    cli.wait(timeout=30)
    cli.stdout.close()
    assert cli.returncode == -sig
    steps_then = len(of_type(file_events(run_dir), "step"))
    assert runs.trainer_alive(run_dir), "the trainer went with the CLI"

    started = time.monotonic()
    attach = subprocess.run([sys.executable, "-m", "finetui.engine.cli", "runs", "attach", run_dir.name], cwd=tmp_path,
                            env=cli_env(), capture_output=True, text=True, timeout=300)
    assert attach.returncode == 0, attach.stdout + attach.stderr
    shown = [line for line in attach.stdout.splitlines() if line.startswith("step ")]
    assert len(shown) == total and shown[-1].startswith(f"step {total}/{total}")
    assert attach.stdout.splitlines()[-1].startswith("finished: completed")
    assert [e["step"] for e in of_type(file_events(run_dir), "step")] == list(range(1, total + 1))
    print(f"{signal.Signals(sig).name} to the CLI at step {steps_then}: the trainer went on; attach showed "
          f"{len(shown)}/{total} steps, following for {time.monotonic() - started:.1f} s")


# ---------------------------------------------------------------------------- run ids and names


def test_runs_started_in_the_same_second_get_distinct_ids(tmp_path):
    code = textwrap.dedent(f"""
        import sys
        from finetui.engine import config as cfg, runs
        config = cfg.validate({{}})
        for _ in range(10):
            print(runs.new_run(config, name="same", root={str(tmp_path / 'runs')!r}).name)
    """)
    procs = [subprocess.Popen([sys.executable, "-c", code], env=cli_env(), stdout=subprocess.PIPE, text=True)
             for _ in range(4)]
    ids = [line for p in procs for line in p.communicate(timeout=120)[0].split()]
    assert all(p.returncode == 0 for p in procs)
    assert len(ids) == 40 and len(set(ids)) == 40
    folders = [p for p in (tmp_path / "runs").iterdir() if (p / "config.yaml").is_file()]
    assert sorted(p.name for p in folders) == sorted(ids)
    seconds = {}
    for run_id in ids:
        seconds.setdefault(run_id[:15], []).append(run_id)
    most = max(len(v) for v in seconds.values())
    assert most > 1  # the case under test happened: several runs in one second
    print(f"40 runs from 4 processes: 40 distinct ids, up to {most} in the same second")


def test_run_names_cannot_leave_the_runs_folder(tmp_path):
    root = tmp_path / "runs"
    config = cfg.validate({})
    for name in ("../../escaped", "..", "/etc/passwd", "a/../../b", "..\\..\\win", "x/" * 30, "\x1b[2J\x07"):
        run_dir = runs.new_run(config, name=name, root=root)
        assert run_dir.parent == root and (run_dir / "config.yaml").is_file(), name
        assert "/" not in run_dir.name and "\\" not in run_dir.name and "\x1b" not in run_dir.name, run_dir.name
        assert run_dir.resolve().parent == root.resolve(), name
    named = cfg.validate({"output": {"run_name": "../../../tmp/owned"}})
    assert runs.new_run(named, root=root).resolve().parent == root.resolve()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs"]


# ---------------------------------------------------------------------------- hostile files


def test_yaml_python_tags_are_refused(tmp_path):
    marker = tmp_path / "PWNED"
    payload = f"train:\n  epochs: !!python/object/apply:os.system [\"touch {marker}\"]\n"
    yaml.unsafe_load(payload)  # the payload is live where tags are honoured
    assert marker.exists()
    marker.unlink()

    path = tmp_path / "evil.yaml"
    path.write_text(payload)
    with pytest.raises(cfg.ConfigError) as err:
        cfg.load(path)
    assert str(err.value).startswith(f"{path}:2: invalid YAML: could not determine a constructor for the tag")
    proc = subprocess.run([sys.executable, "-m", "finetui.engine.cli", "train", str(path)], cwd=tmp_path, env=cli_env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "tag:yaml.org,2002:python/object/apply:os.system" in proc.stderr
    assert not marker.exists() and not (tmp_path / "runs").exists()
    # The TUI's files (settings, themes, user config) read YAML the same way: no loader
    # that builds Python objects anywhere in the code.
    for folder in ("engine", "tui"):
        for source in (REPO / folder).rglob("*.py"):
            text = source.read_text(encoding="utf-8")
            for bad in ("yaml.load(", "yaml.unsafe_load", "yaml.full_load", "yaml.Loader", "UnsafeLoader",
                        "FullLoader"):
                assert bad not in text, f"{source.relative_to(REPO)}: {bad}"


def test_jinja_templates_are_sandboxed(tmp_path, finetui_cache):
    marker = tmp_path / "PWNED"
    template = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n"
                "{{ cycler.__init__.__globals__.os.popen('touch " + str(marker) + "').read() }}{% endfor %}")
    import jinja2

    jinja2.Environment().from_string(template).render(messages=[{"role": "user", "content": "hi"}])
    assert marker.exists()  # the payload is live in a plain Jinja environment
    marker.unlink()

    path = tmp_path / "evil.jinja"
    path.write_text(template)
    proc = subprocess.run([sys.executable, "-m", "finetui.engine.cli", "data", "inspect", "sample:finetui_faq",
                           "--template", str(path), "--num-proc", "1"], cwd=tmp_path, env=cli_env(),
                          capture_output=True, text=True, timeout=300)
    print(proc.stderr.strip().splitlines()[-1])
    assert proc.returncode != 0
    assert "access to attribute '__init__' of 'type' object is unsafe" in proc.stdout + proc.stderr
    assert not marker.exists()


# ---------------------------------------------------------------------------- sockets


def _sockets(pid: int) -> tuple[list, list]:
    """(internet sockets, named unix sockets) of a process and its children."""
    import psutil

    inet, named = [], []
    proc = psutil.Process(pid)
    for p in [proc, *proc.children(recursive=True)]:
        try:
            inet += p.net_connections(kind="inet")
            named += [c for c in p.net_connections(kind="unix") if c.laddr or c.raddr]
        except psutil.NoSuchProcess:
            pass
    return inet, named


@pytest.mark.slow
def test_the_trainer_and_the_chat_worker_open_no_network_socket(tmp_path, finetui_cache):
    from finetui.engine.chat_protocol import ChatClient

    run_dir = new_run(tmp_path, "sockets", data={"max_samples": 40},
                      train={"max_steps": 200, "eval_strategy": "steps", "eval_steps": 50,
                             "save_strategy": "steps", "save_steps": 50})
    proc = launch(run_dir)
    samples = 0
    try:
        for line in iter(proc.stdout.readline, b""):
            event = ev.decode(line)
            if event is not None and event["type"] in ("run_started", "step", "eval", "checkpoint"):
                if event["type"] != "step" or event["step"] % 20 == 0:
                    assert _sockets(proc.pid) == ([], []), event["type"]
                    samples += 1
    finally:
        proc.communicate(timeout=120)
    assert proc.returncode == 0, stdout_log(run_dir)

    client = ChatClient(str(run_dir), env={"FINETUI_CACHE": str(finetui_cache)})
    client.start(timeout=120)
    try:
        assert _sockets(client.pid) == ([], [])
        reply = client.generate([{"role": "user", "content": "How do I start a run?"}], max_new_tokens=16)
        for _ in reply:
            assert _sockets(client.pid) == ([], [])
            samples += 1
    finally:
        assert client.close() == 0
    print(f"{samples} looks at the trainer (load, steps, eval, checkpoints) and the chat worker (load, "
          f"tokens): no internet socket, no named unix socket")


# ---------------------------------------------------------------------------- pickles


EVIL_PICKLE = textwrap.dedent("""
    import os, sys, torch
    class Evil:
        def __reduce__(self):
            return (os.system, ("touch " + sys.argv[2],))
    torch.save({"state": Evil()}, sys.argv[1])
""")


@pytest.mark.slow
def test_checkpoints_load_with_weights_only(tmp_path, finetui_cache):
    marker = tmp_path / "PWNED"
    probe = tmp_path / "probe.pt"
    subprocess.run([sys.executable, "-c", EVIL_PICKLE, str(probe), str(marker)], check=True, timeout=120)
    subprocess.run([sys.executable, "-c", f"import torch; torch.load({str(probe)!r}, weights_only=False)"],
                   check=True, timeout=120)
    assert marker.exists()  # the payload is live where pickles are trusted
    marker.unlink()

    run_dir, rc, _ = train(tmp_path, "pickled", train={"max_steps": 2, "eval_strategy": "no",
                                                        "save_strategy": "steps", "save_steps": 2})
    assert rc == 0, stdout_log(run_dir)
    checkpoint = runs.last_checkpoint(run_dir)
    poisoned = [name for name in ("optimizer.pt", "rng_state.pth", "scheduler.pt") if (checkpoint / name).exists()]
    assert "optimizer.pt" in poisoned
    for name in poisoned:
        subprocess.run([sys.executable, "-c", EVIL_PICKLE, str(checkpoint / name), str(marker)], check=True,
                       timeout=120)
    (checkpoint / runs.COMPLETE_FILE).unlink()
    assert runs.mark_complete(checkpoint) is None  # a hostile checkpoint comes whole, with its marker

    rc, events = finish(launch(run_dir, resume=True))
    assert not marker.exists(), "a pickle in a checkpoint ran code"
    errors = of_type(events, "error")
    print(f"poisoned {', '.join(poisoned)}: resume exit {rc}; "
          f"{errors[0]['message'][:160] if errors else 'no error'}")
    assert rc != 0 and errors and "weights_only" in errors[0]["message"].lower().replace(" ", "_")


# ---------------------------------------------------------------------------- the dataset browser


@pytest.mark.slow
def test_the_dataset_browser_opens_a_million_rows_small(tmp_path):
    """The first rows and the count of a million-row file, in under 90 MB and without torch.
    The time to the first rows is a benchmark figure (python benchmarks/browser_scale.py prints
    it; docs/RELIABILITY.md), not asserted here: a timed assertion fails on a loaded machine."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    import browser_scale

    path = tmp_path / "million.jsonl"
    browser_scale.generate(path, 1_000_000)
    result = browser_scale.measure(path)
    print(json.dumps(result))
    assert result["first_row"] == {"instruction": "question 0", "input": "", "output": "answer 0xxxxxxxxxx"}
    assert result["rows"] == 1_000_000
    assert result["peak_rss_mb"] < 90 and not result["torch_imported"]
