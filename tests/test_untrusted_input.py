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
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from engine import config as cfg
from engine import runs
from engine.errors import ModelError

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


def _finetui(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "engine.cli", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)})


def test_an_adapters_metadata_cannot_run_the_models_code(evil, finetui_cache, tmp_path):
    """`finetui chat ADAPTER` refuses: the adapter's finetui.json asked, the user did not;
    evil.py never runs. With --trust-remote-code it does (the user asked), which shows the
    folder really holds code that would have run."""
    proc = _finetui("chat", str(evil["adapter"]), "--prompt", "hi", "--max-new-tokens", "2", cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert str(evil["adapter"] / "finetui.json") in line and "--trust-remote-code" in line, line
    assert not evil["marker"].exists()

    trusted = _finetui("chat", str(evil["adapter"]), "--prompt", "hi", "--max-new-tokens", "2",
                       "--trust-remote-code", cwd=tmp_path)
    assert evil["marker"].exists(), trusted.stderr


def test_a_runs_config_cannot_run_the_models_code_in_chat_eval_or_merge(evil, finetui_cache):
    """A run's config.yaml (a copied runs folder) asking for trust_remote_code is refused by
    chat, eval and merge, and an adapter's finetui.json by merge; nothing runs."""
    from engine import chat, evaluate, merge, modeling

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
    from engine import modeling

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
    from engine.data import readers

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
    from engine.data import readers

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
