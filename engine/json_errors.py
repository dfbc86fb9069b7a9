"""The one shape of a ``--json`` failure, for every sub-command (README "Command line")::

    {"ok": false, "error": {"kind": "data", "message": "...", "where": "data.jsonl:17" | null}}

``kind`` is one of :data:`KINDS`; ``where`` names the place when it is known (a file, a
``file:line``, an ``--option``). Light module (stdlib only).
"""

from __future__ import annotations

from typing import Any

# The ``kind`` of a --json error, from the exception's class (or a base class) by name:
# naming them here keeps this module light (no engine module is imported to tell).
ERROR_KINDS = {
    "ConfigError": "config", "ImportProblem": "config",
    "DataError": "data", "RecordError": "data", "InspectError": "data", "RenderError": "data",
    "TemplateError": "data", "DocumentError": "data", "StoreError": "data", "JsonTooDeep": "data",
    "ModelLoadError": "model", "ModelError": "model", "CatalogError": "model", "FootprintError": "model",
    "InputError": "input",
    "RunError": "run", "EvalError": "run",
    "ExportError": "export", "WriterError": "export",
    "OSError": "io",
}
# every kind a --json error can have (README "Command line")
KINDS = ("usage", "config", "data", "model", "input", "run", "export", "io", "interrupted", "internal")


def json_error(kind: str, message: str, where: str | None = None) -> dict[str, Any]:
    """The one shape of a --json failure, for every sub-command."""
    return {"ok": False, "error": {"kind": kind, "message": message, "where": where}}


def error_kind(exc: BaseException) -> str:
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted"
    for cls in type(exc).__mro__:
        if cls.__name__ in ERROR_KINDS:
            return ERROR_KINDS[cls.__name__]
    return "internal"


def error_where(exc: BaseException) -> str | None:
    """Where the problem is, when the exception knows: a ``place`` (file:line, --option),
    else the file an OSError names."""
    where = getattr(exc, "place", None) or (getattr(exc, "filename", None) if isinstance(exc, OSError) else None)
    return str(where) if where not in (None, "") else None
