"""Theme files -> Textual ``Theme`` objects.

Built-in themes are the YAML files in the ``themes`` package (shipped in the wheel); user
themes are ``*.yaml``/``*.yml``/``*.toml`` files in ``$XDG_CONFIG_HOME/finetui/themes/`` and
may override a built-in one by name. A file holds the fields of :class:`textual.theme.Theme`::

    name: finetui            # required
    dark: true
    primary: "#4EA8DE"       # required; any colour Textual parses
    secondary: "#9B7FE6"
    ...                      # warning error success accent foreground background surface panel boost
    variables:               # optional Textual CSS variables
      footer-key-foreground: "#F2A541"

A broken file is skipped with a problem line naming the file and what is wrong; the app
then falls back to :data:`DEFAULT_THEME` if the broken one was the chosen theme.
"""

from __future__ import annotations

import dataclasses
from importlib import resources
from pathlib import Path
from typing import Any

from textual.color import Color, ColorParseError
from textual.theme import Theme

from finetui.engine import configfile

DEFAULT_THEME = "finetui"
THEME_SUFFIXES = (".yaml", ".yml", ".toml")
_COLOR_FIELDS = ("primary", "secondary", "warning", "error", "success", "accent",
                 "foreground", "background", "surface", "panel", "boost")
_FIELDS = {f.name for f in dataclasses.fields(Theme)}


class ThemeError(ValueError):
    pass


def builtin_dir() -> Path:
    return Path(str(resources.files("finetui.themes")))


def parse(data: Any, source: str) -> Theme:
    """Validate one theme's data; raise ThemeError naming the file and the problem."""
    if not isinstance(data, dict):
        raise ThemeError(f"{source}: a theme must be a mapping with at least name and primary")
    unknown = sorted(set(data) - _FIELDS)
    if unknown:
        raise ThemeError(f"{source}: unknown key {unknown[0]!r} (known: {', '.join(sorted(_FIELDS))})")
    for required in ("name", "primary"):
        if not data.get(required):
            raise ThemeError(f"{source}: missing {required}")
    if not isinstance(data["name"], str):
        raise ThemeError(f"{source}: name: expected text")
    for key in _COLOR_FIELDS:
        value = data.get(key)
        if value is None:
            continue
        try:
            Color.parse(str(value))
        except ColorParseError:
            raise ThemeError(f"{source}: {key}: {value!r} is not a colour (e.g. \"#4EA8DE\")") from None
    for key in ("dark", "ansi"):
        if key in data and not isinstance(data[key], bool):
            raise ThemeError(f"{source}: {key}: expected true or false")
    for key in ("luminosity_spread", "text_alpha"):
        if key in data and not isinstance(data[key], (int, float)):
            raise ThemeError(f"{source}: {key}: expected a number")
    variables = data.get("variables") or {}
    if not isinstance(variables, dict):
        raise ThemeError(f"{source}: variables: expected a mapping of CSS variable -> value")
    fields = {k: (str(v) if k in _COLOR_FIELDS else v) for k, v in data.items() if v is not None}
    fields["variables"] = {str(k): str(v) for k, v in variables.items()}
    try:
        return Theme(**fields)
    except Exception as exc:  # Textual's own checks
        raise ThemeError(f"{source}: {exc}") from None


def load_file(path: Path) -> Theme:
    try:
        data = configfile.parse(configfile.read(path, missing=None), path, toml=path.suffix == ".toml")
    except configfile.ConfigFileError as exc:
        raise ThemeError(str(exc)) from None
    return parse(data, str(path))


def theme_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.suffix in THEME_SUFFIXES and p.is_file())


def load_all(user_dir: Path | None) -> tuple[dict[str, Theme], dict[str, Path], list[str]]:
    """(themes by name, file of each, problems). Built-ins first, then user themes."""
    themes: dict[str, Theme] = {}
    files: dict[str, Path] = {}
    problems: list[str] = []
    for folder in (builtin_dir(), user_dir):
        if folder is None:
            continue
        for path in theme_files(folder):
            try:
                theme = load_file(path)
            except ThemeError as exc:
                problems.append(str(exc))
                continue
            themes[theme.name] = theme
            files[theme.name] = path
    return themes, files, problems
