"""The Datasets screen on a 1,000,000-row JSONL file: time to the first rows, and the UI's memory.

    python benchmarks/browser_scale.py                       # 1M rows of ~70 bytes, temp dir
    python benchmarks/browser_scale.py --rows 1000000 --row-bytes 1000 --keep DIR

Each measurement runs in a fresh process: the finetui app, headless at 80x24 (Textual's
``run_test``, the screens and workers of the real TUI), opens the file the way ``o`` does
(``DatasetsScreen.open_resolved``) once the sample dataset it starts on is shown. Reported:
``first_rows_s`` from the open to the table holding row 0 and the source line naming the
file; ``rows`` once the background index has counted them; the process's resident memory
then (``rss_mb``) and its peak (``peak_rss_mb``, VmHWM); whether torch was imported (never).

Goal (issue 24): the first rows in 0.2-1 s, the UI under 90 MB.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def generate(path: Path, rows: int, row_bytes: int = 70) -> int:
    """Write ``rows`` alpaca records of about ``row_bytes`` bytes each; return the file size."""
    pad = "x" * max(0, row_bytes - 60)
    with open(path, "w", encoding="utf-8") as fh:
        chunk = []
        for i in range(rows):
            chunk.append(f'{{"instruction": "question {i}", "input": "", "output": "answer {i}{pad}"}}\n')
            if len(chunk) >= 50_000:
                fh.write("".join(chunk))
                chunk.clear()
        fh.write("".join(chunk))
    return path.stat().st_size


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


async def _measure(path: Path, timeout: float = 120.0) -> dict:
    sys.path.insert(0, str(ROOT))
    from finetui.tui import datasource
    from finetui.tui.app import FinetuiApp
    from finetui.tui.screens.datasets import DatasetsScreen
    from finetui.tui.widgets.rowtable import RowTable

    app = FinetuiApp()
    async with app.run_test(size=(80, 24)) as pilot:
        deadline = time.monotonic() + timeout
        while not (isinstance(app.screen, DatasetsScreen) and app.screen.rows is not None):
            assert time.monotonic() < deadline, "the Datasets screen never showed its first dataset"
            await pilot.pause(0.05)
        screen = app.screen
        await pilot.pause(0.3)
        source = datasource.resolve(str(path), "train", None)
        began = time.perf_counter()
        screen.open_resolved(str(path), source)
        table = screen.query_one(RowTable)
        while not (screen.spec == str(path) and table.row(0) is not None):
            assert time.monotonic() < deadline, "the file never opened"
            await asyncio.sleep(0.005)
            await pilot.pause()
        first_rows_s = time.perf_counter() - began
        first = table.row(0).data
        while screen.rows.total is None:  # the background index counts the rows
            assert time.monotonic() < deadline, "the rows were never counted"
            await pilot.pause(0.1)
        total = screen.rows.total
        await pilot.pause(0.3)
        result = {
            "file_mb": round(path.stat().st_size / 1e6, 1),
            "first_rows_s": round(first_rows_s, 3),
            "first_row": first,
            "rows": total,
            "rss_mb": round(_status_mb("VmRSS"), 1),
            "peak_rss_mb": round(_status_mb("VmHWM"), 1),
            "torch_imported": "torch" in sys.modules,
        }
        app.exit()
    return result


def measure(path: Path) -> dict:
    """Run the measurement in a fresh interpreter; return its figures."""
    done = subprocess.run([sys.executable, __file__, "--measure", str(path)], capture_output=True, text=True,
                          timeout=300, cwd=str(ROOT))
    if done.returncode != 0:
        raise RuntimeError(f"measurement failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--row-bytes", type=int, default=70)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--keep", metavar="DIR", help="write the file here and keep it")
    parser.add_argument("--measure", metavar="FILE", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure:
        print(json.dumps(asyncio.run(_measure(Path(args.measure)))))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.keep or tmp)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"rows-{args.rows}.jsonl"
        if not path.exists():
            generate(path, args.rows, args.row_bytes)
        for _ in range(args.repeats):
            print(json.dumps(measure(path)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
