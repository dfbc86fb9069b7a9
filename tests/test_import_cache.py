"""finetui.engine.perf.import_cache: transformers' import table read once per installation, and the same
table as transformers' own scan."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import textwrap
import types
from pathlib import Path

from finetui.engine.perf import import_cache

ROOT = Path(__file__).resolve().parents[1]


def _fake_package(tmp_path: Path):
    """A package laid out like transformers (utils/import_utils.py, models/<name>/...) and a
    module object whose scan, like transformers', is lru-cached and recurses through the
    module global. Returns (module, calls: folder -> times scanned)."""
    pkg = tmp_path / "pkg"
    if not pkg.exists():  # a second call is another process over the same installation
        (pkg / "utils").mkdir(parents=True)
        (pkg / "utils" / "import_utils.py").write_text("# stand-in\n")
        for name in ("alpha", "beta"):
            (pkg / "models" / name).mkdir(parents=True)
            (pkg / "models" / name / "__init__.py").write_text("")
            (pkg / "models" / name / f"modeling_{name}.py").write_text(f"__all__ = ['{name.title()}Model']\n")
        (pkg / "models" / "__init__.py").write_text("")
    calls: dict[str, int] = {}
    module = types.ModuleType("fake_import_utils")
    module.__file__ = str(pkg / "utils" / "import_utils.py")

    def scan(module_path):
        if os.path.isfile(module_path):
            module_path = os.path.dirname(module_path)
        calls[module_path] = calls.get(module_path, 0) + 1
        out = {}
        for entry in sorted(os.scandir(module_path), key=lambda e: e.name):
            if entry.is_dir():
                out[entry.name] = module.create_import_structure_from_path(entry.path)
            elif entry.name.startswith("modeling_"):
                out.setdefault(frozenset({"torch"}), {})[entry.name[:-3]] = {entry.name[9:-3].title() + "Model"}
        return out

    module.create_import_structure_from_path = functools.lru_cache(maxsize=1)(scan)  # forgets, like 128 of ~450
    return module, calls, pkg / "models"


def test_each_folder_is_scanned_once_however_it_is_named(tmp_path):
    module, calls, models = _fake_package(tmp_path)
    assert import_cache.patch(module, tmp_path / "cache")
    fn = module.create_import_structure_from_path
    by_dir = fn(models)
    assert by_dir == {"alpha": {frozenset({"torch"}): {"modeling_alpha": {"AlphaModel"}}},
                      "beta": {frozenset({"torch"}): {"modeling_beta": {"BetaModel"}}}}
    # transformers asks as Path(models) and as "models/__init__.py": one scan for both
    assert fn(str(models / "__init__.py")) is by_dir
    assert fn(str(models) + os.sep) is by_dir
    assert fn(str(models / "alpha")) is by_dir["alpha"]
    assert calls == {str(models): 1, str(models / "alpha"): 1, str(models / "beta"): 1}


def test_the_models_table_is_kept_on_disk_for_the_next_process(tmp_path):
    module, calls, models = _fake_package(tmp_path)
    import_cache.patch(module, tmp_path / "cache")
    first = module.create_import_structure_from_path(models)
    assert len(list((tmp_path / "cache").glob("transformers-*.marshal"))) == 1

    again, calls_again, _ = _fake_package(tmp_path)  # a fresh process over the same install
    import_cache.patch(again, tmp_path / "cache")
    assert again.create_import_structure_from_path(models) == first
    assert calls_again == {}  # not one folder read


def test_a_reinstall_or_a_broken_cache_file_scans_again(tmp_path):
    module, _, models = _fake_package(tmp_path)
    import_cache.patch(module, tmp_path / "cache")
    module.create_import_structure_from_path(models)
    cache_file = next((tmp_path / "cache").glob("transformers-*.marshal"))

    stat = os.stat(module.__file__)
    os.utime(module.__file__, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))  # a new transformers
    again, calls, _ = _fake_package(tmp_path)
    import_cache.patch(again, tmp_path / "cache")
    again.create_import_structure_from_path(models)
    assert calls[str(models)] == 1

    cache_file.write_bytes(b"not marshal data")
    third, calls, _ = _fake_package(tmp_path)
    import_cache.patch(third, tmp_path / "cache")
    assert third.create_import_structure_from_path(models)["beta"]
    assert calls[str(models)] == 1
    assert cache_file.read_bytes() != b"not marshal data"  # rewritten


def test_a_model_file_added_scans_again(tmp_path):
    module, _, models = _fake_package(tmp_path)
    import_cache.patch(module, tmp_path / "cache")
    module.create_import_structure_from_path(models)
    alpha = models / "alpha"
    stat = os.stat(alpha)
    (alpha / "modeling_extra.py").write_text("")
    os.utime(alpha, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))  # coarse clocks
    again, calls, _ = _fake_package(tmp_path)
    import_cache.patch(again, tmp_path / "cache")
    assert "modeling_extra" in again.create_import_structure_from_path(models)["alpha"][frozenset({"torch"})]
    assert calls[str(models)] == 1


def test_a_failing_patch_leaves_the_module_as_it_loaded(tmp_path, monkeypatch):
    import importlib.util

    source = tmp_path / "plain_module.py"
    source.write_text("VALUE = 42\n")
    spec = importlib.util.spec_from_file_location("plain_module", source)
    finder = import_cache._Finder(tmp_path / "cache")
    spec.loader = import_cache._PatchingLoader(spec.loader, finder)

    def broken(module, cache_dir):
        raise RuntimeError("boom")

    monkeypatch.setattr(import_cache, "patch", broken)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.VALUE == 42


def test_an_unwritable_cache_folder_costs_only_the_scan(tmp_path):
    module, calls, models = _fake_package(tmp_path)
    blocker = tmp_path / "file"
    blocker.write_text("")
    import_cache.patch(module, blocker / "cache")  # cannot be a folder
    assert module.create_import_structure_from_path(models)["alpha"]
    assert calls[str(models)] == 1


def test_something_else_than_transformers_function_is_left_alone(tmp_path):
    module = types.ModuleType("other")
    module.__file__ = str(tmp_path / "x.py")
    module.create_import_structure_from_path = lambda path: {}  # no lru_cache underneath
    assert not import_cache.patch(module, tmp_path)


_PROBE = textwrap.dedent("""
    import os, pickle, sys
    sys.path.insert(0, {root!r})
    from finetui.engine.perf import import_cache
    armed = import_cache.install({cache!r}) if os.environ.get("ARM") else False
    import transformers
    from transformers.utils import import_utils
    from transformers import AutoConfig  # imports transformers.models: the second ask
    models = os.path.join(os.path.dirname(transformers.__file__), "models")
    patched = import_utils.create_import_structure_from_path.__module__ == "finetui.engine.perf.import_cache"
    table = import_utils.define_import_structure(models, prefix="models")
    with open(sys.argv[1], "wb") as f:
        pickle.dump((armed, patched, table), f)
