"""What the browser shows is what the run trains: before a run starts, records the settings
would drop are counted, and more than data.max_drop_fraction (5%) stops ``finetui train``
(exit 2, how many and why, file:line examples) unless ``--allow-drops``; the TUI's Start
asks (tests/test_tui_dataset_columns.py, tests/test_tui_settings.py).

The realistic case: LLaMA-Factory's alpaca_en_demo (999 records) under a preset's
``format: qa`` loses 587 records (empty ``input``) and trains the rest without their
instruction.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from finetui.engine import config as cfg
from finetui.engine import launcher
from finetui.engine.data import dropcheck

REPO = Path(__file__).resolve().parents[1]
ALPACA = REPO / "tests" / "data" / "datasets" / "llamafactory" / "alpaca_en_demo.json"
KTO = REPO / "tests" / "data" / "fidelity" / "kto_trl.jsonl"


def data_config(**values) -> cfg.DataConfig:
    return cfg.validate({"data": values}).data


def write_config(tmp_path: Path, **data) -> Path:
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump({"model": {"name_or_path": "tiny"}, "data": data,
                                    "train": {"max_steps": 1}}, sort_keys=False))
    return path


def test_the_threshold_is_a_named_setting():
    assert cfg.MAX_DROP_FRACTION == 0.05
    assert cfg.Config().data.max_drop_fraction == cfg.MAX_DROP_FRACTION


def test_alpaca_under_format_qa_is_refused_with_how_many_and_why():
    data = data_config(path=str(ALPACA), format="qa")
    (result,) = dropcheck.check(data)
    assert (result.total, result.dropped, result.format) == (999, 587, "qa")
    lines = dropcheck.refusal(data, [result])
    assert lines[0] == (f"{ALPACA}: 587 of the 999 records (58.8%) would be dropped, "
                        "more than data.max_drop_fraction 5%")
    assert lines[1] == "  587 x empty text"
    assert lines[2] == f"      e.g. {ALPACA}:2: field 'input': empty text"
    assert any("column not trained: instruction (412 of 412 records)" in line for line in lines)
    assert lines[-1] == ("  the records look like alpaca, not qa: set data.format: alpaca (or auto), "
                         "e.g. --set data.format=alpaca")


@pytest.mark.parametrize("values", [
    {"format": "alpaca"},
    {"format": "auto"},
    {"format": "qa", "max_drop_fraction": 1.0},
    {"format": "qa", "max_drop_fraction": 0.6},
])
def test_no_refusal_when_the_format_fits_or_the_share_is_allowed(values):
    assert dropcheck.refusal(data_config(path=str(ALPACA), **values)) == []


def test_skipped_kto_rows_are_not_drops():
    (result,) = dropcheck.check(data_config(path=str(KTO)))
    assert (result.total, result.dropped, result.skipped) == (7, 0, 3)
    assert dropcheck.refusal(data_config(path=str(KTO))) == []


def test_the_test_file_is_checked_too(tmp_path):
    bad = tmp_path / "held_out.jsonl"
    bad.write_text("".join(json.dumps({"question": f"q{i}", "answer": "" if i % 2 else "a"}) + "\n" for i in range(10)))
    lines = dropcheck.refusal(data_config(path="sample:finetui_faq", format="qa", test_path=str(bad)))
    assert lines[0].startswith(f"{bad}: 5 of the 10 records (50.0%) would be dropped")
    assert f"e.g. {bad}:2: field 'answer': empty text" in lines[2]


def test_max_samples_and_the_record_cap_bound_the_reading(tmp_path):
    path = tmp_path / "half_bad.jsonl"
    path.write_text("".join(json.dumps({"question": "q", "answer": "a" if i < 50 else ""}) + "\n" for i in range(100)))
    (first,) = dropcheck.check(data_config(path=str(path), max_samples=40))
    assert (first.total, first.dropped) == (40, 0)  # training reads only the first 40 records
    capped = dropcheck.check_source(data_config(path=str(path)), str(path), "train", max_records=80)
    assert (capped.total, capped.dropped, capped.limited) == (80, 30, True)
    assert "of the first 80 records" in capped.lines(0.05)[0]


def test_a_hub_dataset_or_an_unreadable_path_is_left_to_the_trainer(tmp_path):
    assert dropcheck.check(data_config(path="someorg/somedata")) == []
    assert dropcheck.check(data_config(path=str(tmp_path / "missing.jsonl"))) == []


def args(config: Path, *overrides: str, allow_drops: bool = False) -> argparse.Namespace:
    return argparse.Namespace(config=str(config), overrides=list(overrides), resume=None, name=None,
                              allow_drops=allow_drops)


def test_finetui_train_stops_before_the_run_and_says_why(tmp_path):
    config = write_config(tmp_path, path=str(ALPACA), format="qa")
    proc = subprocess.run([sys.executable, "-m", "finetui.engine.cli", "--runs-dir", str(tmp_path / "runs"), "train",
                           str(config)], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""  # no run id: no run was created
    assert not (tmp_path / "runs").exists()
    err = proc.stderr
    assert "587 of the 999 records (58.8%) would be dropped" in err
    assert f"e.g. {ALPACA}:2: field 'input': empty text" in err
    assert "set data.format: alpaca" in err
    assert "--allow-drops" in err and "data.max_drop_fraction" in err


def test_allow_drops_or_the_setting_lets_it_start(tmp_path, monkeypatch):
    monkeypatch.setenv("FINETUI_RUNS_DIR", str(tmp_path / "runs"))
    config = write_config(tmp_path, path=str(ALPACA), format="qa")
    with pytest.raises(cfg.ConfigError) as refused:
        launcher.prepare_run(args(config))
    assert "587 of the 999 records" in str(refused.value)
    run_dir, resume = launcher.prepare_run(args(config, allow_drops=True))
    assert run_dir.is_dir() and not resume
    run_dir, _ = launcher.prepare_run(args(config, "data.max_drop_fraction=1"))
    assert cfg.load(run_dir / "config.yaml").data.max_drop_fraction == 1.0
    run_dir, _ = launcher.prepare_run(args(config, "data.format=alpaca"))
    assert run_dir.is_dir()


def test_the_check_imports_no_tokenizer_or_torch():
    code = (
        "import json, sys\n"
        "from finetui.engine import config as cfg\n"
        "from finetui.engine.data import dropcheck\n"
        f"data = cfg.validate({{'data': {{'path': {str(ALPACA)!r}, 'format': 'qa'}}}}).data\n"
        "assert dropcheck.refusal(data)\n"
        "print(json.dumps([m for m in ('torch', 'transformers', 'tokenizers', 'datasets') if m in sys.modules]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
