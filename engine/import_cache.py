"""transformers' import structure: scanned once per installation, not twice per process.

Light module (stdlib only): installed by the processes that import transformers (trainer,
chat worker, evaluation, merge) before they do.

``import transformers`` builds its lazy-import table by reading every file under
``transformers/models`` (~3,300 files, ~0.2 s on a 2-core CPU), through
``create_import_structure_from_path``, which is memoised with ``functools.lru_cache``'s
default 128 entries. There are ~450 model folders, so the memo has long forgotten them when
the first ``from transformers import AutoModel...`` imports ``transformers.models``, whose
``__init__`` asks for the same tree again: a second full read (~0.2 s more). Both reads
sit between launch and the first training step.

:func:`install` puts a finder on ``sys.meta_path`` that, once transformers' own
``utils.import_utils`` has loaded, replaces that function with one that

- remembers every folder it has scanned for the life of the process (no second read), and
- keeps the scan of the ``models`` folder in ``<cache>/import-structure/`` (a pickle, stamped
  with the folder's and ``import_utils.py``'s mtimes and the Python version: a reinstall or
  an upgrade of transformers scans afresh), so later processes do not read the tree at all.

The table is the same either way (tests/test_import_cache.py compares it with transformers'
own scan). Anything unexpected (a transformers without the function, an unreadable or
stale cache file, a folder we cannot write) falls back to transformers' scan.
``FINETUI_IMPORT_CACHE=0`` switches it off.
"""

from __future__ import annotations

import importlib.machinery
import os
import sys
from pathlib import Path

ENV = "FINETUI_IMPORT_CACHE"
TARGET = "transformers.utils.import_utils"
FUNCTION = "create_import_structure_from_path"
FORMAT = 1


def install(cache_dir: Path | None = None) -> bool:
    """Arm the finder (before transformers is imported); False when it is too late or off."""
    if os.environ.get(ENV, "1") == "0" or TARGET in sys.modules:
        return False
    if any(isinstance(f, _Finder) for f in sys.meta_path):
        return True
    sys.meta_path.insert(0, _Finder(cache_dir))
    return True


def default_cache_dir() -> Path:
    from engine.tiny import cache_root

    return cache_root() / "import-structure"


class _Finder:
    """A sys.meta_path finder (the protocol needs only find_spec) for one module."""

    def __init__(self, cache_dir: Path | None):
        self.cache_dir = cache_dir

    def find_spec(self, name, path, target=None):
        if name != TARGET:
            return None
        sys.meta_path.remove(self)  # one module, once
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        loader = getattr(spec, "loader", None)
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        run_module = loader.exec_module
        cache_dir = self.cache_dir

        def exec_module(module):
            run_module(module)
            patch(module, cache_dir or default_cache_dir())

        loader.exec_module = exec_module
        return spec


def patch(module, cache_dir: Path) -> bool:
    """Replace ``module.create_import_structure_from_path`` (see the module docstring)."""
    scan = getattr(getattr(module, FUNCTION, None), "__wrapped__", None)  # the function under lru_cache
    if scan is None or not getattr(module, "__file__", None):
        return False
    models_dir = os.path.join(os.path.dirname(os.path.dirname(module.__file__)), "models")
    disk = _DiskEntry(cache_dir, models_dir, module.__file__)
    memo: dict[str, dict] = {}

    def create_import_structure_from_path(module_path):
        folder = os.path.normpath(os.fspath(module_path))
        if not os.path.isdir(folder):
            folder = os.path.dirname(folder)
        found = memo.get(folder)
        if found is None:
            found = disk.load() if folder == models_dir else None
            if found is None:
                found = scan(folder)  # its own recursion comes back through this function
                if folder == models_dir:
                    disk.save(found)
            memo[folder] = found
        return found

    create_import_structure_from_path.__wrapped__ = scan
    create_import_structure_from_path.__doc__ = scan.__doc__
    setattr(module, FUNCTION, create_import_structure_from_path)
    return True


class _DiskEntry:
    """The models folder's import structure in one pickle, valid while its stamp holds."""

    def __init__(self, cache_dir: Path, models_dir: str, import_utils_file: str):
        import hashlib

        self.path = Path(cache_dir) / f"transformers-{hashlib.sha1(models_dir.encode()).hexdigest()[:16]}.pickle"
        self.models_dir, self.import_utils_file = models_dir, import_utils_file

    def stamp(self) -> tuple:
        return (FORMAT, sys.version, self.models_dir, os.stat(self.models_dir).st_mtime_ns,
                os.stat(self.import_utils_file).st_mtime_ns)

    def load(self) -> dict | None:
        import pickle

        try:
            with open(self.path, "rb") as f:
                stamp, structure = pickle.load(f)
            return structure if stamp == self.stamp() and isinstance(structure, dict) else None
        except Exception:  # noqa: BLE001 - missing, partial, foreign or stale: scan instead
            return None

    def save(self, structure: dict) -> None:
        import pickle
        import tempfile

        tmp = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".tmp-")
            with os.fdopen(fd, "wb") as f:
                pickle.dump((self.stamp(), structure), f, protocol=pickle.HIGHEST_PROTOCOL)
            os.replace(tmp, self.path)
        except Exception:  # noqa: BLE001 - a cache we cannot write only costs the scan next time
            if tmp is not None:
                Path(tmp).unlink(missing_ok=True)
