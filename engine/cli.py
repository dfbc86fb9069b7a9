"""`finetui` command line. With no sub-command it opens the TUI.

This module only parses arguments; each sub-command lives in the module that does the
work and exposes ``command(args) -> int``. Those modules are imported lazily so that
`finetui runs list` does not pay for torch, and `finetui` (the TUI) never imports it.

Exit status (README "Command line"): 0 success; 1 failure, with one clear line on stderr
(``finetui: ...``); 2 a usage error or a config that does not validate; 130 interrupted
(Ctrl-C); 141 stdout closed early by the reader (``finetui runs list | head -1``: nothing
more is printed, no traceback). ``FINETUI_DEBUG=1`` shows the traceback instead.

With ``--json`` a failure is also one JSON object on stdout, the same shape for every
sub-command (:func:`json_error`)::

    {"ok": false, "error": {"kind": "data", "message": "...", "where": "data.jsonl:17" | null}}

Options of the top level (``--runs-dir``) are accepted after the sub-command too.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys

from finetui.engine.json_errors import error_kind, error_where, json_error

MESSAGE_CHARS = 2000  # an error line longer than this is cut (engine.data.formats caps values at 200)
TRUST_HELP = ("run code shipped with the model (auto_map + .py files in its folder); off unless you "
              "pass it: a run's config.yaml or an adapter's finetui.json cannot turn it on")

# sub-command -> module that implements command(args)
HANDLERS = {
    "train": "finetui.engine.launcher",
    "data": "finetui.engine.data.inspection",
    "runs": "finetui.engine.runs_cli",
    "merge": "finetui.engine.merge",
    "export": "finetui.engine.export",
    "chat": "finetui.engine.chat",
    "eval": "finetui.engine.evaluate",
    "bench": "finetui.engine.bench",
    "demo": "finetui.engine.demo",
    "models": "finetui.engine.models_cli",
    "import": "finetui.engine.importers",
    "launch": "finetui.engine.distributed",
}
GLOBAL_HELP = "folder of runs (default: ./runs or $FINETUI_RUNS_DIR); also accepted after the command"
RUNS_ACTIONS = """actions:
  list            every run, newest first: status, method, model, step, loss, eval loss, time (default)
  show RUN        everything known about one run: status, dates, steps, losses, checkpoints on disk
  attach RUN      print the run's history, then follow it live until it ends
  stop RUN        ask the trainer to stop: it saves a checkpoint and exits (resumable)
  kill RUN        end the trainer at once (SIGKILL): no checkpoint is saved; the run is marked killed
  export RUN      with --tensorboard DIR: write the run's events as TensorBoard scalars

