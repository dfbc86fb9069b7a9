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
- keeps the scan of the ``models`` folder in ``<cache>/import-structure/`` (marshal data,
  stamped with the newest mtime of the folder, its model folders and ``import_utils.py``,
  and the Python version: a reinstall, an upgrade or a model file added or removed scans
  afresh), so later processes do not read the tree at all.

The table is the same either way (tests/test_import_cache.py compares it with transformers'
own scan). Anything unexpected (a transformers without the function, an unreadable or
stale cache file, a folder we cannot write) falls back to transformers' scan.
A trainer with ``train.kernels: reference`` does without it; ``FINETUI_IMPORT_CACHE=0``
(internal: benchmarks/import_time.py's A/B) switches it off anywhere.
"""

from __future__ import annotations

import importlib.machinery
import os
import sys
from pathlib import Path

ENV = "FINETUI_IMPORT_CACHE"
TARGET = "transformers.utils.import_utils"
FUNCTION = "create_import_structure_from_path"
FORMAT = 2


def install(cache_dir: Path | None = None) -> bool:
    """Arm the finder (before transformers is imported); False when it is too late or off."""
    if os.environ.get(ENV, "1") == "0" or TARGET in sys.modules:
        return False
    if any(isinstance(f, _Finder) for f in sys.meta_path):
        return True
    sys.meta_path.insert(0, _Finder(cache_dir))
    return True


def default_cache_dir() -> Path:
    from finetui.engine.tiny import cache_root

    return cache_root() / "import-structure"


class _Finder:
    """A sys.meta_path finder (the protocol needs only find_spec) for one module: it finds
    transformers' ``utils.import_utils`` the usual way and hands back a loader that patches
    the module once it has run; it leaves ``sys.meta_path`` once that module has loaded."""

    def __init__(self, cache_dir: Path | None):
        self.cache_dir = cache_dir
        self.done = False

    def find_spec(self, name, path, target=None):
        if name != TARGET or self.done:
            return None
        self.done = True  # one module, once
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or not hasattr(spec.loader, "exec_module"):
            return None  # the other finders carry on as if we were not here
        spec.loader = _PatchingLoader(spec.loader, self)
        return spec


class _PatchingLoader:
    """The module's own loader, then :func:`patch` (a failure there leaves transformers'
    own function in place)."""

    def __init__(self, loader, finder: _Finder):
        self.loader, self.finder = loader, finder

    def exec_module(self, module):
        self.loader.exec_module(module)
        try:
            sys.meta_path.remove(self.finder)
        except ValueError:
            pass
        try:
            patch(module, self.finder.cache_dir or default_cache_dir())
        except Exception:  # noqa: BLE001 - the cache is an optimisation; transformers works without it
            pass

    def __getattr__(self, name):  # create_module, get_resource_reader, is_package, get_code, ...
        return getattr(self.loader, name)


def patch(module, cache_dir: Path) -> bool:
    """Replace ``module.create_import_structure_from_path`` (see the module docstring)."""
    scan = getattr(getattr(module, FUNCTION, None), "__wrapped__", None)  # the function under lru_cache
    code = getattr(scan, "__code__", None)
    if code is None or code.co_argcount != 1 or not getattr(module, "__file__", None):
        return False  # not the one-argument scan this replaces
    models_dir = os.path.join(os.path.dirname(os.path.dirname(module.__file__)), "models")
    disk = _DiskEntry(cache_dir, models_dir, module.__file__)
    memo: dict[str, dict] = {}

    def create_import_structure_from_path(module_path):
        folder = os.path.normpath(os.fspath(module_path))
        if not os.path.isdir(folder):
            folder = os.path.dirname(folder)
        found = memo.get(folder)
        if found is None:
            if folder == models_dir:
                stamp = disk.stamp()  # before the scan: what changes during it makes the next stale
                found = disk.load(stamp)
                if found is None:
                    found = scan(folder)  # its own recursion comes back through this function
                    disk.save(stamp, found)
            else:
                found = scan(folder)
            memo[folder] = found
        return found

    create_import_structure_from_path.__wrapped__ = scan
    create_import_structure_from_path.__doc__ = scan.__doc__
    create_import_structure_from_path.cache_clear = memo.clear
    setattr(module, FUNCTION, create_import_structure_from_path)
    return True


class _DiskEntry:
    """The models folder's import structure in one file, valid while its stamp holds. The
    file is ``marshal`` data (dicts, sets, frozensets and strings only), which unlike pickle
    cannot run code when read."""

    def __init__(self, cache_dir: Path, models_dir: str, import_utils_file: str):
        import hashlib

        digest = hashlib.sha1(os.fsencode(models_dir)).hexdigest()[:16]
        self.path = Path(cache_dir) / f"transformers-{digest}.marshal"
        self.models_dir, self.import_utils_file = models_dir, import_utils_file

    def stamp(self) -> tuple:
        """Python, the folder, and the newest mtime among the models folder, its model folders
        (a file added or removed in one) and ``import_utils.py`` (a reinstall)."""
        newest = os.stat(self.models_dir).st_mtime_ns
        with os.scandir(self.models_dir) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    newest = max(newest, entry.stat(follow_symlinks=False).st_mtime_ns)
        return (FORMAT, sys.version, self.models_dir, newest, os.stat(self.import_utils_file).st_mtime_ns)

    def load(self, stamp: tuple) -> dict | None:
        import marshal

        try:
            with open(self.path, "rb") as f:
                saved, structure = marshal.load(f)
            return structure if saved == stamp and isinstance(structure, dict) else None
        except Exception:  # noqa: BLE001 - missing, partial, foreign or stale: scan instead
            return None

    def save(self, stamp: tuple, structure: dict) -> None:
        import marshal

        tmp = self.path.with_name(f".tmp-{os.getpid()}-{self.path.name}")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as f:
                marshal.dump((stamp, structure), f)
            os.replace(tmp, self.path)
        except Exception:  # noqa: BLE001 - a cache we cannot write only costs the scan next time
            try:
                tmp.unlink()
            except OSError:
                pass
