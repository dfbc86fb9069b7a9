"""Benchmark engine.data.paged.PagedFile on 1k- and 1M-row JSONL files.

    python benchmarks/paged_reader.py              # 1k and 1M rows (~1 GB), temp dir, deleted after
    python benchmarks/paged_reader.py --rows 1000 100000 --keep DIR

For each size it reports time to first page, time to the full offset index, time to count
the rows holding a given answer (``search``), and peak RSS. Each size is measured in a
fresh subprocess (``resource.getrusage(...).ru_maxrss``) so the figures do not leak into
each other; ``base`` is the interpreter's peak RSS after imports, before the file is
opened, so ``peak - base`` is what paging cost. The files were just written, so they are in
the page cache: the figures are CPU-bound, not disk-bound.

Goals: first page of the 1M-row file <= 1 s; memory flat in file size apart from the
8-bytes-a-line offset index.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODERATION = "Let's keep the discussion relevant to finetui."
FILLER = (
    "Fine-tuning adapts a pretrained model to a narrow task by continuing training on examples "
    "of that task; LoRA trains small low-rank matrices beside the frozen weights, so the "
    "optimizer state stays small and the adapter can be merged back later. "
)


def generate(path: Path, rows: int) -> int:
    """Write ``rows`` alpaca-like records of about 1 KB each; return the file size."""
    output = (FILLER * 4)[:820]
    batch: list[str] = []
    with open(path, "w", encoding="utf-8") as fh:
        for i in range(rows):
            answer = MODERATION if i % 100 == 0 else f"{output} (#{i})"
            batch.append(
                json.dumps(
                    {"instruction": f"Question {i}: how does finetui handle case {i % 977}?", "input": "", "output": answer},
                    ensure_ascii=False,
                )
            )
            if len(batch) >= 10_000:
                fh.write("\n".join(batch) + "\n")
                batch.clear()
        if batch:
            fh.write("\n".join(batch) + "\n")
    return path.stat().st_size


def _maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _vm_hwm_mb() -> float | None:
    """Peak RSS of this process image alone (Linux), as a cross-check of ru_maxrss."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def measure(path: Path) -> dict:
    sys.path.insert(0, str(ROOT))
    from finetui.engine.data.paged import PagedFile

    base = _maxrss_mb()
    began = time.perf_counter()
    paged = PagedFile(path)
    rows = paged.page(0, 50)
    first_page_s = time.perf_counter() - began
    assert rows and rows[0].error is None, rows[:1]
    paged.wait()
    index_s = time.perf_counter() - began
    peak_index = _maxrss_mb()
    last = paged.page((paged.total - 1) // 50, 50)
    assert last[-1].index == paged.total - 1 and last[-1].error is None
    began = time.perf_counter()
    matches = paged.count(MODERATION, "output", exact=True)
    count_s = time.perf_counter() - began
    paged.close()
    return {
        "rows": paged.total,
        "size_mb": round(path.stat().st_size / 1e6, 1),
        "first_page_s": round(first_page_s, 4),
        "full_index_s": round(index_s, 3),
        "count_s": round(count_s, 3),
        "matches": matches,
        "base_rss_mb": round(base, 1),
        "peak_rss_after_index_mb": round(peak_index, 1),
        "peak_rss_mb": round(_maxrss_mb(), 1),
        "vm_hwm_mb": _vm_hwm_mb(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000, 1_000_000])
    parser.add_argument("--keep", metavar="DIR", help="write the files here and keep them")
    parser.add_argument("--measure", metavar="FILE", help=argparse.SUPPRESS)
    parser.add_argument("--generate", nargs=2, metavar=("FILE", "ROWS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.generate:
        print(generate(Path(args.generate[0]), int(args.generate[1])))
        return 0
    if args.measure:
        print(json.dumps(measure(Path(args.measure))))
        return 0

    workdir = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="paged-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    results = []
    try:
        for rows in args.rows:
            path = workdir / f"bench_{rows}.jsonl"
            began = time.perf_counter()
            # In a subprocess too: a child's ru_maxrss starts from its parent's peak at
            # fork, so the parent must stay small for the measurements to mean anything.
            size = int(subprocess.run(
                [sys.executable, __file__, "--generate", str(path), str(rows)], capture_output=True, text=True, check=True
            ).stdout)
            print(f"generated {rows:,} rows, {size / 1e6:,.1f} MB in {time.perf_counter() - began:.1f} s", file=sys.stderr)
            out = subprocess.run(
                [sys.executable, __file__, "--measure", str(path)], capture_output=True, text=True, check=True
            )
            result = json.loads(out.stdout)
            results.append(result)
            if not args.keep:
                path.unlink()
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)

    header = f"{'rows':>10} {'size MB':>9} {'first page':>11} {'full index':>11} {'count':>8} {'base RSS':>9} {'peak RSS':>9}"
    print(header)
    for r in results:
        print(
            f"{r['rows']:>10,} {r['size_mb']:>9,.1f} {r['first_page_s'] * 1000:>9.1f}ms {r['full_index_s']:>10.2f}s "
            f"{r['count_s']:>7.2f}s {r['base_rss_mb']:>7.1f}MB {r['peak_rss_mb']:>7.1f}MB"
        )
    print(f"(python {sys.version.split()[0]}, {os.cpu_count()} CPUs; count = rows whose output is {MODERATION!r})")
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