RUN is a run id or a unique prefix of one."""
EXIT_CODES = """exit status: 0 success; 1 failure (one line on stderr); 2 usage error or invalid config;
130 interrupted; 141 output closed early (e.g. piped into head).
--json: a failure is {"ok": false, "error": {"kind", "message", "where"}} on stdout."""


def package_version() -> str:
    from importlib import metadata

    try:
        return metadata.version("finetui")
    except metadata.PackageNotFoundError:
        return "unknown (not installed: pip install -e .)"


class Parser(argparse.ArgumentParser):
    """argparse, whose usage errors are JSON on stdout when the command line asks for --json."""

    json_errors = False

    def error(self, message: str):
        if Parser.json_errors:
            print(json.dumps(json_error("usage", f"{self.prog}: {message}")), flush=True)
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\n")


def _at_least_one(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value}: must be at least 1")
    return value


def build_parser() -> argparse.ArgumentParser:
    from finetui.engine.data.formats import FORMATS

    p = Parser(
        prog="finetui",
        description="Fine-tune LLMs from the terminal. Without a command, opens the TUI.",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"finetui {package_version()}",
                   help="print finetui's version and exit")
    p.add_argument("--runs-dir", default=None, metavar="DIR", help=GLOBAL_HELP)
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    t = sub.add_parser("train", help="start a training run from a YAML config")
    t.add_argument("config", nargs="?", help="config YAML (see sample_data/quickstart.yaml)")
    t.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a setting, e.g. --set train.batch_size=4 (repeatable)")
    t.add_argument("--detach", action="store_true", help="start the run and return at once")
    t.add_argument("--resume", metavar="RUN_ID", help="continue a run from its newest complete checkpoint")
    t.add_argument("--checkpoint", type=int, metavar="STEP",
                   help="with --resume: continue from checkpoint-STEP instead")
    t.add_argument("--nproc", type=int, default=1, metavar="N", help="processes (torchrun) on this machine (default 1)")
    t.add_argument("--nnodes", type=_at_least_one, default=1, metavar="N",
                   help="nodes of a multi-node run (torchrun c10d); run the same command on each node")
    t.add_argument("--node-rank", type=int, default=0, metavar="R", help="this node's rank, 0 to N-1")
    t.add_argument("--rdzv", metavar="HOST:PORT", help="the rendezvous: node 0's address, reachable by every node")
    t.add_argument("--rdzv-id", metavar="ID", help="the job's id, the same on every node (default finetui); "
                   "the run folder is RUNS_DIR/NAME-ID, on storage every node sees")
    t.add_argument("--name", help="name part of the run id")
    t.add_argument("--allow-drops", action="store_true",
                   help="start even when more than data.max_drop_fraction of the records would be dropped")
    t.add_argument("--force", action="store_true",
                   help="start even when data.max_length is beyond the model's context or the memory "
                        "estimate exceeds the free RAM/VRAM (engine.startcheck); with --resume, "
                        "also continue a run that completed")
    t.add_argument("--log-steps", type=_at_least_one, default=None, metavar="N",
                   help="off a terminal: print a step line every N steps (default: every 10%% of the run or "
                        "10 s); 1 prints every step")
    t.add_argument("--verbose", "-v", action="store_true",
                   help="print every step as its own line (on a terminal too) instead of one progress line")

    d = sub.add_parser("data", help="inspect datasets")
    dsub = d.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    di = dsub.add_parser("inspect", help="format, counts, token lengths and one rendered example")
    di.add_argument("path", help="file, folder, HF id, sample:NAME, or DIR/dataset_info.json:NAME")
    di.add_argument("--format", default="auto", choices=("auto", *FORMATS),
                    help="record format (default: auto-detected)")
    di.add_argument("--template", default="auto", metavar="TEMPLATE",
                    help="chat template: auto (the tokenizer's own, else chatml), tokenizer, chatml, qa, "
                         "alpaca, plain, or a .jinja file (default auto)")
    di.add_argument("--model", default="tiny", metavar="MODEL",
                    help="tokenizer to count and render with: tiny, a model folder or hub id (default tiny)")
    di.add_argument("--max-length", type=int, default=512, metavar="N", help="tokens per example (default 512)")
    di.add_argument("--train-on", choices=("assistant", "all"), default="assistant",
                    help="tokens that count as trained: the assistant's replies or all (default assistant)")
    di.add_argument("--column", dest="columns", action="append", default=[], metavar="CANON=NAME",
                    help="map a field of the format to a column, e.g. --column question=prompt or "
                         "--column system=plan (repeatable; fields: engine.data.formats.FIELDS)")
    di.add_argument("--dataset-dir", help="folder with dataset_info.json, to name an entry by NAME")
    di.add_argument("--split", default="train", metavar="SPLIT", help="split of a hub dataset (default train)")
    di.add_argument("--subset", metavar="NAME", help="subset (configuration) of a hub dataset")
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
    from finetui.engine.data.create import run as data_create

    data_create.add_parser(dsub)

    r = sub.add_parser("runs", help="list, show, attach to, stop, kill or export runs",
                       description="List, show, attach to, stop, kill or export training runs.",
                       epilog=RUNS_ACTIONS, formatter_class=argparse.RawDescriptionHelpFormatter)
    r.add_argument("action", nargs="?", default="list", choices=("list", "show", "attach", "stop", "kill", "export"),
                   help="what to do (default list; see actions below)")
    r.add_argument("run", nargs="?", help="run id (or unique prefix)")
    r.add_argument("--tensorboard", metavar="DIR",
                   help="export: write the run's events (loss, eval loss, lr, grad norm, tokens/s...) as "
                   "TensorBoard scalars into DIR")
    r.add_argument("--json", action="store_true", help="machine-readable output (list, show, export)")

    m = sub.add_parser("merge", help="merge a run's adapter into its base model")
    m.add_argument("run", help="run id, or an adapter folder")
    m.add_argument("--out", help="output folder (default runs/<id>/merged)")
    m.add_argument("--shard-size", default="2GB", help="max safetensors shard size, e.g. 500MB")
    m.add_argument("--trust-remote-code", action="store_true", help=TRUST_HELP)
    m.add_argument("--json", action="store_true", help="print the result as one JSON object")

    from finetui.engine import export

    export.add_parser(sub)

    c = sub.add_parser("chat", help="talk to a model or a run's result")
    c.add_argument("model", help="run id, model folder, hub id, or tiny")
    c.add_argument("--prompt", action="append", default=[], metavar="TEXT",
                   help="one-shot prompt (repeatable): only the answer goes to stdout; without it, interactive")
    c.add_argument("--system", help="system prompt")
    c.add_argument("--max-new-tokens", type=int, default=128, metavar="N", help="reply length cap (default 128)")
    c.add_argument("--temperature", type=float, default=0.0, metavar="T", help=">= 0; 0 = greedy (default)")
    c.add_argument("--top-p", type=float, default=1.0, metavar="P", help="nucleus sampling, 0 < P <= 1 (default 1)")
    c.add_argument("--top-k", type=int, default=0, metavar="K", help="sample among the K likeliest; 0 = off (default)")
    c.add_argument("--repetition-penalty", type=float, default=1.0, metavar="X",
                   help="> 0; 1 = off (default), above 1 discourages repeats")
    c.add_argument("--base", action="store_true", help="with a run: use its base model (no adapter)")
    c.add_argument("--serve", action="store_true", help="run as a JSON-lines worker on stdin/stdout")
    c.add_argument("--trust-remote-code", action="store_true", help=TRUST_HELP)
    c.add_argument("--json", action="store_true", help="one JSON object per prompt on stdout")

    e = sub.add_parser("eval", help="evaluate a run on its held-out split")
    e.add_argument("run", help="run id")
    e.add_argument("--split", default="test", metavar="SPLIT", help="held-out split to score (default test)")
    e.add_argument("--compare-base", action="store_true", help="also evaluate the untrained base model")
    e.add_argument("--max-new-tokens", type=int, default=64, metavar="N", help="reply length cap (default 64)")
    e.add_argument("--limit", type=int, metavar="N", help="at most this many examples")
    e.add_argument("--refusal", metavar="TEXT",
                   help="the reply that refuses off-topic questions (default: the split's most repeated target)")
    e.add_argument("--trust-remote-code", action="store_true", help=TRUST_HELP)
    e.add_argument("--json", action="store_true", help="print the results as one JSON object")

    from finetui.engine import demo

    demo.add_parser(sub)

    from finetui.engine import models_cli

    models_cli.add_parser(sub)

    from finetui.engine import importers

    importers.add_parser(sub)

    from finetui.engine import distributed

    distributed.add_parser(sub)

    co = sub.add_parser("completion", help="print a shell completion script (bash or zsh)",
                        description="Print a completion script. bash: eval \"$(finetui completion bash)\" in "
                                    "~/.bashrc; zsh: finetui completion zsh > ~/.zfunc/_finetui (a folder on $fpath).")
    co.add_argument("shell", choices=("bash", "zsh"), help="the shell to complete in")

    b = sub.add_parser("bench", help="training speed benchmark against peers")
    b.add_argument("rest", nargs=argparse.REMAINDER, help="the benchmark script's own arguments")
    _share_globals(p)
    return p


def _share_globals(parser: argparse.ArgumentParser) -> None:
    """Accept --runs-dir after any sub-command too (``finetui runs list --runs-dir X``).
    Given there, it wins; not given, the top level's value stays (SUPPRESS sets nothing)."""
    for action in parser._actions:
        if not isinstance(action, argparse._SubParsersAction):
            continue
        for name, subparser in action.choices.items():
            if name == "bench":  # everything after `bench` is the script's
                continue
            if "--runs-dir" not in subparser._option_string_actions:
                subparser.add_argument("--runs-dir", default=argparse.SUPPRESS, metavar="DIR", help=GLOBAL_HELP)
            _share_globals(subparser)


