"""`finetui` command line. With no sub-command it opens the TUI.

This module only parses arguments; each sub-command lives in the module that does the
work and exposes ``command(args) -> int``. Those modules are imported lazily so that
`finetui runs list` does not pay for torch, and `finetui` (the TUI) never imports it.

Exit status 0 on success; on failure one clear line on stderr (``finetui: ...``) and a
non-zero status. ``FINETUI_DEBUG=1`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

MESSAGE_CHARS = 2000  # an error line longer than this is cut (engine.data.formats caps values at 200)
TRUST_HELP = ("run code shipped with the model (auto_map + .py files in its folder); off unless you "
              "pass it: a run's config.yaml or an adapter's finetui.json cannot turn it on")

# sub-command -> module that implements command(args)
HANDLERS = {
    "train": "engine.launcher",
    "data": "engine.data.inspection",
    "runs": "engine.runs_cli",
    "merge": "engine.merge",
    "export": "engine.export",
    "chat": "engine.chat",
    "eval": "engine.evaluate",
    "bench": "engine.bench",
    "demo": "engine.demo",
    "models": "engine.models_cli",
    "import": "engine.importers",
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="finetui",
        description="Fine-tune LLMs from the terminal. Without a command, opens the TUI.",
    )
    p.add_argument("--runs-dir", default=None, help="folder of runs (default: ./runs or $FINETUI_RUNS_DIR)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    t = sub.add_parser("train", help="start a training run from a YAML config")
    t.add_argument("config", nargs="?", help="config YAML (see sample_data/quickstart.yaml)")
    t.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a setting, e.g. --set train.batch_size=4 (repeatable)")
    t.add_argument("--detach", action="store_true", help="start the run and return at once")
    t.add_argument("--resume", metavar="RUN_ID", help="continue a run from its newest complete checkpoint")
    t.add_argument("--checkpoint", type=int, metavar="STEP",
                   help="with --resume: continue from checkpoint-STEP instead")
    t.add_argument("--nproc", type=int, default=1, help="processes (torchrun) on this machine")
    t.add_argument("--name", help="name part of the run id")
    t.add_argument("--allow-drops", action="store_true",
                   help="start even when more than data.max_drop_fraction of the records would be dropped")
    t.add_argument("--force", action="store_true",
                   help="start even when data.max_length is beyond the model's context or the memory "
                        "estimate exceeds the free RAM/VRAM (engine.startcheck); with --resume, "
                        "also continue a run that completed")

    d = sub.add_parser("data", help="inspect datasets")
    dsub = d.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    di = dsub.add_parser("inspect", help="format, counts, token lengths and one rendered example")
    di.add_argument("path", help="file, folder, HF id, sample:NAME, or DIR/dataset_info.json:NAME")
    di.add_argument("--format", default="auto")
    di.add_argument("--template", default="auto")
    di.add_argument("--model", default="tiny")
    di.add_argument("--max-length", type=int, default=512)
    di.add_argument("--train-on", choices=("assistant", "all"), default="assistant")
    di.add_argument("--column", dest="columns", action="append", default=[], metavar="CANON=NAME",
                    help="map a field of the format to a column, e.g. --column question=prompt or "
                         "--column system=plan (repeatable; fields: engine.data.formats.FIELDS)")
    di.add_argument("--dataset-dir", help="folder with dataset_info.json, to name an entry by NAME")
    di.add_argument("--split", default="train")
    di.add_argument("--subset")
    di.add_argument("--example", type=int, default=0, help="index of the example to render")
    di.add_argument("--strict", action="store_true", help="stop at the first bad record")
    di.add_argument("--long-text", choices=("chunk", "truncate"), default="chunk",
                    help="raw text longer than --max-length: split into windows (chunk) or cut (truncate)")
    di.add_argument("--text-overlap", type=int, default=0, metavar="N",
                    help="tokens each window of a chunked text repeats from the one before, as context")
    di.add_argument("--roles", action="append", default=[], metavar="SPEAKER=ROLE,...",
                    help="transcripts: each speaker's role (user, assistant, system), e.g. --roles Host=user,Guest=assistant")
    di.add_argument("--num-proc", type=int, metavar="N",
                    help="processes that render the records (default: one per core; 1: this process only)")
    di.add_argument("--json", action="store_true", help="machine-readable output")
    from engine.data.create import run as data_create

    data_create.add_parser(dsub)

    r = sub.add_parser("runs", help="list, show, attach to or stop runs")
    r.add_argument("action", nargs="?", default="list", choices=("list", "show", "attach", "stop", "kill", "export"))
    r.add_argument("run", nargs="?", help="run id (or unique prefix)")
    r.add_argument("--tensorboard", metavar="DIR",
                   help="export: write the run's events (loss, eval loss, lr, grad norm, tokens/s...) as "
                   "TensorBoard scalars into DIR")
    r.add_argument("--json", action="store_true")

    m = sub.add_parser("merge", help="merge a run's adapter into its base model")
    m.add_argument("run", help="run id, or an adapter folder")
    m.add_argument("--out", help="output folder (default runs/<id>/merged)")
    m.add_argument("--shard-size", default="2GB", help="max safetensors shard size, e.g. 500MB")
    m.add_argument("--trust-remote-code", action="store_true", help=TRUST_HELP)
    m.add_argument("--json", action="store_true")

    from engine import export

    export.add_parser(sub)

    c = sub.add_parser("chat", help="talk to a model or a run's result")
    c.add_argument("model", help="run id, model folder, hub id, or tiny")
    c.add_argument("--prompt", action="append", default=[], help="one-shot prompt (repeatable); without it, interactive")
    c.add_argument("--system", help="system prompt")
    c.add_argument("--max-new-tokens", type=int, default=128)
    c.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    c.add_argument("--top-p", type=float, default=1.0)
    c.add_argument("--top-k", type=int, default=0)
    c.add_argument("--repetition-penalty", type=float, default=1.0)
    c.add_argument("--base", action="store_true", help="with a run: use its base model (no adapter)")
    c.add_argument("--serve", action="store_true", help="run as a JSON-lines worker on stdin/stdout")
    c.add_argument("--trust-remote-code", action="store_true", help=TRUST_HELP)
    c.add_argument("--json", action="store_true")

    e = sub.add_parser("eval", help="evaluate a run on its held-out split")
    e.add_argument("run", help="run id")
    e.add_argument("--split", default="test")
    e.add_argument("--compare-base", action="store_true", help="also evaluate the untrained base model")
    e.add_argument("--max-new-tokens", type=int, default=64)
    e.add_argument("--limit", type=int, help="at most this many examples")
    e.add_argument("--refusal", metavar="TEXT",
                   help="the reply that refuses off-topic questions (default: the split's most repeated target)")
    e.add_argument("--trust-remote-code", action="store_true", help=TRUST_HELP)
    e.add_argument("--json", action="store_true")

    from engine import demo

    demo.add_parser(sub)

    from engine import models_cli

    models_cli.add_parser(sub)

    from engine import importers

    importers.add_parser(sub)

    b = sub.add_parser("bench", help="training speed benchmark against peers")
    b.add_argument("rest", nargs=argparse.REMAINDER)
    return p


def _bench_position(argv: list[str]) -> int | None:
    """Index of a `bench` sub-command (after global options only), else None."""
    i = 0
    while i < len(argv):
        if argv[i] == "bench":
            return i
        if argv[i] == "--runs-dir":
            i += 2
        elif argv[i].startswith("--runs-dir="):
            i += 1
        else:
            return None
    return None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    bench_at = _bench_position(argv)
    if bench_at is not None:
        # Everything after `bench` is the benchmark script's (argparse's REMAINDER would
        # refuse a leading --flag).
        args = parser.parse_args(argv[:bench_at + 1])
        args.rest = argv[bench_at + 1:]
    else:
        args = parser.parse_args(argv)
    if args.runs_dir:
        os.environ["FINETUI_RUNS_DIR"] = args.runs_dir
    try:
        if args.command is None:
            from tui.app import run as run_tui

            return run_tui() or 0
        if args.command == "data" and args.data_command is None:
            parser.parse_args(["data", "--help"])
        from engine.perf import import_cache

        import_cache.install()  # before any command imports transformers
        create = args.command == "data" and args.data_command == "create"
        handler = importlib.import_module("engine.data.create.run" if create else HANDLERS[args.command])
        return int(handler.command(args) or 0)
    except KeyboardInterrupt:
        print("finetui: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # one clear line, not a traceback
        if os.environ.get("FINETUI_DEBUG"):
            raise
        from engine.visible import visible  # a message may quote a record, a path, a name
        message = str(exc).strip() or type(exc).__name__
        for line in message.splitlines() or [message]:
            if len(line) > MESSAGE_CHARS:  # a value from the data is never echoed whole
                line = f"{line[:MESSAGE_CHARS]}… ({len(line):,} chars)"
            print(f"finetui: {visible(line)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
