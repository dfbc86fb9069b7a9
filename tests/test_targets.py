"""engine/targets.py: what a typed model or run name resolves to."""

from __future__ import annotations

import json

import pytest

from finetui.engine import runs, targets


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


# ---------------------------------------------------------------------------- one home, one wording


def test_every_miss_names_what_was_not_found_and_where(tmp_path):
    root = tmp_path / "runs"
    misses = []
    for text in ("last", "nope", str(tmp_path / "elsewhere")):
        with pytest.raises(targets.NotFound) as caught:
            targets.find_run(text, root)
        misses.append(caught.value)
    run = _run(root, "20260101-a")
    with pytest.raises(targets.NotFound) as caught:
        targets.run_adapter(run)
    misses.append(caught.value)
    assert [(m.what, str(m)) for m in misses] == [
        ("runs", f"no runs in {root}/ yet (start one with `finetui train CONFIG.yaml`)"),
        ("run", f"no run 'nope' in {root}/ (see `finetui runs list`)"),
        ("run", f"no run at {tmp_path / 'elsewhere'} (not a run folder: no config.yaml)"),
        ("adapter/", "no adapter/ in run 20260101-a yet (it saves one when training ends or is stopped)"),
    ]
    assert all(isinstance(m, runs.RunError) for m in misses)  # what the CLI and the screens catch
    assert runs.resolve("20260101", root) == targets.find_run("20260101", root) == run


def test_named_run_is_none_for_a_model_but_raises_what_only_meant_a_run(tmp_path, monkeypatch):
    root = tmp_path / "runs"
    monkeypatch.setenv("FINETUI_RUNS_DIR", str(root))
    with pytest.raises(targets.NotFound, match="no runs in"):
        targets.named_run("last")
    _run(root, "2026-a")
    _run(root, "2026-b")
    assert targets.named_run("org/model") is None and targets.named_run("tiny") is None
    assert targets.named_run("2026-a") == root / "2026-a"
    with pytest.raises(targets.NotFound, match="ambiguous") as caught:
        targets.named_run("2026")
    assert caught.value.ambiguous


def test_merge_source_takes_a_folder_as_it_is_else_a_runs_adapter(tmp_path):
    root = tmp_path / "runs"
    lora = tmp_path / "lora"
    lora.mkdir()
    (lora / "adapter_config.json").write_text("{}", encoding="utf-8")
    assert targets.merge_source(lora, root) == (lora, None)
    run = _run(root, "r1")
    with pytest.raises(targets.NotFound, match="no adapter/ in run r1"):
        targets.merge_source("r1", root)
    (run / "adapter").mkdir()
    assert targets.merge_source("r1", root) == (run / "adapter", run)


def test_run_dir_of_every_form_a_load_target_takes(tmp_path, monkeypatch):
    root = tmp_path / "runs"
    monkeypatch.setenv("FINETUI_RUNS_DIR", str(root))
    monkeypatch.chdir(tmp_path)
    run = _run(root, "20260101-a")
    (run / "merged").mkdir()
    model = tmp_path / "model"
    model.mkdir()
    assert targets.run_dir_of("20260101") == targets.run_dir_of("last") == run.resolve()
    assert targets.run_dir_of(str(run)) == targets.run_dir_of(str(run / "merged")) == run.resolve()
    assert targets.run_dir_of("tiny") is None and targets.run_dir_of(str(model)) is None
    assert targets.run_dir_of("org/model") is None
