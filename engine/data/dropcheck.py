"""Before a run starts: how many records the data settings would drop, and why.

Light module (engine.data.readers + formats: no tokenizer, no torch), so ``finetui train``
and the TUI's Start run it before a trainer is launched. It reads and normalises the
records of ``data.path`` (and ``data.test_path``) exactly as training will (format,
columns, split, ``max_samples``), without tokenising: records that cannot be read or
normalised are *dropped*; rows deliberately not trained (a KTO ``label: false``) are
*skipped* and do not count as drops. When more than ``data.max_drop_fraction`` (default
:data:`engine.config.MAX_DROP_FRACTION`, 5%) of the records would be dropped,
:func:`refusal` says how many and why: the top reasons with ``file:line`` examples, and
the format the records look like when ``data.format`` names another.

Hub datasets are not read here (that needs ``datasets``); the trainer's data report
counts them. A source that cannot be read at all is left to the trainer, which says why.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from finetui.engine.data import formats, readers
from finetui.engine.data.columns import ColumnUse

MAX_CHECK_RECORDS = 200_000  # records read per source; a bigger file is judged on its first ones
TOP_REASONS = 3
EXAMPLES_PER_REASON = 2
EXAMPLE_CHARS = 200


class _Enough(Exception):
    """MAX_CHECK_RECORDS read."""


@dataclass
class DropCheck:
    """What one source would lose."""

    source: str
    total: int = 0  # records read (ok + dropped + skipped)
    dropped: int = 0  # invalid: cannot be read or normalised
    skipped: int = 0  # deliberately not trained (KTO label false)
    reasons: list[tuple[str, int, list[str]]] = field(default_factory=list)  # (kind, count, examples)
    format: str = "auto"
    suggestion: str | None = None  # the format the records look like, when not data.format
    limited: bool = False  # only the first MAX_CHECK_RECORDS were read
    notes: list[str] = field(default_factory=list)  # LoadResult-style notes (unused columns ...)

    @property
    def fraction(self) -> float:
        return self.dropped / self.total if self.total else 0.0

    def exceeds(self, max_fraction: float) -> bool:
        return self.dropped > 0 and self.fraction > max_fraction

    def lines(self, max_fraction: float) -> list[str]:
        first = "first " if self.limited else ""
        lines = [
            f"{self.source}: {self.dropped:,} of the {first}{self.total:,} records ({100 * self.fraction:.1f}%) "
            f"would be dropped, more than data.max_drop_fraction {_percent(max_fraction)}"
        ]
        for kind, n, examples in self.reasons:
            lines.append(f"  {n:,} x {kind}")
            lines += [f"      e.g. {example}" for example in examples]
        lines += [f"  {note}" for note in self.notes]
        if self.suggestion:
            lines.append(f"  {self.suggestion}")
        return lines

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source, "total": self.total, "dropped": self.dropped, "skipped": self.skipped,
            "fraction": self.fraction, "format": self.format, "suggestion": self.suggestion,
            "limited": self.limited, "notes": self.notes,
            "reasons": [{"kind": k, "count": n, "examples": ex} for k, n, ex in self.reasons],
        }


def _percent(fraction: float) -> str:
    return f"{100 * fraction:g}%"


def _clip(text: str) -> str:
    return text if len(text) <= EXAMPLE_CHARS else text[:EXAMPLE_CHARS - 1] + "…"


def is_local(data, path: str | None = None) -> bool:
    """Whether ``path`` (default data.path) names local files (not a hub dataset)."""
    try:
        source = readers.resolve_source(path or data.path, split=data.split, subset=data.subset)
    except (formats.DataError, OSError, ValueError):
        return True  # unreadable: check() leaves it to the trainer, quickly
    return not source.hub_id


def local_bytes(data) -> int:
    """Bytes of the local files the check would read (0 for hub datasets)."""
    total = 0
    for path in filter(None, (data.path, data.test_path)):
        try:
            source = readers.resolve_source(path, split=data.split, subset=data.subset)
        except (formats.DataError, OSError, ValueError):
            continue
        for file in source.paths:
            try:
                total += file.stat().st_size
            except OSError:
                pass
    return total


def check_source(data, path: str, split: str, *, max_records: int = MAX_CHECK_RECORDS) -> DropCheck | None:
    """Read and normalise one source as training will; None when it is not checked here
    (a hub dataset, or a source that cannot be read at all: the trainer says why)."""
    try:
        source = readers.resolve_source(path, split=split, subset=data.subset)
    except (formats.DataError, OSError, ValueError):
        return None
    if source.hub_id:
        return None
    collector = readers.IssueCollector("skip")
    formats_seen: dict[str, str] = {}
    column_use = ColumnUse()
    ok = 0
    limited = False

    def report(issue: readers.Issue) -> None:
        collector(issue)
        if ok + collector.count + collector.skipped >= max_records:
            raise _Enough

    pairs = readers.iter_conversations(
        source, format=data.format, columns=dict(data.columns) or None, report=report,
        formats_seen=formats_seen, column_use=column_use, roles=dict(getattr(data, "roles", None) or {}) or None,
    )
    try:
        for _ in pairs:
            ok += 1
            if data.max_samples is not None and ok >= data.max_samples:
                break
            if ok + collector.count + collector.skipped >= max_records:
                limited = True
                break
    except _Enough:
        limited = True
    except (formats.DataError, OSError, ValueError):
        return None
    finally:
        pairs.close()
    result = DropCheck(source=path, total=ok + collector.count + collector.skipped, dropped=collector.count,
                       skipped=collector.skipped, limited=limited, notes=column_use.notes())
    distinct = sorted(set(formats_seen.values()))
    result.format = distinct[0] if len(distinct) == 1 else ("mixed" if distinct else data.format)
    examples: dict[str, list[str]] = {}
    for issue in collector.issues:
        places = examples.setdefault(issue.kind, [])
        if len(places) < EXAMPLES_PER_REASON:
            places.append(_clip(str(issue)))
    result.reasons = [(kind, n, examples.get(kind, [])) for kind, n in collector.kinds.most_common(TOP_REASONS)]
    if len(collector.kinds) > TOP_REASONS:
        rest = sum(n for _, n in collector.kinds.most_common()[TOP_REASONS:])
        result.reasons.append((f"{len(collector.kinds) - TOP_REASONS} other reasons", rest, []))
    if result.dropped and data.format != "auto":
        result.suggestion = _format_hint(source, data)
    return result


def _format_hint(source, data) -> str | None:
    """'the records look like alpaca: ...' when detection disagrees with data.format."""
    sample = []
    try:
        for record in readers.iter_records(source, report=lambda issue: None):
            sample.append(record.data)
            if len(sample) >= formats.DETECT_SAMPLE:
                break
        detected = formats.detect(sample, dict(data.columns) or None, source.tags or None)
    except (formats.DataError, OSError, ValueError):
        return None
    if detected == data.format:
        return None
    return (f"the records look like {detected}, not {data.format}: set data.format: {detected} (or auto), "
            f"e.g. --set data.format={detected}")


def check(data) -> list[DropCheck]:
    """The checks of ``data.path`` (its split) and of ``data.test_path`` / ``data.test_split``."""
    results = [check_source(data, data.path, data.split)]
    if data.test_path:
        results.append(check_source(data, data.test_path, data.split))
    elif data.test_split:
        results.append(check_source(data, data.path, data.test_split))
    return [r for r in results if r is not None]


def refusal(data, checks: list[DropCheck] | None = None) -> list[str]:
    """The lines that stop a run, or [] when every source keeps enough of its records."""
    max_fraction = data.max_drop_fraction
    if max_fraction >= 1.0:
        return []
    checks = check(data) if checks is None else checks
    lines: list[str] = []
    for result in checks:
        if result.exceeds(max_fraction):
            lines += result.lines(max_fraction)
    return lines


START_ANYWAY = ("fix the data or the settings (finetui data inspect PATH shows every record), or start anyway: "
                "finetui train ... --allow-drops, or data.max_drop_fraction: 1")
