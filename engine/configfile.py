"""Reading YAML and TOML files that people write by hand: one place.

Light module (standard library and PyYAML only): the UI imports it.

``parse(text, source)`` reads YAML safely (``yaml.safe_load``, never arbitrary objects),
or TOML when ``source`` ends in ``.toml``; ``read(path)`` reads the file first; ``load(path)``
does both. What goes wrong is one ``ConfigFileError`` whose message names the place:

- ``FILE: no such file`` (the wording after the colon is the caller's: ``missing=``),
- ``FILE: cannot read: REASON`` (permissions, a folder, bytes that are not UTF-8),
- ``FILE:LINE: invalid YAML: PROBLEM`` (the line of the mark PyYAML gives; the file alone without one),
- ``FILE: invalid TOML: REASON`` (tomllib's reason says the line and column).

``json_object(path)`` reads a JSON file that must hold one object (``FILE:LINE: invalid
JSON: PROBLEM``, ``FILE: expected ...``), e.g. a model's config.json or a dataset_info.json.

Callers turn it into their own error type (``ConfigError``, ``ImportProblem``, ``ThemeError``)
with ``str(exc)``; what each does with an empty file is theirs too (``parse`` gives ``None``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


class ConfigFileError(ValueError):
    """A config file that cannot be read or parsed; the message is ``FILE[:LINE]: what``."""


def yaml_error(exc: yaml.YAMLError, source: str) -> str:
    """``SOURCE:LINE: invalid YAML: PROBLEM`` for a PyYAML error (no line where it has no mark)."""
    mark = getattr(exc, "problem_mark", None)
    where = f"{source}:{mark.line + 1}" if mark else str(source)
    return f"{where}: invalid YAML: {getattr(exc, 'problem', None) or exc}"


def is_toml(source: str | Path) -> bool:
    return str(source).endswith(".toml")


def parse(text: str, source: str | Path = "<string>", *, toml: bool | None = None) -> Any:
    """The data in ``text``: TOML when ``toml`` (by default: ``source`` ends in ``.toml``), else YAML."""
    if toml if toml is not None else is_toml(source):
        import tomllib

        try:
            return tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigFileError(f"{source}: invalid TOML: {exc}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigFileError(yaml_error(exc, str(source))) from None


def read(path: str | Path, *, missing: str | None = "no such file") -> str:
    """The file's text; ``missing=None`` reports a missing file as any other unreadable one."""
    path = Path(path)
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        if missing is None:
            raise ConfigFileError(f"{path}: cannot read: {exc}") from None
        raise ConfigFileError(f"{path}: {missing}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigFileError(f"{path}: cannot read: {exc}") from None


def load(path: str | Path, *, missing: str | None = "no such file") -> Any:
    """``parse(read(path), path)``."""
    return parse(read(path, missing=missing), path)


def json_object(path: str | Path, *, missing: str | None = "no such file",
                expected: str = "expected a JSON object") -> dict[str, Any]:
    """The object in the JSON file at ``path``; ``ConfigFileError`` names the file (and the
    line of a syntax error); ``expected`` is the message for valid JSON of another shape."""
    import json

    path = Path(path)
    try:
        data = json.loads(read(path, missing=missing))
    except json.JSONDecodeError as exc:
        raise ConfigFileError(f"{path}:{exc.lineno}: invalid JSON: {exc.msg}") from None
    if not isinstance(data, dict):
        raise ConfigFileError(f"{path}: {expected}")
    return data
