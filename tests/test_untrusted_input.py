"""Files from the internet are data, not commands (issue 24, items 5 and 6).

* No code runs unless the user asked: a model folder whose ``config.json`` has an
  ``auto_map`` to a ``.py`` file that would write a marker file is pointed at by an
  adapter's ``finetui.json`` and a run's ``config.yaml`` that ask for
  ``trust_remote_code``; chat, eval and merge refuse, naming the file and the flag, and
  the marker is never written. Only ``--trust-remote-code`` runs it.
* A ``dataset_info.json`` entry reads only files inside its dataset folder.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from cli_helpers import finetui
from tui_helpers import tui_env  # noqa: F401 - a fixture

from finetui.engine import config as cfg
from finetui.engine import runs
from finetui.engine.errors import ModelError

REPO = Path(__file__).resolve().parents[1]

EVIL_PY = """\
from pathlib import Path
Path({marker!r}).write_text("evil.py ran")

from transformers import LlamaConfig, LlamaForCausalLM


class EvilConfig(LlamaConfig):
    model_type = "llama"


class EvilModel(LlamaForCausalLM):
    config_class = EvilConfig
"""


@pytest.fixture
def evil(tmp_path, tiny_model_dir, monkeypatch) -> dict[str, Path]:
    """A model folder (the tiny model plus ``auto_map`` -> ``evil.py``), a LoRA adapter whose
    finetui.json names it with ``trust_remote_code: true``, and a run whose config.yaml
    asks for it too. ``marker``: the file evil.py writes when it is imported."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    marker = tmp_path / "EVIL_RAN"
    base = tmp_path / "evil-base"
    shutil.copytree(tiny_model_dir, base)
    (base / "evil.py").write_text(EVIL_PY.format(marker=str(marker)))
    config = json.loads((base / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilModel"}
    (base / "config.json").write_text(json.dumps(config))

    adapter = tmp_path / "adapter"
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    get_peft_model(model, LoraConfig(r=4, target_modules="all-linear")).save_pretrained(adapter)
    meta = {"base_model": str(base), "trust_remote_code": True, "quantization": "none", "method": "lora",
            "added_tokens": [], "eos_token_ids": []}
    (adapter / "finetui.json").write_text(json.dumps(meta))

    run = tmp_path / "runs" / "evil-run"
    run.mkdir(parents=True)
    run_config = cfg.validate({"model": {"name_or_path": str(base), "trust_remote_code": True},
                               "method": {"type": "lora"}, "data": {"path": "sample:finetui_faq"}})
    cfg.save(run_config, run / "config.yaml")
    shutil.copytree(adapter, run / "adapter")

    monkeypatch.setenv("HF_MODULES_CACHE", str(tmp_path / "hf-modules"))
    monkeypatch.setenv("FINETUI_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return {"marker": marker, "base": base, "adapter": adapter, "run": run}


def test_an_adapters_metadata_cannot_run_the_models_code(evil, finetui_cache, tmp_path):
    """`finetui chat ADAPTER` refuses: the adapter's finetui.json asked, the user did not;
    evil.py never runs. With --trust-remote-code it does (the user asked), which shows the
    folder really holds code that would have run."""
    proc = finetui("chat", str(evil["adapter"]), "--prompt", "hi", "--max-new-tokens", "2", cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert str(evil["adapter"] / "finetui.json") in line and "--trust-remote-code" in line, line
    assert not evil["marker"].exists()

    trusted = finetui("chat", str(evil["adapter"]), "--prompt", "hi", "--max-new-tokens", "2",
                      "--trust-remote-code", cwd=tmp_path)
    assert evil["marker"].exists(), trusted.stderr


def test_a_runs_config_cannot_run_the_models_code_in_chat_eval_or_merge(evil, finetui_cache):
    """A run's config.yaml (a copied runs folder) asking for trust_remote_code is refused by
    chat, eval and merge, and an adapter's finetui.json by merge; nothing runs."""
    from finetui.engine import chat, evaluate, merge, modeling

    config_yaml = str(evil["run"] / "config.yaml")
    with pytest.raises(ModelError, match="--trust-remote-code") as refused:
        modeling.load_for_inference(str(evil["run"]))
    assert config_yaml in str(refused.value)
    with pytest.raises(chat.ModelLoadError, match="--trust-remote-code") as refused:
        chat.load(str(evil["run"]))
    assert config_yaml in str(refused.value)
    with pytest.raises(Exception, match="--trust-remote-code") as refused:
        evaluate.evaluate(str(evil["run"]), save=False)
    assert config_yaml in str(refused.value)
    with pytest.raises(ModelError, match="--trust-remote-code") as refused:
        merge.merge(str(evil["run"]), out=evil["run"].parent / "merged")
    assert str(evil["run"] / "adapter" / "finetui.json") in str(refused.value)
    with pytest.raises(ModelError, match="--trust-remote-code"):
        modeling.load_for_inference(str(evil["adapter"]))
    assert not evil["marker"].exists()


def test_a_model_folders_own_code_does_not_run_when_loaded(evil, finetui_cache):
    """Loading the folder itself (finetui chat FOLDER) uses transformers' own Llama classes:
    its auto_map is not followed without --trust-remote-code."""
    from finetui.engine import modeling

    model, _ = modeling.load_for_inference(str(evil["base"]), device="cpu")
    assert type(model).__name__ == "LlamaForCausalLM"
    assert not evil["marker"].exists()


# ----------------------------------------------------------------- dataset_info.json


def _registry(folder: Path, entries: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "dataset_info.json").write_text(json.dumps(entries))
    return folder


@pytest.mark.parametrize("where", ["parent", "absolute", "symlink", "folder-symlink"])
def test_a_dataset_info_entry_stays_inside_its_folder(tmp_path, where):
    """file_name ../outside.jsonl, /abs/path, a symlink out of the folder, or a symlink inside
    a folder entry: refused, naming dataset_info.json and the entry; nothing is read."""
    from finetui.engine.data import readers

    secret = tmp_path / "outside.jsonl"
    secret.write_text(json.dumps({"text": "secret"}) + "\n")
    data = tmp_path / "data"
    data.mkdir()
    if where == "parent":
        file_name = "../outside.jsonl"
    elif where == "absolute":
        file_name = str(secret)
    elif where == "symlink":
        (data / "link.jsonl").symlink_to(secret)
        file_name = "link.jsonl"
    else:
        (data / "sub").mkdir()
        (data / "sub" / "ok.jsonl").write_text(json.dumps({"text": "fine"}) + "\n")
        (data / "sub" / "link.jsonl").symlink_to(secret)
        file_name = "sub"
    _registry(data, {"leak": {"file_name": file_name, "formatting": "alpaca"}})
    with pytest.raises(readers.DataError) as refused:
        readers.load_records(f"{data}/dataset_info.json:leak", format="text")
    message = str(refused.value)
    assert str(data / "dataset_info.json") in message and "'leak'" in message, message
    assert "outside" in message, message


def test_a_dataset_info_entry_inside_its_folder_is_read(tmp_path):
    """Entries inside the folder (a subfolder, a symlink that stays inside) still read, and
    the user's own absolute data.path is theirs to give."""
    from finetui.engine.data import readers

    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    (data / "sub" / "a.jsonl").write_text(json.dumps({"text": "inside"}) + "\n")
    (data / "alias.jsonl").symlink_to(data / "sub" / "a.jsonl")
    _registry(data, {"sub": {"file_name": "sub/a.jsonl"}, "alias": {"file_name": "alias.jsonl"},
                     "folder": {"file_name": "sub"}})
    for name in ("sub", "alias", "folder"):
        result = readers.load_records(f"{data}/dataset_info.json:{name}", format="text")
        assert result.counts["ok"] == 1, name
    outside = tmp_path / "mine.jsonl"
    outside.write_text(json.dumps({"text": "mine"}) + "\n")
    assert readers.load_records(str(outside), format="text").counts["ok"] == 1


# ------------------------------------------------------- what finetui shows (item 6)

CONTROLS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")  # what visible() leaves out: all but \n and \t
HOSTILE = {
    "clear": "\x1b[2J\x1b[H",
    "title": "\x1b]0;pwned\x07",
    "clipboard": "\x1b]52;c;ZXZpbA==\x07",
    "c1": "\x9b31mred",
    "markup": "[bold red]not markup[/]",
}


def _hostile_records(folder: Path) -> Path:
    """Alpaca records whose text and file name carry terminal control sequences."""
    path = folder / "evil\x1b]0;file\x07.jsonl"
    rows = [{"instruction": f"say {name} {text}", "output": f"ok {text} done"} for name, text in HOSTILE.items()]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _assert_inert(text: str) -> None:
    bad = sorted({f"U+{ord(c):04X}" for c in CONTROLS.findall(text)})
    assert not bad, f"control characters reach the terminal: {bad}"


def test_visible_shows_controls_and_keeps_the_rest():
    from finetui.engine.visible import json_text, visible

    assert visible("a\x1b[2Jb\x07c\x9bd\x7fe\r\n\tf") == "a␛[2Jb␇c\\x9bd␡e␍\n\tf"
    assert visible("plain — ünïcödé █ [b]x[/b]\n\t") == "plain — ünïcödé █ [b]x[/b]\n\t"
    text = json_text({"k": "\x1b\x07\x9b\x7fé"}, indent=1)
    _assert_inert(text.replace("\n", ""))
    assert json.loads(text) == {"k": "\x1b\x07\x9b\x7fé"}


def test_data_inspect_output_cannot_drive_the_terminal(tmp_path, finetui_cache):
    """finetui data inspect (report, example, issues, file name, error line) and --json: no
    ESC, BEL or C1 from the data in the bytes written; the text is shown as ␛[2J; Rich markup
    in the data is shown literally; --json stays valid and keeps the data exact."""
    path = _hostile_records(tmp_path)
    for example in range(len(HOSTILE)):
        proc = subprocess.run([sys.executable, "-m", "finetui.engine.cli", "data", "inspect", str(path), "--model", "tiny",
                               "--format", "alpaca", "--example", str(example), "--num-proc", "1"],
                              cwd=tmp_path, capture_output=True, timeout=300,
                              env={**os.environ, "PYTHONPATH": str(REPO)})
        assert proc.returncode == 0, proc.stderr.decode()
        out, err = proc.stdout.decode("utf-8"), proc.stderr.decode("utf-8")
        _assert_inert(out + err)
        assert "evil␛]0;file␇.jsonl" in out
    assert "␛]52;c;ZXZpbA==␇" in out or "[bold red]not markup[/]" in out
    assert "[bold red]not markup[/]" in out  # the last example: markup shown as written

    proc = subprocess.run([sys.executable, "-m", "finetui.engine.cli", "data", "inspect", str(path), "--model", "tiny",
                           "--format", "alpaca", "--example", "3", "--num-proc", "1", "--json"],
                          cwd=tmp_path, capture_output=True, timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)})
    text = proc.stdout.decode("utf-8")
    _assert_inert(text.replace("\n", ""))
    report = json.loads(text)
    assert HOSTILE["c1"] in report["example"]["text"]

    proc = subprocess.run([sys.executable, "-m", "finetui.engine.cli", "data", "inspect", str(tmp_path / "no\x1b[2Jsuch.jsonl")],
                          cwd=tmp_path, capture_output=True, timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 1
    err = proc.stderr.decode("utf-8")
    _assert_inert(err)
    assert "no␛[2Jsuch.jsonl" in err


@pytest.fixture
def control_model(tmp_path, tiny_model_dir) -> Path:
    """The tiny model, its generation config allowing only the ESC and BEL byte tokens: every
    reply it gives is control characters (a model trained on hostile data, at its worst)."""
    from transformers import AutoTokenizer

    folder = tmp_path / "control-model"
    shutil.copytree(tiny_model_dir, folder)
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    allowed = {tokenizer.encode(ch, add_special_tokens=False)[0] for ch in ("\x1b", "\x07")}
    assert len(allowed) == 2
    gen_path = folder / "generation_config.json"
    gen = json.loads(gen_path.read_text()) if gen_path.exists() else {}
    gen["suppress_tokens"] = [i for i in range(len(tokenizer)) if i not in allowed]
    gen_path.write_text(json.dumps(gen))
    return folder


def test_chat_prints_model_tokens_visibly(control_model, finetui_cache, tmp_path):
    """finetui chat MODEL --prompt: a reply of ESC and BEL tokens prints as ␛ and ␇."""
    proc = subprocess.run([sys.executable, "-m", "finetui.engine.cli", "chat", str(control_model), "--prompt",
                           "hi \x1b[2J", "--max-new-tokens", "12"], cwd=tmp_path, capture_output=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr.decode()
    out = proc.stdout.decode("utf-8")
    _assert_inert(out + proc.stderr.decode("utf-8"))
    reply = out  # the answer only (the prompt is echoed on a terminal's stderr alone)
    assert reply.strip() and set(reply.strip()) <= {"␛", "␇"}, reply


def test_runs_list_and_show_cannot_drive_the_terminal(tmp_path, monkeypatch):
    """A run folder named with an OSC title sequence, a log line clearing the screen and an
    error writing the clipboard: runs list, runs show and runs attach show them visibly."""
    from test_dashboard_helpers import synthetic_run

    root = tmp_path / "runs"
    run_dir = synthetic_run(root, name="demo", steps=4, every=2,
                            error={"kind": "data", "message": "bad \x1b]52;c;ZXZpbA==\x07 row", "hint": "\x1b[2J"})
    hostile = run_dir.with_name(run_dir.name + "\x1b]0;pwned\x07")
    run_dir.rename(hostile)
    with open(hostile / "events.jsonl", "a") as fh:
        fh.write(json.dumps({"v": 1, "type": "log", "time": 0, "run_id": hostile.name, "level": "info",
                             "message": "step \x1b[2J\x9b31m done"}) + "\n")
    env = {**os.environ, "PYTHONPATH": str(REPO), "FINETUI_RUNS_DIR": str(root)}
    seen = ""
    for args in (["runs", "list"], ["runs", "show", hostile.name], ["runs", "attach", hostile.name]):
        proc = subprocess.run([sys.executable, "-m", "finetui.engine.cli", *args], cwd=tmp_path, capture_output=True,
                              timeout=120, env=env)
        text = proc.stdout.decode("utf-8") + proc.stderr.decode("utf-8")
        _assert_inert(text)
        seen += text
    assert "␛]0;pwned␇" in seen and "␛]52;c;ZXZpbA==␇" in seen and "step ␛[2J\\x9b31m done" in seen


# ------------------------------------------------------------ the TUI (Textual Pilot)


def _tui_inert(text: str) -> None:
    """No control character in what a widget renders (newlines between its lines aside)."""
    _assert_inert(text.replace("\n", ""))


async def _open_in_datasets(pilot, app, path: Path) -> None:
    from textual.widgets import Input

    from finetui.tui.widgets.dialogs import PathDialog
    from tui_helpers import settle

    await settle(pilot, app)
    await pilot.press("o")
    await pilot.pause()
    assert isinstance(app.screen, PathDialog)
    app.screen.query_one(Input).value = str(path)  # typed, ESC would be a key
    await pilot.press("enter")
    await settle(pilot, app)


async def test_tui_list_and_record_view_show_controls_visibly(tui_env, finetui_cache):
    """Datasets: the list view and the record view (raw and rendered) show ␛[2J, ␛]0;…␇ and
    \\x9b instead of sending them; Rich markup in a record is shown as written."""
    from test_dashboard_helpers import screen_text
    from tui_helpers import SIZE, text_of, wait_until

    from finetui.tui.app import FinetuiApp
    from finetui.tui.widgets.rowtable import RowTable

    path = _hostile_records(tui_env / "work")
    app = FinetuiApp()
    async with app.run_test(size=SIZE) as pilot:
        await _open_in_datasets(pilot, app, path)
        table = app.screen.query_one(RowTable)
        await wait_until(pilot, lambda: table.row(len(HOSTILE) - 1) is not None, 30, "the rows")
        await pilot.pause(0.2)
        listed = screen_text(app)
        _tui_inert(listed)
        assert "␛[2J␛[H" in listed and "␛]0;pwned␇" in listed and "\\x9b31mred" in listed

        await pilot.press("enter")  # record 1: the screen-clearing one
        rendered = app.screen.query_one("#ds-rendered")
        await wait_until(pilot, lambda: "trained" in text_of(rendered), 120, "the render")
        for widget in ("#ds-raw", "#ds-rendered", "#ds-record-head"):
            _tui_inert(text_of(app.screen.query_one(widget)))
        assert "say clear ␛[2J␛[H" in text_of(rendered)
        _tui_inert(screen_text(app))
        for _ in range(len(HOSTILE) - 1):  # to the last record: Rich markup
            await pilot.press("l")
        await wait_until(pilot, lambda: "not markup" in text_of(rendered) and "trained" in text_of(rendered),
                         120, "the markup record")
        assert "[bold red]not markup[/]" in text_of(rendered)
        assert "[bold red]not markup[/]" in text_of(app.screen.query_one("#ds-raw"))


async def test_tui_chat_pane_shows_model_tokens_visibly(tui_env, finetui_cache, control_model):
    """Chat: a reply of ESC and BEL tokens is shown as ␛ and ␇ in the pane."""
    from tui_helpers import SIZE, settle, text_of, wait_until

    from finetui.tui.app import FinetuiApp
    from finetui.tui.screens.chat import ChatScreen

    app = FinetuiApp()
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot, app)
        await pilot.press("c")
        await pilot.pause()
        screen = app.screen
        assert isinstance(screen, ChatScreen)
        screen.load(str(control_model))
        await wait_until(pilot, lambda: screen.main.state in ("ready", "failed"), 180, "the model")
        assert screen.main.state == "ready", screen.main.problem
        screen.params.update(max_new_tokens=12)
        screen.prompt.value = "hi"
        screen.prompt.focus()
        await pilot.press("enter")
        await wait_until(pilot, lambda: not screen.busy and screen.main.replies, 120, "the reply")
        reply = [m for m in screen.main.log.messages() if m.role == "assistant"][-1]
        assert "\x1b" in reply.text  # what the model said, kept as said
        shown = text_of(reply)
        _tui_inert(shown)
        assert "␛" in shown or "␇" in shown


async def test_tui_run_list_and_log_show_controls_visibly(tmp_path, monkeypatch):
    """Runs and the dashboard: a run folder named with an OSC title sequence, an error that
    writes the clipboard and a stdout.log that clears the screen, all shown visibly."""
    from test_dashboard_helpers import SIZE, screen_text, synthetic_run, wait_for, widget_text

    from finetui.tui.app import FinetuiApp
    from finetui.tui.screens.dashboard import DashboardScreen
    from finetui.tui.screens.runs import RunsScreen
    from finetui.tui.widgets.logview import LogView

    for name in ("config", "work", "runs"):
        (tmp_path / name).mkdir()
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("FINETUI_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.chdir(tmp_path / "work")
    run_dir = synthetic_run(tmp_path / "runs", name="demo", steps=4, every=2,
                            error={"kind": "data", "message": "bad \x1b]52;c;ZXZpbA==\x07 row", "hint": "\x1b[2J"})
    hostile = run_dir.with_name(run_dir.name + "\x1b]0;t\x07")
    run_dir.rename(hostile)
    (hostile / "stdout.log").write_text("Traceback \x1b[2J\x9b31m boom\n")
    app = FinetuiApp()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("r")
        await wait_for(pilot, lambda: isinstance(app.screen, RunsScreen) and app.screen.loaded
                       and len(app.screen.infos) == 1)
        await pilot.pause(1.0)
        runs_text = screen_text(app)
        _tui_inert(runs_text)
        # (where a line is built as Rich Text, Rich itself drops BEL, BS, VT, FF and CR: gone, not sent)
        assert "demo␛]0;t␇" in runs_text and "␛]52;c;ZXZpbA==" in runs_text
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, DashboardScreen) and app.screen.state is not None
                       and app.screen.state.events > 0)
        await pilot.pause(0.6)
        dash = app.screen
        _tui_inert(screen_text(app))
        log = widget_text(dash.query_one(LogView), 200)
        _tui_inert(log)
        assert "␛]52;c;ZXZpbA==␇" in log
        await pilot.press("v")  # stdout.log
        await pilot.pause(0.6)
        log = widget_text(dash.query_one(LogView), 200)
        _tui_inert(log)
        assert "Traceback ␛[2J\\x9b31m boom" in log