""")


def _probe(tmp_path: Path, name: str, arm: bool):
    import pickle

    script = tmp_path / "probe.py"
    script.write_text(_PROBE.format(root=str(ROOT), cache=str(tmp_path / "cache")))
    out = tmp_path / f"{name}.pickle"
    env = {k: v for k, v in os.environ.items() if k != import_cache.ENV}
    if arm:
        env["ARM"] = "1"
    subprocess.run([sys.executable, str(script), str(out)], check=True, env=env, timeout=300)
    return pickle.loads(out.read_bytes())


def test_transformers_gets_the_same_import_table_from_the_cache(tmp_path):
    _, stock_patched, stock = _probe(tmp_path, "stock", arm=False)
    armed, patched, first = _probe(tmp_path, "first", arm=True)  # scans and writes the cache
    (cache_file,) = (tmp_path / "cache").glob("transformers-*.marshal")
    written = cache_file.stat().st_mtime_ns
    _, _, cached = _probe(tmp_path, "cached", arm=True)  # reads it
    assert cache_file.stat().st_mtime_ns == written  # read, not scanned and rewritten
    assert (stock_patched, armed, patched) == (False, True, True)
    assert len(stock) >= 2 and sum(len(v) for v in stock.values()) > 1000  # every model's modules
    assert first == stock
    assert cached == stock
    assert list((tmp_path / "cache").glob("transformers-*.marshal"))
