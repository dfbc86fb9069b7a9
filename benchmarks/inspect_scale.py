"""Benchmark `finetui data inspect` on a million alpaca records.

    python benchmarks/inspect_scale.py                      # 1,000,000 records (~273 MB) in /tmp
    python benchmarks/inspect_scale.py --rows 100000        # a smaller file
    python benchmarks/inspect_scale.py --repo /path/to/old  # the same file through another checkout
    python benchmarks/inspect_scale.py --keep /tmp/bench    # keep (and reuse) the file

The file is a JSON array (LLaMA-Factory's alpaca format, as ``alpaca_en_demo.json``) whose
records are those of ``tests/data/datasets/llamafactory/alpaca_en_demo.json`` repeated with
variation: each repeat numbers its instruction (``(variant 12)``), takes a different span
of the reply (cut at a word, about 155 characters) and numbers it too, so no two records
are alike and nothing can be skipped as seen. 1,000,000 records are about 273 MB.

Each run is `python -m finetui.engine.cli data inspect FILE` (default model tiny, max_length 512)
in a fresh subprocess started by a parent that runs nothing else and reaps every process
of the run (a child subreaper), so its peak RSS is the parent's
``resource.getrusage(RUSAGE_CHILDREN).ru_maxrss`` and its CPU time (user + sys) that
usage's, worker processes included; the wall time is the subprocess's. On a shared
machine the CPU time per record is the steadier figure. The report's counts are printed with the figures, so
two checkouts can be compared on the same numbers.

Reference (issue 19, before): 296 s and 1.67 GB peak RSS on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import child_usage  # noqa: E402

DEMO = ROOT / "tests" / "data" / "datasets" / "llamafactory" / "alpaca_en_demo.json"
REPLY_CHARS = 155
BEFORE = {"wall_s": 296.0, "peak_rss_mb": 1670.0, "note": "issue 19, before: 2 cores"}


def _cut(text: str, start: int, size: int) -> str:
    """About ``size`` characters of ``text`` from ``start`` (both ends at a word)."""
    if start:
        at = text.find(" ", start)
        start = at + 1 if 0 <= at < len(text) - 20 else 0
    piece = text[start:start + size]
    if start + size < len(text):
        at = piece.rfind(" ")
        piece = piece[:at] if at > 0 else piece
    return piece


def generate(path: Path, rows: int) -> int:
    """Write ``rows`` alpaca records as one JSON array; return the file size."""
    demo = json.loads(DEMO.read_text(encoding="utf-8"))
    with open(path, "w", encoding="utf-8") as fh:
        fh.write("[\n")
        for i in range(rows):
            base = demo[i % len(demo)]
            variant = i // len(demo)
            reply = base["output"]
            start = (variant * 97) % max(1, len(reply) - REPLY_CHARS) if len(reply) > 2 * REPLY_CHARS else 0
            record = {
                "instruction": f"{base['instruction']} (variant {variant})",
                "input": _cut(base["input"], 0, 60),
                "output": f"{_cut(reply, start, REPLY_CHARS)} (#{i})",
            }
            fh.write(("  " if i == 0 else ",\n  ") + json.dumps(record, ensure_ascii=False))
        fh.write("\n]\n")
    return path.stat().st_size


def measure(repo: Path, path: Path, extra: list[str]) -> dict:
    """One `finetui data inspect PATH --json` in ``repo``: wall time, peak RSS, counts."""
    env = dict(os.environ, PYTHONPATH=child_usage.import_path(repo), HF_HUB_OFFLINE="1")
    command = [sys.executable, "-m", "finetui.engine.cli", "data", "inspect", str(path), "--json", *extra]
    child_usage.assert_runs_checkout(repo, env)
    result = child_usage.measure(command, repo, env)
    if result["rc"] != 0:
        raise SystemExit(f"inspect failed ({result['rc']}): {result['stderr']}")
    report = json.loads(result.pop("stdout"))
    result["counts"] = report["counts"]
    result["lengths"] = report["lengths"]
    result["trained_tokens"] = report["trained_tokens"]
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--keep", metavar="DIR", help="write the file here and keep it (reused when there)")
    parser.add_argument("--repo", action="append", default=[], metavar="DIR",
                        help="checkout whose finetui runs (repeatable; default: this one)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--extra", action="append", default=[], metavar="ARG",
                        help="an argument for `finetui data inspect` (repeatable), e.g. --extra=--num-proc=1")
    args = parser.parse_args(argv)

    folder = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="inspect-scale-"))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"alpaca_{args.rows}.json"
    try:
        if not path.exists():
            began = time.perf_counter()
            size = generate(path, args.rows)
            print(f"generated {args.rows:,} records, {size / 1e6:,.1f} MB in {time.perf_counter() - began:.1f} s",
                  file=sys.stderr)
        size_mb = path.stat().st_size / 1e6
        results = []
        for repo in [Path(r).resolve() for r in args.repo] or [ROOT]:
            for _ in range(args.repeats):
                r = measure(repo, path, args.extra)
                r.update(repo=str(repo), rows=args.rows, size_mb=round(size_mb, 1))
                results.append(r)
                print(f"{repo}: {r['wall_s']:.1f} s, CPU {r['cpu_s']:.1f} s "
                      f"({1e6 * r['cpu_s'] / args.rows:.0f} us a record), peak RSS {r['peak_rss_mb']:,.0f} MB, "
                      f"counts {json.dumps(r['counts'])}", file=sys.stderr)
    finally:
        if not args.keep:
            path.unlink(missing_ok=True)
            folder.rmdir()
    print(f"{'checkout':<40} {'records':>10} {'MB':>6} {'wall s':>8} {'CPU s':>8} {'us/record':>10} "
          f"{'peak RSS MB':>12}")
    print(f"{BEFORE['note']:<40} {1_000_000:>10,} {273:>6} {BEFORE['wall_s']:>8.0f} {'':>8} {'':>10} "
          f"{BEFORE['peak_rss_mb']:>12,.0f}")
    for r in results:
        print(f"{r['repo'][-40:]:<40} {r['rows']:>10,} {r['size_mb']:>6.0f} {r['wall_s']:>8.1f} {r['cpu_s']:>8.1f} "
              f"{1e6 * r['cpu_s'] / r['rows']:>10.0f} {r['peak_rss_mb']:>12,.0f}")
    print(child_usage.machine_line())
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