def completion_script(parser: argparse.ArgumentParser, shell: str) -> str:
    import shtab

    return shtab.complete(parser, shell=shell)


def _wants_json(argv: list[str]) -> bool:
    return "--json" in argv[:argv.index("--")] if "--" in argv else "--json" in argv


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
    """The console script. Output closed early by its reader (``| head``) ends it quietly."""
    try:
        code = _main(argv)
        sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
        return code
    except BrokenPipeError:
        _quiet_stdout()
        return 141  # as if by SIGPIPE (128 + 13), without the traceback


def _quiet_stdout() -> None:
    """stdout's reader is gone: point stdout at /dev/null so that nothing else (the final
    flush at exit included) reports the broken pipe."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


def _main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    Parser.json_errors = _wants_json(argv)
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
            from finetui.tui.app import run as run_tui

            return run_tui() or 0
        if args.command == "data" and args.data_command is None:
            parser.parse_args(["data", "--help"])
        if args.command == "completion":
            print(completion_script(parser, args.shell), end="")
            return 0
        from finetui.engine.perf import import_cache

        import_cache.install()  # before any command imports transformers
        create = args.command == "data" and args.data_command == "create"
        handler = importlib.import_module("finetui.engine.data.create.run" if create else HANDLERS[args.command])
        return int(handler.command(args) or 0)
    except KeyboardInterrupt as exc:
        print("finetui: interrupted", file=sys.stderr)
        if getattr(args, "json", False):
            print(json.dumps(json_error(error_kind(exc), "interrupted")), flush=True)
        return 130
    except BrokenPipeError:
        raise  # main() ends quietly
    except Exception as exc:  # one clear line, not a traceback
        if os.environ.get("FINETUI_DEBUG"):
            raise
        from finetui.engine.visible import json_text, visible  # a message may quote a record, a path, a name
        message = str(exc).strip() or type(exc).__name__
        lines = []
        for line in message.splitlines() or [message]:
            if len(line) > MESSAGE_CHARS:  # a value from the data is never echoed whole
                line = f"{line[:MESSAGE_CHARS]}… ({len(line):,} chars)"
            lines.append(line)
            print(f"finetui: {visible(line)}", file=sys.stderr)
        if getattr(args, "json", False):
            print(json_text(json_error(error_kind(exc), "\n".join(lines), error_where(exc))), flush=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())
