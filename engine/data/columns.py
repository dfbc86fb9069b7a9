"""Columns a format leaves unused: counted while records are normalised, said with a hint.

Light module (stdlib + :mod:`engine.data.formats`). A column is *unused* in a record when
it holds a value (not null, not blank) and the conversion to a :class:`Conversation` did
not read it: an OpenOrca ``id``, a ``plan`` column beside ``question`` / ``answer``, an
``instruction`` column under ``format: qa``. Nothing in it is trained, so the user is told
(``finetui data inspect``, the trainer's data report, the TUI's dataset browser), with how
to map it: ``--column FIELD=NAME`` / ``data.columns``. A mapping that names a column no
record has is said too.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Mapping

from finetui.engine.data.formats import FIELDS, clip, unused_columns

SHOW_COLUMNS = 6  # columns named in one note line


class ColumnUse:
    """Per column: in how many normalised records its value went unused (and the first
    such record's place); per mapped column: in how many records it was present."""

    def __init__(self, columns: Mapping[str, str] | None = None):
        self.columns = dict(columns or {})
        self.records = 0
        self.unused: Counter[str] = Counter()
        self.example: dict[str, str] = {}
        self.mapped_seen: Counter[str] = Counter()
        self.formats: set[str] = set()

    def add(self, record: Mapping[str, Any], used: set[str], place: Any = "", fmt: str | None = None) -> list[str]:
        """Count one normalised record; returns its unused columns. ``place``: its
        ``file:line``, or a RawRecord (its place is made only when a column needs it)."""
        self.records += 1
        if fmt:
            self.formats.add(fmt)
        for name in set(self.columns.values()):
            if name in record:
                self.mapped_seen[name] += 1
        unused = unused_columns(record, used) if isinstance(record, Mapping) else []
        for key in unused:
            self.unused[key] += 1
            if key not in self.example:
                self.example[key] = str(getattr(place, "place", place))
        return unused

    def to_list(self) -> list[dict[str, Any]]:
        """``[{"column", "records", "of", "example"}]``, most often unused first."""
        return [
            {"column": clip(key), "records": n, "of": self.records, "example": self.example.get(key, "")}
            for key, n in self.unused.most_common()
        ]

    def missing_mapped(self) -> list[tuple[str, str]]:
        """(field, column) for each mapped column that no record had."""
        if not self.records:
            return []
        return [(field, name) for field, name in self.columns.items() if not self.mapped_seen.get(name)]

    def notes(self) -> list[str]:
        """One line about unused columns (with the hint), one per mapped column never seen."""
        lines = []
        if self.unused:
            shown = [f"{clip(key)} ({n} of {self.records} records)" for key, n in self.unused.most_common(SHOW_COLUMNS)]
            more = len(self.unused) - SHOW_COLUMNS
            if more > 0:
                shown.append(f"{more} more")
            first = self.unused.most_common(1)[0][0]
            n_cols = len(self.unused)
            lines.append(
                f"{n_cols} column{'s' if n_cols != 1 else ''} not trained: {', '.join(shown)}; "
                + mapping_hint(first, sorted(self.formats))
            )
        for field, name in self.missing_mapped():
            lines.append(f"column mapping {field}={name}: no record has a column {name!r} (data.columns, --column)")
        return lines


def mapping_hint(column: str, formats: list[str] | None = None) -> str:
    """How to train a column: map it to a field of the format (``--column FIELD=NAME``)."""
    fields = [f for fmt in (formats or []) for f in FIELDS.get(fmt, ())]
    reads = f"; {'/'.join(formats)} reads {', '.join(dict.fromkeys(fields))}" if fields else ""
    return f"to train one, map it with --column FIELD={clip(column)} (data.columns{reads})"
