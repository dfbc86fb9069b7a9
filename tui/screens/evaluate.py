"""Eval: a run's held-out evaluation, tuned against base, and Export (merge).

* a run (``o``; on arrival the newest run with a result, or the one the dashboard or Chat
  handed over in ``app.eval_target``); its saved results (``runs/<id>/eval/results.json``
  and ``results.jsonl``) show at once when present;
* evaluate (``g``): ``finetui eval RUN --json [--compare-base] [--limit N]`` as a
  subprocess, never in this process (it needs torch). Its stderr is a pseudo-terminal, so
  the evaluator prints its progress lines (``· tuned: generating 27 replies``), shown live;
  the JSON on stdout becomes the metrics (eval loss, perplexity, exact match,
  accuracy when the targets are class labels, refusal rates when the split has a refusal line) and the table of prompt / target / base /
  tuned, where enter opens one example;
* export (``x``): ``finetui merge RUN --out DIR --shard-size S`` as a subprocess, with
  its progress lines; the result is an ordinary model folder
  (``AutoModelForCausalLM.from_pretrained(DIR)``);
* ``S`` stops the running evaluation or merge; ``t`` chats with the run.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

from rich.text import Text
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.widgets import ContentSwitcher, DataTable, RichLog, Static

from finetui.tui import evalstate, jobs
from finetui.tui.evalstate import default_run, read_results, run_choices
from finetui.tui.jobs import Job
from finetui.tui.screens.base import FinetuiScreen, PaletteCommand
from finetui.tui.widgets.dialogs import PickDialog
from finetui.tui.widgets.evaldialogs import EvalDialog, EvalOptions, ExportDialog, ExportOptions
from finetui.tui.widgets import evalviews
from finetui.tui.widgets.pathinput import PathInput

COLORS = ("success", "warning", "error")  # theme colours an outcome's lines name
HINT = "⏎ example · g evaluate · x export (merge) · o run · t chat · v log"
LINE_STYLES = {"error": "bold red", "stage": "bold", "dim": "dim"}


# ---------------------------------------------------------------------------- the screen


class EvalScreen(FinetuiScreen):
    MODE = "eval"
    AUTO_FOCUS = "#ev-table"
    HELP_CLASSES = [PickDialog, EvalDialog, ExportDialog, PathInput]
    BINDINGS = [
        Binding("o", "pick", "Run", id="eval.pick"),
        Binding("g", "evaluate", "Evaluate", id="eval.run"),
        Binding("x", "export", "Export", id="eval.export"),
        Binding("v", "log", "Log", id="eval.log"),
        Binding("t", "chat", "Chat", id="eval.chat"),
        Binding("S", "stop", "Stop", id="eval.stop"),
        Binding("escape", "back", "Back", show=False, id="eval.back"),
        Binding("left,h", "step(-1)", "Previous example", show=False, id="eval.prev"),
        Binding("right,l", "step(1)", "Next example", show=False, id="eval.next"),
    ]
    DEFAULT_CSS = """
    EvalScreen #ev-run { height: 1; padding: 0 1; background: $surface; }
    EvalScreen #ev-metrics { height: auto; max-height: 8; padding: 0 1; }
    EvalScreen #ev-switcher { height: 1fr; }
    EvalScreen #ev-table { height: 1fr; scrollbar-size-vertical: 1; }
    EvalScreen #ev-detail { padding: 0 1; }
    EvalScreen #ev-log { height: 1fr; padding: 0 1; scrollbar-size-vertical: 1; }
    EvalScreen #ev-status { height: 1; padding: 0 1; background: $panel; }
    """

    def __init__(self) -> None:
        super().__init__()
        self.run_dir: Path | None = None
        self.result: dict[str, Any] | None = None
        self.rows: list[dict[str, Any]] = []
        self.job: Job | None = None
        self.options = EvalOptions()
        self.detail_index: int | None = None
        self._tick_n = 0
        self._timer = None
        self._message: Text | None = None  # last outcome, shown until the next job
        self.log_lines: list[str] = []  # what the log shows, unwrapped

    def compose_body(self):
        yield Static("", id="ev-run")
        yield Static("", id="ev-metrics")
        with ContentSwitcher(initial="ev-table", id="ev-switcher"):
            yield DataTable(id="ev-table", cursor_type="row", zebra_stripes=True)
            with VerticalScroll(id="ev-detail"):
                yield Static("", id="ev-detail-text")
            yield RichLog(id="ev-log", wrap=True, markup=False, max_lines=5000)
        yield Static("", id="ev-status")

    def on_mount(self) -> None:
        self._timer = self.set_interval(0.2, self._tick, pause=True)
        self.query_one("#ev-metrics", Static).update(Text("reading the runs…", style="dim"))
        self.show_status()
        self.call_after_refresh(self._choose_initial)

    def on_screen_resume(self) -> None:
        target = getattr(self.app, "eval_target", None)
        if target:
            self.app.eval_target = None
            self._choose(target)

    def on_unmount(self) -> None:
        if self.job is not None:
            self._signal_job(signal.SIGKILL)

    def on_resize(self) -> None:
        if self.result is not None:
            self.fill_table()

    @property
    def view(self) -> str:
        return self.query_one(ContentSwitcher).current or "ev-table"

    def switch_to(self, view: str) -> None:
        self.query_one(ContentSwitcher).current = view
        self.query_one(f"#{view}").focus()
        self.refresh_bindings()

    # ------------------------------------------------------------------ choosing a run

    def _choose_initial(self) -> None:
        if getattr(self.app, "eval_target", None):
            return  # on_screen_resume takes it
        self.run_worker(self._initial_thread, thread=True, group="eval-read", exclusive=True)

    def _initial_thread(self) -> None:
        try:
            run_dir = default_run()
        except Exception as exc:  # noqa: BLE001 - a broken runs folder: say so
            self.app.call_from_thread(self.show_problem, f"runs: {exc}")
            return
        if run_dir is None:
            self.app.call_from_thread(self.no_runs)
            return
        self._read_thread(run_dir)

    def _choose(self, target: str | Path) -> None:
        from finetui.engine import targets

        try:
            run_dir = targets.find_run(str(target)).resolve()
        except targets.NotFound as exc:
            self.show_problem(str(exc))
            return
        self.run_worker(lambda: self._read_thread(run_dir), thread=True, group="eval-read", exclusive=True)

    def _read_thread(self, run_dir: Path) -> None:
        from finetui.engine import runs

        info = runs.summarize(run_dir)
        summary, rows, problem = read_results(run_dir)
        self.app.call_from_thread(self.show_run, run_dir, info, summary, rows, problem)

    def no_runs(self) -> None:
        self.run_dir = None
        self.query_one("#ev-run", Static).update(Text("no runs yet", style="bold"))
        self.query_one("#ev-metrics", Static).update(Text(
            "Train one first (Settings, g), then evaluate it here on its held-out split.", style="dim"))
        self.show_status()

    def show_problem(self, message: str) -> None:
        self.notify(message, title="Eval", severity="error", timeout=10)
        self._message = Text(message, style="bold red")
        self.show_status()

    def show_run(self, run_dir: Path, info, summary: dict | None, rows: list[dict], problem: str | None) -> None:
        self.run_dir = run_dir
        self.info = info
        self.result, self.rows = summary, rows
        self.detail_index = None
        self.show_run_line()
        self.show_metrics()
        self.fill_table()
        if self.view == "ev-detail":
            self.switch_to("ev-table")
        if problem:
            self.show_problem(problem)
        self.show_status()

    def show_run_line(self) -> None:
        self.query_one("#ev-run", Static).update(evalviews.run_line(self.run_dir, getattr(self, "info", None)))

    def action_pick(self) -> None:
        self.run_worker(self._pick_thread, thread=True, group="eval-pick", exclusive=True)

    def _pick_thread(self) -> None:
        try:
            items = run_choices()
        except Exception as exc:  # noqa: BLE001
            self.app.call_from_thread(self.show_problem, f"runs: {exc}")
            return
        self.app.call_from_thread(
            self.app.push_screen, PickDialog("Evaluate which run?", items, empty="no runs yet: train one first"),
            self._after_pick)

    def _after_pick(self, run_dir: str | None) -> None:
        if run_dir:
            self._choose(run_dir)

    # ------------------------------------------------------------------ results

    def show_metrics(self) -> None:
        self.query_one("#ev-metrics", Static).update(evalviews.metrics_view(self.result))

    def fill_table(self) -> None:
        width = max(self.query_one("#ev-switcher").size.width or self.size.width, 40)
        evalviews.fill_table(self.query_one("#ev-table", DataTable), self.result, self.rows, width,
                             self.app.theme_variables)

    def _color(self, name: str) -> str:
        return self.app.theme_variables.get(name, "")

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        self.show_detail(event.cursor_row)

    def show_detail(self, index: int) -> None:
        if not self.rows:
            return
        index = max(0, min(index, len(self.rows) - 1))
        self.detail_index = index
        text = evalviews.example_view(self.rows, index, self.app.theme_variables)
        self.query_one("#ev-detail-text", Static).update(text)
        if self.view != "ev-detail":
            self.switch_to("ev-detail")
        self.query_one("#ev-detail").scroll_home(animate=False)

    def action_step(self, step: int) -> None:
        if self.view == "ev-detail" and self.detail_index is not None:
            self.show_detail(self.detail_index + step)
            self.query_one("#ev-table", DataTable).move_cursor(row=self.detail_index)

    def action_back(self) -> None:
        if self.view != "ev-table":
            self.switch_to("ev-table")

    def action_log(self) -> None:
        self.switch_to("ev-table" if self.view == "ev-log" else "ev-log")

    def action_chat(self) -> None:
        if self.run_dir is None:
            self.show_problem("no run chosen: o picks one")
            return
        self.app.chat_target = str(self.run_dir)
        self.app.action_goto("chat")

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "step":
            return self.view == "ev-detail"
        if action == "back":
            return self.view != "ev-table"
        if action == "stop":
            return self.job is not None
        if action in ("evaluate", "export"):
            return self.job is None or None  # shown dimmed while a job runs
        return True

    # ------------------------------------------------------------------ status line

    def show_status(self) -> None:
        line = evalviews.status_line(self.job, self._tick_n, self._message, HINT, self.app.theme_variables)
        self.query_one("#ev-status", Static).update(line)

    def _tick(self) -> None:
        self._tick_n += 1
        self.show_status()

    # ------------------------------------------------------------------ evaluate

    def action_evaluate(self) -> None:
        if (busy := evalstate.busy_problem(self.job)) is not None:
            self.show_problem(busy)
            return
        if self.run_dir is None:
            self.show_problem("no run to evaluate: o picks one (or train one first)")
            return
        self.app.push_screen(EvalDialog(self.run_dir.name, self.options), self._after_eval_dialog)

    def _after_eval_dialog(self, options: EvalOptions | None) -> None:
        if options is None or self.run_dir is None:
            return
        self.options = options
        command = evalstate.eval_command(self.run_dir, options, self._trusts())
        self.start_job(Job("eval", self.run_dir, command))

    def _trusts(self) -> bool:
        """--trust-remote-code only when the user's own config (Settings) sets it."""
        from finetui.tui.session import trusts_remote_code

        return trusts_remote_code(self.app)

    # ------------------------------------------------------------------ export

    def action_export(self) -> None:
        if (busy := evalstate.busy_problem(self.job)) is not None:
            self.show_problem(busy)
            return
        run_dir = self.run_dir
        if run_dir is None:
            self.show_problem("no run to export: o picks one")
            return
        from finetui.engine.targets import NotFound
        from finetui.tui.session import display_path

        try:
            title, note = evalstate.export_offer(run_dir)
        except NotFound as exc:
            self.show_problem(str(exc))
            return
        self.app.push_screen(ExportDialog(title, display_path(run_dir / "merged"), "2GB", note),
                             self._after_export_dialog)

    def _after_export_dialog(self, options: ExportOptions | None) -> None:
        if options is None or self.run_dir is None:
            return
        out = options.out.resolve()
        command = evalstate.merge_command(self.run_dir, out, options.shard_size, self._trusts())
        self.start_job(Job("merge", self.run_dir, command, out=out))

    # ------------------------------------------------------------------ jobs

    def start_job(self, job: Job) -> None:
        self.job = job
        self._message = None
        self.write_log(Text(job.shown_command, style="bold"))
        self.switch_to("ev-log")
        self._timer.resume()
        self.refresh_bindings()
        self.show_status()
        self.run_worker(lambda: self._job_thread(job), thread=True, group="eval-job")

    def _job_thread(self, job: Job) -> None:
        """Thread: run the subprocess; its stderr lines go to the log as they come."""
        returncode, stdout, problem = jobs.run_job(job, lambda line, kind: self._ui(self.job_line, line, kind))
        self._ui(self.job_done, job, returncode, stdout, problem)

    def _ui(self, fn, *args) -> None:
        try:
            self.app.call_from_thread(fn, *args)
        except Exception:  # noqa: BLE001 - the app is gone
            pass

    def write_log(self, text: Text) -> None:
        from finetui.tui.safetext import safe

        text = safe(text)  # the job's output, model replies, paths: never control codes
        self.log_lines = (self.log_lines + [text.plain])[-5000:]
        self.query_one("#ev-log", RichLog).write(text)

    def job_line(self, line: str, kind: str) -> None:
        self.write_log(Text(line, style=LINE_STYLES[kind]))
        self.show_status()

    def job_done(self, job: Job, returncode: int | None, stdout: str, problem: str | None) -> None:
        if self.job is job:
            self.job = None
        self._timer.pause()
        self.refresh_bindings()
        outcome = evalstate.job_outcome(job, returncode, stdout, problem, self.run_dir, time.monotonic() - job.started)
        if outcome.result is not None:
            self.result, self.rows = outcome.result, outcome.rows
            self.show_run_line()
            self.show_metrics()
            self.fill_table()
        for line, style in outcome.log:
            self.write_log(Text(line, style=self._color(style) if style in COLORS else style))
        style = f"bold {self._color(outcome.color)}"
        self.write_log(Text(outcome.message, style=style))
        self._message = Text(outcome.message, style=style)
        if outcome.notify is not None:
            title, text = outcome.notify
            self.notify(text, title=title, severity="error" if outcome.color == "error" else "information",
                        timeout=15 if outcome.color == "error" else 12)
        if outcome.result is not None:
            self.switch_to("ev-table")
        self.show_status()

    def action_stop(self) -> None:
        job = self.job
        if job is None:
            return
        job.stopped = True
        job.stage = "stopping"
        self._signal_job(signal.SIGTERM)
        self.set_timer(5.0, lambda: self._signal_job(signal.SIGKILL, job))
        self.show_status()

    def _signal_job(self, sig: int, job: Job | None = None) -> None:
        jobs.signal_job(job or self.job, sig)

    # ------------------------------------------------------------------ palette

    def palette_commands(self) -> list[PaletteCommand]:
        return [
            ("Eval: pick a run…", "Which run's evaluation to show or run", self.action_pick),
            ("Eval: evaluate on the held-out split…", "finetui eval RUN --compare-base, in a subprocess",
             self.action_evaluate),
            ("Export: merge into a model folder…", "finetui merge RUN --out DIR --shard-size S",
             self.action_export),
            ("Eval: chat with this run", "Load the run's model on the Chat screen", self.action_chat),
        ]

