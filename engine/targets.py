"""What a user typed to name a model or a run -> what to load: one place.

Light module (engine.runs, the model catalog; no torch): the UI imports it.

``resolve(text)`` reads, in this order:

- ``tiny``, a built-in name (``smollm2``), a ``.gguf`` file, or a model folder (config.json,
  no config.yaml) -> ``model`` (``path``: the folder; None for a name the catalog builds or fetches);
- an adapter folder (adapter_config.json) -> ``adapter``;
- a run id, a unique prefix of one, ``last`` or a run folder -> ``run`` (``path``: the run folder);
- anything else -> ``name``: a hub id, or a mistake that ``engine.modeling.resolve_model_path``
  words; ``problem`` says why it named no run (an ambiguous prefix, no runs yet ...).

The rest, for the commands that want one kind of thing:

- ``find_run(text)``: the run folder (``engine.runs.resolve`` is this), or :class:`NotFound`;
- ``named_run(text)``: the run ``text`` names, None when it names no run but may name a
  model; a mistake that can only have meant a run (``last`` with no runs, an ambiguous
  prefix) is still raised (chat, ``--base``);
- ``run_adapter(run_dir)``: the run's ``adapter/`` (export, the Eval screen's merge);
- ``merge_source(text)``: an adapter or model folder as it is, else a run's ``adapter/`` (merge);
- ``run_of_folder(path)``: the run a run's own ``merged/`` or ``adapter/`` folder belongs to;
- ``run_dir_of(text)``: the run a load target belongs to, in any of those forms (chat).

Every "it is not there" is one :class:`NotFound` (an ``engine.runs.RunError``) worded by
:func:`missing`: ``no WHAT [NAME] in|at WHERE [yet] (HINT)``, naming what was not found
and where it was looked for; commands turn it into their own error class unchanged.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from finetui.engine.runs import RunError, runs_dir

Kind = Literal["model", "adapter", "run", "name"]
RUN_FOLDERS = ("merged", "adapter")
ADAPTER_HINT = "it saves one when training ends or is stopped"


class NotFound(RunError):
    """A typed name that names nothing there. ``what``: run | runs | adapter/ | trained
    weights; ``name``: what was typed (or the run); ``ambiguous``: more than one matched."""

    def __init__(self, message: str, what: str, name: str = "", ambiguous: bool = False) -> None:
        super().__init__(message)
        self.what, self.name, self.ambiguous = what, name, ambiguous


def missing(what: str, where: str, hint: str = "", name: str = "", at: bool = False, yet: bool = False,
            ambiguous: bool = False) -> NotFound:
    """The one wording of "not there": ``no run 'x' in runs/ (see `finetui runs list`)``,
    ``no adapter/ in run R yet (it saves one ...)``, ``no run at PATH (not a run folder ...)``."""
    named = f" {name!r}" if name else ""
    text = f"no {what}{named} {'at' if at else 'in'} {where}{' yet' if yet else ''}"
    return NotFound(text + (f" ({hint})" if hint else ""), what, name or where, ambiguous)


@dataclass(frozen=True)
class Target:
    text: str
    kind: Kind
    path: Path | None = None
    problem: str | None = None


def is_model_dir(path: str | Path) -> bool:
    return (Path(path) / "config.json").exists()


def is_adapter_dir(path: str | Path) -> bool:
    return (Path(path) / "adapter_config.json").exists()


def is_run_dir(path: str | Path) -> bool:
    return (Path(path) / "config.yaml").exists()


def find_run(run: str | Path, root: str | Path | None = None) -> Path:
    """A run id (or unique prefix), ``last`` (the newest run), or a path to a run folder
    -> the folder; :class:`NotFound` naming what was not found."""
    path = Path(run)
    folder = runs_dir(root)
    if str(run) == "last":
        newest = sorted((p for p in folder.glob("*") if is_run_dir(p)), key=lambda p: p.name) \
            if folder.exists() else []
        if not newest:
            raise missing("runs", f"{folder}/", "start one with `finetui train CONFIG.yaml`", yet=True)
        return newest[-1]
    if is_run_dir(path):
        return path
    exact = folder / str(run)
    if is_run_dir(exact):
        return exact
    if path.is_absolute() or os.sep in str(run):
        raise missing("run", str(run), "not a run folder: no config.yaml", at=True)
    matches = sorted(p for p in folder.glob(f"{run}*") if is_run_dir(p)) if folder.exists() else []
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise NotFound(f"run {str(run)!r} is ambiguous: {', '.join(p.name for p in matches[:5])}", "run", str(run),
                       ambiguous=True)
    raise missing("run", f"{folder}/", "see `finetui runs list`", name=str(run))


def resolve(text: str | Path, root: str | Path | None = None) -> Target:
    """``text`` read as the module docstring says; ``root``: the runs folder (default: engine.runs')."""
    from finetui.engine import model_catalog, tiny

    text = str(text)
    path = Path(text).expanduser()
    if tiny.is_tiny(text) or model_catalog.builtin(text) is not None or model_catalog.is_gguf(text):
        return Target(text, "model", path if model_catalog.is_gguf(text) else None)
    if path.is_dir() and is_model_dir(path) and not is_run_dir(path):
        return Target(text, "model", path)
    if path.is_dir() and is_adapter_dir(path):
        return Target(text, "adapter", path)
    try:
        return Target(text, "run", find_run(text, root))
    except RunError as exc:
        return Target(text, "name", problem=str(exc))


def named_run(text: str, root: str | Path | None = None) -> Path | None:
    """The run folder ``text`` names, or None when it names no run (then it is a model). A
    miss that can only have meant a run (``last`` with no runs, an ambiguous prefix) raises."""
    try:
        return find_run(text, root)
    except NotFound as exc:
        if text == "last" or exc.ambiguous:
            raise
        return None


def run_adapter(run_dir: Path) -> Path:
    """A run's ``adapter/`` (LoRA adapter or full fine-tune), or :class:`NotFound`."""
    adapter = run_dir / "adapter"
    if not adapter.is_dir():
        raise missing("adapter/", f"run {run_dir.name}", ADAPTER_HINT, yet=True)
    return adapter


def merge_source(text: str | os.PathLike, root: str | Path | None = None) -> tuple[Path, Path | None]:
    """(adapter folder, run folder or None): an adapter or model folder as it is, else the
    ``adapter/`` of the run ``text`` names."""
    path = Path(text).expanduser()
    if path.is_dir() and (is_adapter_dir(path) or is_model_dir(path)) and not is_run_dir(path):
        return path, None
    run_dir = find_run(str(text), root)
    return run_adapter(run_dir), run_dir


def run_of_folder(path: str | Path) -> Path | None:
    """The run folder when ``path`` is a run's ``merged/`` or ``adapter/`` folder, else None."""
    path = Path(path)
    if path.is_dir() and path.name in RUN_FOLDERS and is_run_dir(path.parent):
        return path.parent.resolve()
    return None


def run_dir_of(target: str, root: str | Path | None = None) -> Path | None:
    """The run folder a load target belongs to (a run id, ``last``, a run folder, or a run's
    merged/ or adapter/ folder), resolved; None for a model (tiny, a folder, a hub id)."""
    path = Path(target)
    owner = run_of_folder(path)
    if owner is not None:
        return owner
    if is_run_dir(path):
        return path.resolve()
    if target == "tiny" or path.is_absolute() or path.exists():
        return None  # a model folder
    try:
        return find_run(target, root).resolve()
    except (RunError, OSError, NotImplementedError):
        return None
