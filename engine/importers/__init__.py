"""`finetui import SOURCE FILE`: bring a job file from another tool over as a finetui config.

Light module (argparse only); each source lives in its own module with
``command(args) -> int``: :mod:`engine.importers.llamafactory`.
"""

from __future__ import annotations

import importlib

# source name -> module that implements command(args)
SOURCES = {"llamafactory": "finetui.engine.importers.llamafactory"}


def add_parser(sub) -> None:
    p = sub.add_parser("import", help="convert another tool's job file into a finetui config")
    isub = p.add_subparsers(dest="import_source", metavar="SOURCE")
    lf = isub.add_parser(
        "llamafactory",
        help="a LLaMA-Factory training YAML (llamafactory-cli train JOB.yaml)",
        description="Write a finetui config from a LLaMA-Factory training YAML: model, template, "
        "dataset_info.json datasets, method (full, lora, 4-bit qlora) and hyperparameters. The keys "
        "that cannot be mapped are listed with why. Dataset names resolve through "
        "DATASET_DIR/dataset_info.json (dataset_dir, default data), relative to the current folder, "
        "as llamafactory-cli does.",
    )
    lf.add_argument("job", metavar="JOB.yaml", help="the LLaMA-Factory YAML")
    lf.add_argument("--out", metavar="CONFIG.yaml",
                    help="write the finetui config here (default: print it on stdout, the report on stderr)")


def command(args) -> int:
    source = getattr(args, "import_source", None)
    if source is None:
        import sys

        print("finetui import: name the source, e.g. finetui import llamafactory JOB.yaml "
              f"(sources: {', '.join(SOURCES)})", file=sys.stderr)
        return 2
    return importlib.import_module(SOURCES[source]).command(args)
