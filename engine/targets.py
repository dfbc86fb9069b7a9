"""What a user typed to name a model or a run -> what to load: one place.

Light module (engine.runs, the model catalog; no torch): the UI imports it.

``resolve(text)`` reads, in this order:

- ``tiny``, a built-in name (``smollm2``), a ``.gguf`` file, or a model folder (config.json,
  no config.yaml) -> ``model`` (``path``: the folder; None for a name the catalog builds or fetches);
- an adapter folder (adapter_config.json) -> ``adapter``;
- a run id, a unique prefix of one, ``last`` or a run folder -> ``run`` (``path``: the run folder);
- anything else -> ``name``: a hub id, or a mistake that ``engine.modeling.resolve_model_path``
  words; ``problem`` says why it named no run (an ambiguous prefix, no runs yet ...).

``run_of_folder(path)``: the run a run's own ``merged/`` or ``adapter/`` folder belongs to.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Kind = Literal["model", "adapter", "run", "name"]
RUN_FOLDERS = ("merged", "adapter")


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


def resolve(text: str | Path, root: str | Path | None = None) -> Target:
    """``text`` read as the module docstring says; ``root``: the runs folder (default: engine.runs')."""
    from finetui.engine import model_catalog, runs, tiny

    text = str(text)
    path = Path(text).expanduser()
    if tiny.is_tiny(text) or model_catalog.builtin(text) is not None or model_catalog.is_gguf(text):
        return Target(text, "model", path if model_catalog.is_gguf(text) else None)
    if path.is_dir() and is_model_dir(path) and not is_run_dir(path):
        return Target(text, "model", path)
    if path.is_dir() and is_adapter_dir(path):
        return Target(text, "adapter", path)
    try:
        return Target(text, "run", runs.resolve(text, root))
    except runs.RunError as exc:
        return Target(text, "name", problem=str(exc))


def run_of_folder(path: str | Path) -> Path | None:
    """The run folder when ``path`` is a run's ``merged/`` or ``adapter/`` folder, else None."""
    path = Path(path)
    if path.is_dir() and path.name in RUN_FOLDERS and is_run_dir(path.parent):
        return path.parent.resolve()
    return None
