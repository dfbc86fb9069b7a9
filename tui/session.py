"""What the UI is working on: the training config being edited and where it came from.

Light (engine.config only). One :class:`SettingsState` lives on the app
(``app.settings_state``) so every screen sees the same config: the Settings screen edits
it, the Datasets screen can point ``data.path`` at what the user opened, and Start hands
it to the runs registry.

The *base* is the file the config was loaded from (a preset, the quickstart, the user's
own YAML) or the schema defaults; the equivalent command is ``finetui train BASE.yaml``
plus one ``--set`` per key that differs from the base.
"""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from finetui.engine import config as cfg

QUICKSTART = "quickstart.yaml"


def sample_dir() -> Path:
    return Path(str(resources.files("finetui.sample_data")))


def presets_dir() -> Path:
    return sample_dir() / "presets"


@dataclass
class Preset:
    name: str
    path: Path
    title: str
    description: str


def read_header(path: Path) -> tuple[str, str]:
    """The ``# title:`` and ``# description:`` comment lines at the top of a preset."""
    title = description = ""
    try:
        with path.open(encoding="utf-8") as fh:
            for _ in range(20):
                line = fh.readline()
                if not line.startswith("#"):
                    break
                body = line.lstrip("#").strip()
                if body.lower().startswith("title:") and not title:
                    title = body[6:].strip()
                elif body.lower().startswith("description:") and not description:
                    description = body[12:].strip()
    except (OSError, UnicodeDecodeError):
        pass
    return title, description


def presets() -> list[Preset]:
    folder = presets_dir()
    if not folder.is_dir():
        return []
    found = []
    for path in sorted(folder.glob("*.yaml")):
        title, description = read_header(path)
        found.append(Preset(path.stem, path, title or path.stem, description))
    return found


def display_path(path: Path | str) -> str:
    """A path as the user would type it: relative to the working directory when inside it."""
    path = Path(path)
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except (ValueError, OSError):
        return str(path)


def flatten(data: dict[str, Any]) -> dict[str, Any]:
    """A config's sections as ``section.key`` -> value."""
    return {f"{section}.{k}": v for section, values in data.items() for k, v in (values or {}).items()}


def yaml_value(value: Any) -> str:
    """A value as `--set` parses it back (engine.config.apply_overrides reads YAML)."""
    if value is None:
        return "null"
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000, allow_unicode=True).strip()
    return text.removesuffix("...").strip()


def trusts_remote_code(app) -> bool:
    """``model.trust_remote_code`` of the user's own config (the Settings screen's): the
    only thing that lets the TUI's chat, eval and export workers run code shipped with a
    model (a run's config.yaml or an adapter's finetui.json cannot)."""
    return bool(app.settings_state.config.model.trust_remote_code)


class SettingsState:
    def __init__(self, config: cfg.Config, base_path: Path | None = None,
                 base_config: cfg.Config | None = None, origin: str = "defaults"):
        self.config = config
        self.base_path = base_path
        self.base_config = base_config or config
        self.origin = origin  # shown to the user: "preset cpu_demo_tiny", "file x.yaml" ...

    @classmethod
    def initial(cls) -> tuple["SettingsState", list[str]]:
        """The quickstart config (tiny model, sample FAQ), else the schema defaults."""
        for path, origin in ((sample_dir() / QUICKSTART, "quickstart"),
                             (presets_dir() / "cpu_demo_tiny.yaml", "preset cpu_demo_tiny")):
            if path.is_file():
                try:
                    config = cfg.load(path)
                except cfg.ConfigError as exc:
                    return cls(cfg.Config()), [f"{exc} (using the defaults)"]
                return cls(config, path, config, origin), []
        return cls(cfg.Config()), []

    def load(self, path: Path, origin: str | None = None) -> None:
        """Replace the config with a file's; raises ConfigError (state unchanged)."""
        config = cfg.load(path)
        self.config, self.base_path, self.base_config = config, path, config
        self.origin = origin or f"file {display_path(path)}"

    def save(self, path: Path) -> Path:
        saved = cfg.save(self.config, path)
        self.base_path, self.base_config = path, self.config
        self.origin = f"file {display_path(path)}"
        return saved

    def changed(self) -> dict[str, Any]:
        """key -> value for every setting that differs from the base."""
        base = flatten(self.base_config.to_dict())
        now = flatten(self.config.to_dict())
        return {k: v for k, v in now.items() if base.get(k) != v}

    def overrides(self) -> list[str]:
        return [f"{k}={yaml_value(v)}" for k, v in self.changed().items()]

    def train_command(self) -> str:
        parts = ["finetui", "train"]
        if self.base_path is not None:
            parts.append(display_path(self.base_path))
        for item in self.overrides():
            parts += ["--set", item]
        return " ".join(shlex.quote(p) for p in parts)

    def runs_root(self) -> str | None:
        """Where Start puts the run: $FINETUI_RUNS_DIR (set by --runs-dir) wins."""
        return os.environ.get("FINETUI_RUNS_DIR") or None

    def run_name(self) -> str:
        if self.config.output.run_name:
            return self.config.output.run_name
        return self.base_path.stem if self.base_path is not None else "run"
