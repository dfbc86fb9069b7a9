"""The user's own finetui settings file: theme choice and key remaps.

Lives in the XDG config dir: ``$XDG_CONFIG_HOME/finetui/config.yaml`` (or ``config.toml``;
the YAML file wins when both exist), ``~/.config/finetui/`` when XDG_CONFIG_HOME is unset.
User themes go in ``themes/`` next to it. Example::

    theme: finetui-light
    keys:
      app.screen_settings: f2        # binding id -> key(s), comma separated
      settings.save: ctrl+s,w

Reading never raises: a broken file yields defaults plus a problem line naming the file
(and line), and such a file is never overwritten, so a typo cannot cost the user the rest
of their settings. Writing is a read-modify-write of one top-level key.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from finetui.engine import configfile

FILE_NAMES = ("config.yaml", "config.toml")


def config_dir() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "finetui"


def user_themes_dir() -> Path:
    return config_dir() / "themes"


@dataclass
class UserConfig:
    path: Path  # the file read (or the one a first write would create)
    data: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    readable: bool = True  # False: the file exists but is broken; do not overwrite it

    @property
    def theme(self) -> str | None:
        value = self.data.get("theme")
        return value if isinstance(value, str) and value else None

    @property
    def keys(self) -> dict[str, Any]:
        value = self.data.get("keys")
        return value if isinstance(value, dict) else {}


def find_file() -> Path:
    folder = config_dir()
    for name in FILE_NAMES:
        if (folder / name).is_file():
            return folder / name
    return folder / FILE_NAMES[0]


def _parse(path: Path, text: str) -> dict[str, Any]:
    toml = path.suffix == ".toml"
    data = configfile.parse(text, path, toml=toml)  # a ConfigFileError is a ValueError
    if toml:
        return data
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping (theme: ..., keys: {{...}}), got {type(data).__name__}")
    return data


def load() -> UserConfig:
    path = find_file()
    if not path.exists():
        return UserConfig(path=path)
    try:
        text = path.read_text(encoding="utf-8")
        data = _parse(path, text)
    except (OSError, UnicodeDecodeError) as exc:
        return UserConfig(path=path, problems=[f"{path}: cannot read: {exc}"], readable=False)
    except ValueError as exc:
        return UserConfig(path=path, problems=[str(exc)], readable=False)
    cfg = UserConfig(path=path, data=data)
    if "keys" in data and not isinstance(data["keys"], dict):
        cfg.problems.append(f"{path}: keys: expected a mapping of binding id -> key, e.g. app.quit: ctrl+q")
    if "theme" in data and not isinstance(data["theme"], str):
        cfg.problems.append(f"{path}: theme: expected a theme name")
    return cfg


def save_setting(key: str, value: Any) -> Path:
    """Set one top-level key in the user config file (creating it); returns the path.

    Raises ValueError when the existing file is broken (it is left untouched)."""
    path = find_file()
    data: dict[str, Any] = {}
    if path.exists():
        data = _parse(path, path.read_text(encoding="utf-8"))
    data[key] = value
    path.parent.mkdir(parents=True, exist_ok=True)
    text = _dump_toml(data) if path.suffix == ".toml" else yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)  # never leave a half-written config behind
    return path


def _toml_value(value: Any) -> str:
    import json

    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(str(value))  # a JSON string is a valid TOML basic string


def _toml_key(key: str) -> str:
    import json
    import re

    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key)


def _dump_toml(data: dict[str, Any], prefix: str = "") -> str:
    """Enough TOML for this file: scalars, lists and nested tables."""
    lines, tables = [], []
    for key, value in data.items():
        if isinstance(value, dict):
            tables.append((key, value))
        elif value is not None:
            lines.append(f"{_toml_key(key)} = {_toml_value(value)}")
    out = "\n".join(lines) + ("\n" if lines else "")
    for key, value in tables:
        name = f"{prefix}.{_toml_key(key)}" if prefix else _toml_key(key)
        out += f"\n[{name}]\n" + _dump_toml(value, name)
    return out
