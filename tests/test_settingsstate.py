"""finetui.tui.settingsstate without an app: a proposed value validated whole, the data path
check, where Save writes, presets, the estimate before launch (problems, a GGUF the run
converts, whether it fits a GPU and the per-GPU share when sharded), what stops Start and
what the start dialog asks."""

from __future__ import annotations

import json

import pytest
from tui_helpers import tui_env  # noqa: F401

from finetui.engine import config as cfg
from finetui.engine.hardware import FakeBackend
from finetui.tui import settingsstate
from finetui.tui.session import SettingsState, presets, sample_dir
from finetui.tui.settingsstate import Footprint, data_path_problem, flat_values, preflight, propose


def quickstart() -> cfg.Config:
    return cfg.load(sample_dir() / "quickstart.yaml")


def test_a_proposed_value_is_validated_with_the_whole_config():
    config = quickstart()
    changed = propose(config, "train.batch_size", 3)
    assert changed.train.batch_size == 3 and config.train.batch_size != 3
    assert flat_values(changed)["train.batch_size"] == 3
    assert set(flat_values(config)) == {s["key"] for s in cfg.field_specs()}
    with pytest.raises(cfg.ConfigError, match="batch_size"):
        propose(config, "train.batch_size", 0)
    assert settingsstate.current_value(config, "train.batch_size") == config.train.batch_size


def test_data_paths_that_are_not_there_are_named(tui_env):
    assert data_path_problem("sample:finetui_faq") is None
    assert data_path_problem("org/dataset") is None  # a hub id: not checked here
    assert data_path_problem("missing.jsonl") == "data.path: missing.jsonl: no such file or folder"
    assert data_path_problem("./nothing/x") == "data.path: ./nothing/x: no such file or folder"
    assert data_path_problem("gone/dataset_info.json:alpaca") == \
        "data.path: gone/dataset_info.json: no such file or folder"
    (tui_env / "work" / "here.jsonl").write_text('{"text": "x"}\n')
    assert data_path_problem("here.jsonl") is None


def test_save_goes_back_to_the_users_file_never_to_a_shipped_one(tui_env):
    assert settingsstate.default_save_path(None) == "finetui.yaml"
    assert settingsstate.default_save_path(sample_dir() / "quickstart.yaml") == "finetui.yaml"
    mine = tui_env / "work" / "mine.yaml"
    assert settingsstate.default_save_path(mine) == "mine.yaml"
    assert settingsstate.save_problem(tui_env / "work") == \
        f"{tui_env / 'work'}: is a folder; give a file name, e.g. {tui_env / 'work' / 'finetui.yaml'}"
    assert settingsstate.save_problem(mine) is None


def test_a_preset_loads_by_name_and_an_unknown_one_changes_nothing():
    state, _warnings = SettingsState.initial()
    before = state.config
    assert settingsstate.load_preset(state, "no-such-preset") is None
    assert state.config is before
    name = presets()[0].name
    preset = settingsstate.load_preset(state, name)
    assert preset.name == name and state.origin == f"preset {name}"
    assert state.config == cfg.load(preset.path)


def test_the_estimate_of_the_tiny_model_and_of_a_missing_one(tui_env):
    fp = Footprint()
    fp.gpus = []  # a CPU-only box
    config = quickstart()
    result = fp.compute(config)
    assert result.config is config and result.problem is None and result.memory.total_bytes > 0
    fp.take(result)
    assert fp.estimate is result.memory and fp.fit(config) is None
    assert [label for label, _v in fp.detail_rows()][:4] == ["model", "parameters", "size", "memory"]
    missing = propose(config, "model.name_or_path", str(tui_env / "no-model"))
    result = fp.compute(missing)
    assert result.memory is None and result.blocks
    assert result.problem.startswith("model.name_or_path: ") and "no-model" in result.problem
    gguf = tui_env / "work" / "model.gguf"
    gguf.write_bytes(b"GGUF")
    result = fp.compute(propose(config, "model.name_or_path", str(gguf)))
    assert result.memory is None and not result.blocks  # the run converts it first


def test_fit_and_the_per_gpu_share_on_the_first_gpu(tui_env):
    config = quickstart()
    fp = Footprint()
    fp.gpus = FakeBackend(json.dumps([{"memory_total_bytes": 10**12}])).read()
    fp.take(fp.compute(config))
    need = fp.estimate.total_bytes
    assert fp.fit(config) == (True, 10**12) and fp.share(config) is None  # ddp: no share
    fp.gpus = FakeBackend(json.dumps([{"memory_total_bytes": need}])).read()
    assert fp.fit(config) == (False, need)  # more than 95% of it
    sharded = propose(config, "distributed.strategy", "fsdp")
    share = fp.share(sharded)
    assert share is not None and share.total_bytes < need and fp.share_gpus() == 2
    total = int(share.total_bytes / settingsstate.FITS_SHARE) + 2  # the share fits, the whole would not
    assert need > total * settingsstate.FITS_SHARE
    fp.gpus = FakeBackend(json.dumps([{"memory_total_bytes": total}])).read()
    assert fp.fit(sharded) == (True, total) and fp.fit(config) == (False, total)


def test_what_stops_start(tui_env):
    config = quickstart()
    fp = Footprint()
    fp.gpus = []
    fp.take(fp.compute(config))
    assert preflight(config, fp, []) is None
    assert preflight(config, fp, ["train.lr", "data.path"]) == \
        "train.lr: refused value still in the editor (fix it or press esc on it)"
    gone = propose(config, "data.path", "gone.jsonl")
    assert preflight(gone, fp, []) == "data.path: gone.jsonl: no such file or folder"
    missing = propose(config, "model.name_or_path", str(tui_env / "no-model"))
    fp.take(fp.compute(missing))
    assert preflight(missing, fp, []) == fp.problem


def test_the_start_dialog_asks_to_start_anyway_past_limits_or_drops():
    assert settingsstate.start_question([], [], None) == ("Start a training run", "start")
    assert settingsstate.start_question(["data.max_length 9999 > 2048"], [], None)[1] == "start anyway"
    assert settingsstate.start_question(["data.max_length 9999 > 2048"], [], "no model") == \
        ("Start a training run", "start")
    assert settingsstate.start_question([], ["3 of 10 records dropped"], None) == \
        ("Records would be dropped: start anyway?", "start anyway")


def test_records_a_run_would_drop_are_counted_at_once_only_for_small_data(tui_env):
    assert settingsstate.drops_at_once(quickstart()) == []  # the sample FAQ keeps every record
    bad = tui_env / "work" / "mostly_bad.jsonl"
    bad.write_text("".join('{"question": "q%d", "answer": "a"}\n' % i for i in range(2))
                   + "".join('{"question": "q%d"}\n' % i for i in range(8)))
    config = propose(quickstart(), "data.path", str(bad))
    config = propose(config, "data.test_path", None)
    lines = settingsstate.drops_at_once(config)
    assert lines and "mostly_bad.jsonl" in lines[0]
    assert settingsstate.drops(config) == (lines, None)
    big = tui_env / "work" / "big.jsonl"
    record = '{"question": "%s", "answer": "a"}\n' % ("x" * 1000)
    big.write_text(record * (settingsstate.CHECK_INLINE_BYTES // len(record) + 10))
    config = propose(config, "data.path", str(big))
    assert settingsstate.drops_at_once(config) is None  # too big to read before the dialog: a thread reads it
    assert settingsstate.drops(config) == ([], None)
