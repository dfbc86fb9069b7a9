"""finetui.engine.data.table.TokenTable: the tokenised tables the trainer reads without ``datasets``,
and the trainer keeping ``datasets`` (and pandas) out of its start-up for local data."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from finetui.engine.data import table as table_mod
from finetui.engine.data.table import TokenTable

from train_helpers import new_run


def rows(n: int) -> dict[str, list]:
    return {
        "input_ids": [[i, i + 1, i + 2][: 1 + i % 3] for i in range(n)],
        "labels": [[-100, i + 1, i + 2][: 1 + i % 3] for i in range(n)],
        "length": [1 + i % 3 for i in range(n)],
        "n_trained": [i % 3 for i in range(n)],
        "place": [f"f.jsonl:{i + 1}" for i in range(n)],
        "error": [""] * n,
        "notes": [""] * n,
        "truncated": [i == 3 for i in range(n)],
        "full_length": [1 + i % 3 for i in range(n)],
        "trains_end": [False] * n,
        "record": list(range(n)),
        "record_tokens": [1 + i % 3 for i in range(n)],
        "kept_tokens": [1 + i % 3 for i in range(n)],
    }


def test_rows_columns_and_batches():
    cols = rows(10)
    t = TokenTable.from_columns(cols, "k")
    assert len(t) == 10 and t.column_names == list(cols)
    assert t[4] == {name: values[4] for name, values in cols.items()}
    assert t[-1]["place"] == "f.jsonl:10"
    assert t["length"] == cols["length"]
    assert t.__getitems__([7, 2]) == [t[7], t[2]]
    assert list(t) == [t[i] for i in range(10)]
    with pytest.raises(IndexError):
        t[10]


def test_columns_are_what_pyarrow_makes_of_the_lists():
    import pyarrow as pa

    cols = rows(19)  # bools over more than one byte
    cols["place"][2], cols["notes"][5] = "dónde ✓ 文", "a; b"
    cols["input_ids"][0] = cols["labels"][0] = []
    t = TokenTable.from_columns(cols)
    t.data.validate(full=True)
    assert t.data.equals(pa.Table.from_pydict(cols, schema=table_mod.schema()))


def test_select_and_remove_columns_keep_the_rows_they_name():
    cols = rows(10)
    t = TokenTable.from_columns(cols, "k")
    picked = t.select([9, 0, 5])
    assert len(picked) == 3 and picked["place"] == ["f.jsonl:10", "f.jsonl:1", "f.jsonl:6"]
    assert picked[1] == t[0] and list(picked) == [t[9], t[0], t[5]]
    again = picked.select([2, 0])  # a selection of a selection
    assert again["place"] == ["f.jsonl:6", "f.jsonl:10"]
    slim = again.remove_columns(["place", "error"])
    assert "place" not in slim.column_names and slim[0]["input_ids"] == t[5]["input_ids"]
    assert len({t._fingerprint, picked._fingerprint, again._fingerprint, slim._fingerprint}) == 4
    assert t.select([9, 0, 5])._fingerprint == picked._fingerprint  # same content, same name
    with pytest.raises(IndexError):
        picked.select([3])


@pytest.mark.parametrize("shuffle", [True, False])
@pytest.mark.parametrize("n, test_size, seed", [(10, 2, 42), (37, 7, 7), (5, 1, 0)])
def test_train_test_split_picks_the_rows_datasets_picks(n, test_size, seed, shuffle):
    datasets = pytest.importorskip("datasets")
    cols = rows(n)
    mine = TokenTable.from_columns(cols).train_test_split(test_size=test_size, seed=seed, shuffle=shuffle)
    theirs = datasets.Dataset.from_dict(cols).train_test_split(test_size=test_size, seed=seed, shuffle=shuffle)
    for part in ("train", "test"):
        assert mine[part]["place"] == theirs[part]["place"]


def test_write_and_read_back(tmp_path):
    t = TokenTable.from_columns(rows(6), "key")
    path = tmp_path / "render-key.arrow"
    t.write(path)
    back = TokenTable.read(path, "key")
    assert list(back) == list(t) and back._fingerprint == "key"
    assert not list(tmp_path.glob(".*tmp"))  # written through a temporary file, then renamed
    with pytest.raises(ValueError):
        t.select([1]).write(tmp_path / "x.arrow")


def test_reading_needs_neither_datasets_nor_pandas(tmp_path):
    path = tmp_path / "t.arrow"
    TokenTable.from_columns(rows(20)).write(path)
    code = (
        "import sys, json; sys.modules['datasets'] = None; sys.modules['pandas'] = None\n"
        "from finetui.engine.data.table import TokenTable\n"
        f"t = TokenTable.read({str(path)!r})\n"
        "s = t.train_test_split(test_size=4, seed=1)\n"
        "print(json.dumps([len(s['train']), s['test'][0]['length'], s['train'].__getitems__([0, 1])[1]['place']]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    n_train, length, place = json.loads(out.stdout)
    assert n_train == 16 and length in (1, 2, 3) and place.startswith("f.jsonl:")


def test_an_unreadable_cache_file_is_rendered_again(tmp_path, monkeypatch, capsys):
    from finetui.engine import modeling
    from finetui.engine.data import dataset, readers

    monkeypatch.setenv("FINETUI_CACHE", str(tmp_path))
    tokenizer = modeling.load_tokenizer("tiny")
    loaded = readers.load_records("sample:finetui_faq", max_samples=5)
    template = dataset.render_mod.resolve_template(tokenizer, "auto")
    first, hit = dataset.tokenise(loaded.conversations, tokenizer, template, max_length=64, train_on="assistant")
    assert not hit
    [cache_file] = (tmp_path / "datasets").glob("render-*.arrow")
    cache_file.write_bytes(cache_file.read_bytes()[:100])  # cut short
    again, hit = dataset.tokenise(loaded.conversations, tokenizer, template, max_length=64, train_on="assistant")
    assert not hit and list(again) == list(first)
    assert "ignoring unreadable cache file" in capsys.readouterr().err
    assert TokenTable.read(cache_file)["input_ids"] == first["input_ids"]  # written again, whole


def test_schema_names_every_column_the_renderer_makes():
    from finetui.engine.data import dataset

    assert set(table_mod.schema().names) == {*dataset.MODEL_COLUMNS, *dataset._INTERNAL_COLUMNS}


@pytest.mark.parametrize("path, kept_out", [
    ("sample:finetui_faq", True),
    ("hf:tatsu-lab/alpaca", False),
    ("org/some-dataset", False),
    ("/no/such/file.jsonl", False),  # the data step reports it, with datasets importable
])
def test_trainer_keeps_datasets_out_only_for_local_data(path, kept_out, monkeypatch):
    from finetui.engine import train

    from train_helpers import make_config

    monkeypatch.delitem(sys.modules, "datasets", raising=False)  # restored after the test
    train._skip_datasets(make_config(data={"path": path}))
    assert (sys.modules.get("datasets", "absent") is None) is kept_out


def test_trainer_process_trains_without_importing_datasets_or_pandas(tmp_path, finetui_cache):
    run_dir = new_run(tmp_path, method={"type": "lora"},
                      train={"max_steps": 2, "eval_strategy": "steps", "eval_steps": 2, "save_strategy": "no"})
    code = (
        "import sys, json\nfrom finetui.engine import train\n"
        f"rc = train.main(['--run-dir', {str(run_dir)!r}])\n"
        "print(json.dumps([rc, sys.modules.get('datasets', 'absent') is None, 'pandas' in sys.modules]), "
        "file=sys.stderr)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    rc, datasets_kept_out, pandas_imported = json.loads(out.stderr.strip().splitlines()[-1])
    assert rc == 0, out.stderr
    assert datasets_kept_out and not pandas_imported
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    assert any(e["type"] == "eval" for e in events)  # the held-out split (a selection) evaluated too
    assert [e for e in events if e["type"] == "finished"][0]["status"] == "completed"
