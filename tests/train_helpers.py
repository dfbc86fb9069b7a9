"""Helpers for the tests that start real trainer processes on the tiny model.

Runs are kept short: 40 FAQ records, 64 tokens, a handful of steps. The trainer is started
exactly as the CLI starts it (engine.runs.launch: own session, stdout pipe, stderr to
stdout.log), and inherits FINETUI_CACHE from the ``finetui_cache`` fixture.
"""

from __future__ import annotations

import copy
import json
import subprocess
import time
from pathlib import Path
from typing import Any

import yaml

from finetui.engine import config as cfg
from finetui.engine import events as ev
from finetui.engine import runs

BASE: dict[str, Any] = {
    "model": {"name_or_path": "tiny"},
    "method": {"type": "full", "lora_r": 8, "lora_alpha": 16},
    "data": {"path": "sample:finetui_faq", "format": "qa", "max_samples": 40, "max_length": 64,
             "test_size": 0.2},
    "train": {"max_steps": 4, "batch_size": 8, "learning_rate": 1e-3, "eval_strategy": "steps",
              "eval_steps": 2, "save_strategy": "steps", "save_steps": 2, "save_total_limit": 2,
              "logging_steps": 1},
}


def make_config(**sections: dict[str, Any]) -> cfg.Config:
    data = copy.deepcopy(BASE)
    for section, values in sections.items():
        data.setdefault(section, {}).update(values)
    return cfg.validate(data)


def write_config(folder: Path, name: str = "job", **sections: dict[str, Any]) -> Path:
    """BASE with ``sections`` merged in, written as ``folder/name.yaml``: a job for ``finetui train``."""
    data = {k: dict(v) for k, v in BASE.items()}
    for section, values in sections.items():
        data.setdefault(section, {}).update(values)
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def new_run(root: Path, name: str = "t", **sections: dict[str, Any]) -> Path:
    return runs.new_run(make_config(**sections), name=name, root=root)


def launch(run_dir: Path, resume: bool = False, nproc: int = 1) -> subprocess.Popen:
    return runs.launch(run_dir, resume=resume, nproc=nproc)


def finish(proc: subprocess.Popen, timeout: float = 300) -> tuple[int, list[dict[str, Any]]]:
    """Wait for the trainer; return (exit status, events read from its pipe)."""
    out, _ = proc.communicate(timeout=timeout)
    events = [e for e in (ev.decode(line) for line in out.splitlines()) if e is not None]
    return proc.returncode, events


def file_events(run_dir: Path) -> list[dict[str, Any]]:
    return ev.read_file(run_dir / "events.jsonl")


def wait_for_step(run_dir: Path, step: int = 1, timeout: float = 120) -> None:
    """Wait until ``run_dir``'s events file holds a step event of ``step`` or later (fails after
    ``timeout`` seconds)."""
    deadline = time.monotonic() + timeout
    while not any(e["type"] == "step" and e["step"] >= step for e in file_events(run_dir)):
        assert time.monotonic() < deadline, f"no step {step} in {run_dir}"
        time.sleep(0.1)


def train(root: Path, name: str = "t", **sections: dict[str, Any]) -> tuple[Path, int, list[dict[str, Any]]]:
    run_dir = new_run(root, name, **sections)
    rc, events = finish(launch(run_dir))
    return run_dir, rc, events


def of_type(events: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [e for e in events if e["type"] == kind]


def stdout_log(run_dir: Path) -> str:
    try:
        return (run_dir / "stdout.log").read_text(errors="replace")[-3000:]
    except OSError:
        return ""


def foreign_adapter(folder: Path) -> Path:
    """A LoRA adapter trained on a Llama with another hidden size, claiming tiny as its base."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    other = LlamaForCausalLM(LlamaConfig(vocab_size=1024, hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2))
    get_peft_model(other, LoraConfig(r=4, target_modules="all-linear")).save_pretrained(folder)
    cfg = json.loads((folder / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = "tiny"
    (folder / "adapter_config.json").write_text(json.dumps(cfg))
    return folder
