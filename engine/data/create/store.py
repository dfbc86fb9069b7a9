"""The output of ``finetui data create``, append-only and resumable.

Light module (stdlib). Three files side by side, each one JSON object a line, appended
and flushed one line at a time:

* ``OUT.jsonl``: the dataset (records in the messages format, each with its ``source``);
* ``OUT.rejected.jsonl``: pairs a quality gate refused, with the reason, to read or fix;
* ``OUT.progress.jsonl``: the progress sidecar: a first line with the settings the
  dataset is made with, then one line per finished passage (its hash, ``written`` or
  ``rejected`` and the reason), written after the record itself.

Run the same command again and every passage whose hash is already in the sidecar (or in
a record of ``OUT.jsonl``, should the sidecar's line not have made it) is skipped: a killed
run continues without duplicates. A line cut short by the kill (no newline at its end) is
cut off when the files are opened again, and said.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

MARK = "finetui data create"
VERSION = 1


class StoreError(ValueError):
    pass


def side_paths(out: Path) -> tuple[Path, Path]:
    """(progress sidecar, rejected pairs) beside ``out``."""
    stem = out.name[: -len(".jsonl")] if out.name.endswith(".jsonl") else out.name
    return out.with_name(f"{stem}.progress.jsonl"), out.with_name(f"{stem}.rejected.jsonl")


def repair_tail(path: Path) -> int:
    """Cut a last line without its newline (a write the kill interrupted); returns the
    bytes cut."""
    if not path.exists():
        return 0
    size = path.stat().st_size
    if size == 0:
        return 0
    with open(path, "rb+") as fh:
        back = min(size, 1 << 20)
        while True:
            fh.seek(size - back)
            tail = fh.read(back)
            if tail.endswith(b"\n"):
                return 0
            cut = tail.rfind(b"\n")
            if cut >= 0 or back == size:
                keep = size - back + cut + 1 if cut >= 0 else 0
                fh.truncate(keep)
                return size - keep
            back = min(size, back * 4)


def _lines(path: Path):
    if not path.exists():
        return
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                yield n, json.loads(line)
            except ValueError:
                raise StoreError(f"{path}:{n}: not a JSON line (the file was changed by hand? fix the line "
                                 f"or start over with --overwrite)") from None


class Store:
    def __init__(self, out: str | Path, settings: dict[str, Any], overwrite: bool = False):
        self.out = Path(out)
        if not self.out.name.endswith(".jsonl"):
            raise StoreError(f"--out {out}: the dataset is a .jsonl file (e.g. --out book.jsonl)")
        self.progress, self.rejected = side_paths(self.out)
        self.settings = settings
        self.overwrite = overwrite
        self.done: dict[str, str] = {}  # hash -> status
        self.reasons: Counter = Counter()  # rejected, by reason (all runs)
        self.written_before = 0
        self.kept_questions: list[tuple[str, str]] = []  # (question, label) of records already written
        self.repaired: list[str] = []
        self._files: dict[str, Any] = {}

    def open(self) -> "Store":
        if self.overwrite:
            for path in (self.out, self.progress, self.rejected):
                path.unlink(missing_ok=True)
        if self.out.exists() and self.out.stat().st_size and not self.progress.exists():
            raise StoreError(f"--out {self.out}: the file exists and was not made by finetui data create "
                             f"(no {self.progress.name} beside it); pass --overwrite to replace it")
        self.out.parent.mkdir(parents=True, exist_ok=True)
        for path in (self.out, self.progress, self.rejected):
            cut = repair_tail(path)
            if cut:
                self.repaired.append(f"{path}: a last line cut short ({cut} bytes) was removed")
        header = None
        for n, entry in _lines(self.progress):
            if n == 1 or header is None:
                header = entry
                if entry.get("made_by") != MARK:
                    raise StoreError(f"{self.progress}:1: not a finetui data create progress file")
                self._check_settings(entry.get("settings") or {})
                continue
            status = entry.get("status")
            self.done[entry.get("hash")] = status
            if status == "rejected":
                self.reasons[entry.get("reason", "?")] += 1
        in_out: set[str] = set()
        for _, record in _lines(self.out):
            source = record.get("source") or {}
            h = source.get("hash")
            if h is None:
                continue
            in_out.add(h)
            if self.done.get(h) != "written":
                self.done[h] = "written"
                self._append(self.progress, {"hash": h, "status": "written"}, header_needed=header is None)
                header = header or True
            question = next((m.get("content", "") for m in record.get("messages", []) if m.get("role") == "user"), "")
            self.kept_questions.append((question, _label(source)))
        lost = [h for h, status in self.done.items() if status == "written" and h not in in_out]
        for h in lost:  # the sidecar says written, the dataset does not have it: write it again
            del self.done[h]
        if lost:
            self.repaired.append(f"{self.out}: {len(lost)} record(s) the progress file notes are not in it; "
                                 "they are made again")
        self.written_before = sum(1 for s in self.done.values() if s == "written")
        if header is None:
            self._append(self.progress, self._header())
        self.out.touch()
        return self

    def _header(self) -> dict[str, Any]:
        return {"made_by": MARK, "version": VERSION, "settings": self.settings}

    def _check_settings(self, before: dict[str, Any]) -> None:
        changed = [f"{key}: {before.get(key)!r} -> {self.settings.get(key)!r}"
                   for key in dict.fromkeys([*self.settings, *before]) if before.get(key) != self.settings.get(key)]
        if changed:
            raise StoreError(
                f"--out {self.out} was made with other settings ({'; '.join(changed)}); to continue it, run with "
                f"the same settings; to start again, pass --overwrite (or choose another --out)")

    def _append(self, path: Path, obj: dict[str, Any], header_needed: bool = False) -> None:
        fh = self._files.get(str(path))
        if fh is None:
            fh = self._files[str(path)] = open(path, "a", encoding="utf-8")
            if header_needed and path == self.progress and fh.tell() == 0:
                fh.write(json.dumps(self._header(), ensure_ascii=False) + "\n")
        fh.write(json.dumps(obj, ensure_ascii=False) + "\n")  # one write: a kill leaves a whole line or a cut one
        fh.flush()

    def is_done(self, h: str) -> bool:
        return h in self.done

    def write(self, record: dict[str, Any]) -> None:
        h = record["source"]["hash"]
        self._append(self.out, record)
        self._append(self.progress, {"hash": h, "status": "written"})
        self.done[h] = "written"

    def reject(self, record: dict[str, Any], reason: str) -> None:
        h = record["source"]["hash"]
        self._append(self.rejected, {**record, "reason": reason})
        self._append(self.progress, {"hash": h, "status": "rejected", "reason": reason})
        self.done[h] = "rejected"
        self.reasons[reason] += 1

    def written(self) -> int:
        return sum(1 for s in self.done.values() if s == "written")

    def close(self) -> None:
        for fh in self._files.values():
            try:
                fh.flush()
                os.fsync(fh.fileno())
            finally:
                fh.close()
        self._files.clear()


def _label(source: dict[str, Any]) -> str:
    where = f"{source.get('document')} passage {source.get('passage')}"
    return f"{where} (page {source['page']})" if source.get("page") else where
