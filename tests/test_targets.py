"""engine/targets.py: what a typed model or run name resolves to."""

from __future__ import annotations

import json

from finetui.engine import targets


def _run(root, run_id):
    folder = root / run_id
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text("model:\n  name_or_path: tiny\n", encoding="utf-8")
    return folder


def test_names_and_files_the_catalog_knows(tmp_path):
    assert targets.resolve("tiny", tmp_path) == targets.Target("tiny", "model")
    assert targets.resolve("smollm2", tmp_path).kind == "model"
    gguf = targets.resolve(str(tmp_path / "m.Q8_0.gguf"), tmp_path)
    assert gguf.kind == "model" and gguf.path == tmp_path / "m.Q8_0.gguf"


def test_model_and_adapter_folders(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}", encoding="utf-8")
    adapter = tmp_path / "lora"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"r": 8}), encoding="utf-8")
    assert targets.resolve(str(model), tmp_path / "runs") == targets.Target(str(model), "model", model)
    assert targets.resolve(str(adapter), tmp_path / "runs") == targets.Target(str(adapter), "adapter", adapter)


def test_runs_by_id_prefix_last_and_folder(tmp_path):
    root = tmp_path / "runs"
    first = _run(root, "20260101-a")
    second = _run(root, "20260102-b")
    (second / "config.json").write_text("{}", encoding="utf-8")  # a run folder is a run, not a model
    assert targets.resolve("20260101-a", root) == targets.Target("20260101-a", "run", first)
    assert targets.resolve("20260102", root).path == second
    assert targets.resolve("last", root).path == second
    assert targets.resolve(str(second), root).kind == "run"


def test_anything_else_is_a_name_with_the_reason(tmp_path):
    root = tmp_path / "runs"
    _run(root, "2026-a")
    _run(root, "2026-b")
    hub_id = targets.resolve("org/model", root)
    assert hub_id.kind == "name" and hub_id.path is None and "no run at org/model" in hub_id.problem
    ambiguous = targets.resolve("2026", root)
    assert ambiguous.kind == "name" and "ambiguous" in ambiguous.problem


def test_run_of_folder(tmp_path):
    run = _run(tmp_path / "runs", "r1")
    for name in ("merged", "adapter", "export"):
        (run / name).mkdir()
    assert targets.run_of_folder(run / "merged") == run.resolve()
    assert targets.run_of_folder(run / "adapter") == run.resolve()
    assert targets.run_of_folder(run / "export") is None
    assert targets.run_of_folder(run) is None
    assert targets.run_of_folder(tmp_path / "missing" / "adapter") is None
