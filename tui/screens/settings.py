"""Settings: the training config as a form, presets, YAML load/save, preview, Start.

The form is generated from the engine's schema (``engine.config.field_specs()``), and every
proposed value is checked by validating the whole config with ``engine.config.validate``,
exactly as ``finetui train`` does, so the form refuses what the CLI would refuse, with the
same words. Refused values leave the config as it was.

Before launch the screen shows the model's footprint and a memory estimate
(``engine.footprint``: config.json only, no weights), computed in a worker thread.

``m`` opens the model picker (tui.widgets.modelpicker): built-ins, converted GGUF files and
hub-cache models with their size and the estimate for these settings, or a typed path; the
choice goes through the same validation as a typed value.

Start (``g``) first reads and normalises the data as the run will (engine.data.dropcheck,
no tokenizer): when more than ``data.max_drop_fraction`` of the records would be dropped,
the start dialog says how many and why and asks to start anyway. Small local data is
checked at once; bigger data in a worker thread.

The limits ``finetui train`` refuses without ``--force`` (engine.startcheck: data.max_length
beyond the model's context, an estimate above the free RAM/VRAM) show in red on the
footprint line as soon as the settings cross them, and the start dialog names them with the
setting to turn and asks to start anyway.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

from rich.text import Text
from textual import work
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.widgets import ContentSwitcher, Static

from finetui.engine import config as cfg
from finetui.tui.screens.base import FinetuiScreen, PaletteCommand
from finetui.tui.session import SettingsState, display_path, presets, sample_dir
from finetui.tui.widgets.dialogs import ConfirmDialog, PathDialog, PickDialog
from finetui.tui.widgets.modelpicker import ModelPicker
from finetui.tui.widgets.pathinput import PathInput
from finetui.tui.widgets.fieldform import FieldRow, RowEditor, SettingsForm, describe, show_value

YAML_SUFFIXES = (".yaml", ".yml")
CHECK_INLINE_BYTES = 2_000_000  # data this small is checked before the start dialog opens, in the UI thread


def flat_values(config: cfg.Config) -> dict[str, Any]:
    return {f"{s}.{k}": v for s, values in config.to_dict().items() for k, v in values.items()}


def data_path_problem(path: str) -> str | None:
    """A local data path that does not exist (hub ids and sample: names are not checked)."""
    value = path.strip()
    if not value or value.startswith(("sample:", "hf:")):
        return None
    entry = value.split(".json:", 1)[0] + ".json" if ".json:" in value else value
    local = entry.startswith(("/", "./", "../", "~")) or entry.endswith(
        (".json", ".jsonl", ".csv", ".txt", ".parquet", ".tsv")) or value.count("/") != 1
    p = Path(entry).expanduser()
    if local and not p.exists():
        return f"data.path: {entry}: no such file or folder"
    return None


class SettingsScreen(FinetuiScreen):
    MODE = "settings"
    AUTO_FOCUS = "FieldRow"
    HELP_CLASSES = [SettingsForm, FieldRow, RowEditor, PathDialog, PathInput, PickDialog, ConfirmDialog,
                    ModelPicker]
    BINDINGS = [
        Binding("m", "pick_model", "Model", id="settings.pick_model"),
        Binding("p", "presets", "Preset", id="settings.presets"),
        Binding("o", "load", "Open", id="settings.load"),
        Binding("w", "save", "Save", id="settings.save"),
        Binding("v", "preview", "Preview", id="settings.preview"),
        Binding("g", "start", "Start", id="settings.start"),
        Binding("escape", "back", "Back to form", show=False, id="settings.back"),
    ]
    DEFAULT_CSS = """
    SettingsScreen #origin { height: 1; padding: 0 1; background: $surface; color: $text-muted; }
    SettingsScreen #switcher { height: 1fr; }
    SettingsScreen #form { padding: 0 0 0 1; scrollbar-size-vertical: 1; }
    SettingsScreen FieldRow:focus { background: $primary 30%; }
    SettingsScreen FieldRow.-editing { background: $primary 15%; }
    SettingsScreen FieldRow.-invalid { color: $text-error; }
    SettingsScreen #preview { padding: 0 1; }
    SettingsScreen #help { height: auto; min-height: 2; max-height: 3; padding: 0 1; background: $surface; }
    SettingsScreen #footprint { height: 1; padding: 0 1; background: $panel; }
    """

    def __init__(self) -> None:
        super().__init__()
        self.estimate = None  # engine.footprint.MemoryEstimate of the current config
        self.estimate_problem: str | None = None
        self.estimate_blocks = True  # whether estimate_problem stops Start (a missing model does)
        self.limits: list[str] = []  # engine.startcheck.limits of the current config
        self._gpus: list | None = None  # engine.hardware.GpuReading, probed once

    @property
    def state(self) -> SettingsState:
        return self.app.settings_state

    def compose_body(self):
        yield Static("", id="origin")
        with ContentSwitcher(initial="form", id="switcher"):
            yield SettingsForm(cfg.field_specs(), flat_values(self.state.config), set(self.state.changed()), id="form")
            with VerticalScroll(id="preview"):
                yield Static("", id="preview-text")
        yield Static("", id="help")
        yield Static("…", id="footprint")

    def on_mount(self) -> None:
        self.refresh_state(footprint=False)
        # The estimate reads files in a thread; start it after the first frame is out.
        self.call_after_refresh(self.compute_footprint, self.state.config)
        self.call_after_refresh(self.query_one(SettingsForm).scroll_home, animate=False)

    # ------------------------------------------------------------------ state -> widgets

    def refresh_state(self, footprint: bool = True) -> None:
        """Push the current config into every widget that shows it."""
        state = self.state
        changed = state.changed()
        self.query_one(SettingsForm).update_values(flat_values(state.config), set(changed))
        where = f" ({display_path(state.base_path)})" if state.base_path is not None and \
            not state.origin.startswith("file") else ""
        origin = Text(no_wrap=True, overflow="ellipsis")
        origin.append(state.origin + where)
        origin.append(f" · {len(changed)} changed" if changed else " · unchanged")
        if changed:
            origin.append("  ● = --set on the command", style="dim")
        self.query_one("#origin", Static).update(origin)
        if self.query_one(ContentSwitcher).current == "preview":
            self.render_preview()
        if footprint:
            self.compute_footprint(state.config)
        self.show_help()

    def show_help(self) -> None:
        row = self.focused_row()
        if row is None:
            self.query_one("#help", Static).update("")
            return
        spec = row.spec
        text = Text(no_wrap=False, overflow="ellipsis")
        text.append(spec["key"], style="bold")
        text.append(f"  {describe(spec)}", style="dim")
        default = show_value(spec["default"])
        text.append(f"  default: {default if default else '(none)'}", style="dim")
        text.append("\n" + spec["description"])
        self.query_one("#help", Static).update(text)

    def focused_row(self) -> FieldRow | None:
        node = self.focused
        if isinstance(node, RowEditor):
            return node.row
        return node if isinstance(node, FieldRow) else None

    def on_descendant_focus(self, event) -> None:
        self.show_help()

    # ------------------------------------------------------------------ editing

    def on_field_row_proposed(self, message: FieldRow.Proposed) -> None:
        row = message.row
        section, name = row.key.split(".", 1)
        data = self.state.config.to_dict()
        data[section][name] = message.value
        try:
            config = cfg.validate(data)
        except cfg.ConfigError as exc:
            kept = show_value(getattr(getattr(self.state.config, section), name))
            row.refuse(f"{exc}  (kept {kept or '(none)'})")
            return
        self.state.config = config
        row.accept()
        self.refresh_state()

    # ------------------------------------------------------------------ footprint

    def probe_gpus(self) -> list:
        """GPUs this box has (NVML, cached for the screen's life); [] on a CPU-only box."""
        if self._gpus is None:
            try:
                from finetui.engine import hardware

                self._gpus = hardware.gpu_backend().read()
            except Exception:
                self._gpus = []
        return self._gpus

    @work(thread=True, exclusive=True, group="footprint")
    def compute_footprint(self, config: cfg.Config) -> None:
        from finetui.engine import footprint, model_catalog, startcheck

        gpus = self.probe_gpus()
        blocks = True
        limits: list[str] = []
        try:
            estimate, problem = footprint.estimate(config, gpu=bool(gpus)), None
            limits = startcheck.limits(config, gpus=gpus)
        except footprint.FootprintError as exc:
            estimate, problem = None, f"model.name_or_path: {exc}"
            name = config.model.name_or_path
            # A GGUF file not converted yet has no config.json to read; the run converts it.
            blocks = not (model_catalog.is_gguf(name) and Path(name).expanduser().is_file())
        except Exception as exc:  # a strange config.json must not take the screen down
            estimate, problem = None, f"footprint: {exc}"
        self.app.call_from_thread(self.show_footprint, config, estimate, problem, blocks, limits)

    def show_footprint(self, config: cfg.Config, estimate, problem: str | None, blocks: bool = True,
                       limits: list[str] | None = None) -> None:
        if config is not self.state.config:
            return  # a newer config is being computed
        from finetui.engine.footprint import human_count
        from finetui.engine.units import format_bytes

        self.estimate, self.estimate_problem, self.estimate_blocks = estimate, problem, blocks
        self.limits = list(limits or [])
        line = Text(no_wrap=True, overflow="ellipsis")
        if self.limits:
            line.append(f"✖ {self.limits[0]}", style=f"bold {self.app.theme_variables.get('error', 'red')}")
        elif estimate is None:
            line.append(problem or "no estimate", style="bold red" if blocks else "bold yellow")
        else:
            line.append(f"{config.model.name_or_path}", style="bold")
            line.append(f" {human_count(estimate.params_total)} params, {format_bytes(estimate.size_bytes)}")
            line.append(f" │ {estimate.method} {human_count(estimate.params_trainable)} trainable")
            line.append(f" │ est. {format_bytes(estimate.total_bytes)}", style="bold")
            line.append(f" (bs {config.train.batch_size} × {config.data.max_length})", style="dim")
            share = self.share_text(config, estimate)
            if share:
                line.append(f" │ {share}", style="bold")
            fit = self.fit_text(estimate)
            if fit is not None:
                line.append(" │ ")
                line.append_text(fit)
        self.query_one("#footprint", Static).update(line)
        if self.query_one(ContentSwitcher).current == "preview":
            self.render_preview()

    def share_text(self, config: cfg.Config, estimate) -> str | None:
        """Per-GPU memory under distributed.strategy (fsdp, deepspeed) over this box's GPUs
        (two when fewer are seen): `finetui train --nproc N` runs one process per GPU."""
        from finetui.engine import footprint
        from finetui.engine.units import format_bytes

        if config.distributed.strategy == "ddp":
            return None
        n = max(2, len(self._gpus or []))
        share = footprint.for_config(estimate, config, n)
        offload = f" +{format_bytes(share.offloaded_bytes)} CPU" if share.offloaded_bytes else ""
        return f"{share.strategy} ×{n}: {format_bytes(share.total_bytes)}/GPU{offload}"

    def fit_text(self, estimate) -> Text | None:
        """Whether the estimate fits the first GPU's memory (None without a GPU reading)."""
        from finetui.engine.units import format_bytes

        gpus = self._gpus or []
        total = gpus[0].memory_total_bytes if gpus else None
        if not total:
            return None
        need = estimate.total_bytes
        if self.state.config.distributed.strategy != "ddp":  # one GPU's share (share_text)
            from finetui.engine import footprint

            need = footprint.for_config(estimate, self.state.config, max(2, len(gpus))).total_bytes
        fits = need <= total * 0.95
        colour = self.app.theme_variables.get("success" if fits else "error", "")
        return Text(f"{'fits' if fits else 'exceeds'} GPU0 {format_bytes(total)}", style=f"bold {colour}")

    def footprint_text(self) -> Text:
        from finetui.engine.footprint import human_count
        from finetui.engine.units import format_bytes

        est = self.estimate
        text = Text()
        if est is None:
            text.append(self.estimate_problem or "computing…", style="red")
            return text
        rows = [
            ("model", f"{est.model}  [{est.source}]"),
            ("parameters", f"{human_count(est.params_total)} total, {human_count(est.params_trainable)} "
                           f"trainable ({est.method})"),
            ("size", f"{format_bytes(est.size_bytes)} stored; {format_bytes(est.weights_bytes)} loaded as "
                     f"{est.weights_dtype}"),
            ("memory", f"≈ {format_bytes(est.total_bytes)} peak, of which"),
            ("  weights", format_bytes(est.weights_bytes + est.adapter_bytes)),
            ("  grads+optim", format_bytes(est.gradients_bytes + est.optimizer_bytes)),
            ("  activations", format_bytes(est.activations_bytes + est.logits_bytes)),
            ("  overhead", format_bytes(est.overhead_bytes)),
        ]
        for label, value in rows:
            text.append(f"{label:<14}", style="bold" if not label.startswith(" ") else "")
            text.append(value + "\n")
        fit = self.fit_text(est)
        if fit is not None:
            text.append(f"{'GPU':<14}")
            text.append_text(fit)
            text.append("\n")
        elif self._gpus is not None:
            text.append(f"{'GPU':<14}none found: trains on the CPU\n")
        for note in est.notes:
            text.append(f"note: {note}\n", style="dim")
        return text

    # ------------------------------------------------------------------ model picker

    def action_pick_model(self) -> None:
        config = self.state.config
        self.app.push_screen(ModelPicker(config.model.name_or_path, config.to_dict(), self.probe_gpus),
                             self.use_model)

    def use_model(self, value: str | None) -> None:
        """Put the picked model into the form, validated as a typed value would be."""
        if not value:
            return
        form = self.query_one(SettingsForm)
        row = form.by_key["model.name_or_path"]
        row.action_cancel()  # an open editor would hold the old text
        self.action_back()
        form.focus_row(form.rows.index(row))
        self.on_field_row_proposed(FieldRow.Proposed(row, value))

    # ------------------------------------------------------------------ preview

    def render_preview(self) -> None:
        text = Text()
        text.append("# equivalent command\n", style="dim")
        text.append(self.state.train_command() + "\n\n", style="bold")
        text.append("# estimate before launch (config.json only, no weights loaded)\n", style="dim")
        text.append_text(self.footprint_text())
        text.append("\n# YAML (w saves it)\n", style="dim")
        text.append(self.state.config.to_yaml())
        self.query_one("#preview-text", Static).update(text)

    def action_preview(self) -> None:
        switcher = self.query_one(ContentSwitcher)
        if switcher.current == "preview":
            self.action_back()
            return
        self.render_preview()
        switcher.current = "preview"
        self.query_one("#preview").focus()

    def action_back(self) -> None:
        switcher = self.query_one(ContentSwitcher)
        if switcher.current != "form":
            switcher.current = "form"
            form = self.query_one(SettingsForm)
            form.focus_row(max(form.current_index(), 0))

    # ------------------------------------------------------------------ files

    def _default_save_path(self) -> str:
        base = self.state.base_path
        if base is not None:
            try:
                base.resolve().relative_to(sample_dir().resolve())
            except ValueError:
                return display_path(base)  # the user's own file: save back to it
        return "finetui.yaml"

    def action_load(self) -> None:
        start = display_path(self.state.base_path) if self.state.base_path else ""
        self.app.push_screen(PathDialog("Open settings YAML", start, self._load_checked, suffixes=YAML_SUFFIXES),
                             self._after_load)

    def _load_checked(self, path: Path) -> str | None:
        try:
            self.state.load(path)
        except cfg.ConfigError as exc:
            return str(exc)  # the dialog stays open; the current settings are untouched
        return None

    def _after_load(self, path: Path | None) -> None:
        if path is not None:
            self.reload_form()
            self.notify(f"loaded {display_path(path)}", title="Settings")

    def action_save(self) -> None:
        self.app.push_screen(PathDialog("Save settings YAML", self._default_save_path(), self._save_checked,
                                        confirm_overwrite=True, suffixes=YAML_SUFFIXES), self._after_save)

    def _save_checked(self, path: Path) -> str | None:
        if path.is_dir():
            return f"{path}: is a folder; give a file name, e.g. {path / 'finetui.yaml'}"
        try:
            self.state.save(path)
        except OSError as exc:
            return f"{path}: cannot write: {exc.strerror or exc}"
        return None

    def _after_save(self, path: Path | None) -> None:
        if path is not None:
            self.refresh_state()
            self.notify(f"saved {display_path(path)}", title="Settings")

    def reload_form(self) -> None:
        form = self.query_one(SettingsForm)
        for row in form.rows:
            row.action_cancel()
            row.clear_error()
        self.refresh_state()

    def action_presets(self) -> None:
        items = [(p.name, p.title, p.description) for p in presets()]
        self.app.push_screen(PickDialog("Presets", items, empty="no presets found in sample_data/presets/"),
                             self.load_preset)

    def load_preset(self, name: str | None) -> None:
        if not name:
            return
        for preset in presets():
            if preset.name == name:
                try:
                    self.state.load(preset.path, origin=f"preset {preset.name}")
                except cfg.ConfigError as exc:
                    self.notify(str(exc), title=f"preset {name} not loaded", severity="error", timeout=10)
                    return
                self.reload_form()
                self.notify(f"{preset.title}", title=f"preset {name}")
                return
        self.notify(f"no preset {name!r}", severity="error")

    # ------------------------------------------------------------------ start

    def preflight(self) -> str | None:
        """A problem that makes starting pointless (the trainer would fail at once)."""
        invalid = [row.key for row in self.query_one(SettingsForm).rows if row.error]
        if invalid:
            return f"{invalid[0]}: refused value still in the editor (fix it or press esc on it)"
        problem = data_path_problem(self.state.config.data.path)
        if problem:
            return problem
        from finetui.engine import startcheck

        missing = startcheck.package_problems(self.state.config)  # a tracker or galore-torch not installed
        if missing:
            return missing[0]
        if self.estimate is None and self.estimate_problem and self.estimate_blocks:
            return self.estimate_problem
        return None

    def action_start(self) -> None:
        blocking = self.preflight()
        config = self.state.config
        if blocking is not None:
            self.show_start(config, blocking, [])
            return
        from finetui.engine.data import dropcheck

        if dropcheck.local_bytes(config.data) <= CHECK_INLINE_BYTES:
            self.show_start(config, None, dropcheck.refusal(config.data))
            return
        self.notify("reading the data to count the records a run would drop…", title="Start", timeout=4)
        self.check_drops(config)

    @work(thread=True, exclusive=True, group="dropcheck")
    def check_drops(self, config: cfg.Config) -> None:
        from finetui.engine.data import dropcheck

        try:
            lines = dropcheck.refusal(config.data)
        except Exception as exc:  # the check must never stand between the user and Start
            lines = []
            self.app.call_from_thread(self.notify, f"data check failed: {exc}", title="Start", severity="warning")
        self.app.call_from_thread(self.show_start, config, None, lines)

    def show_start(self, config: cfg.Config, blocking: str | None, drops: list[str]) -> None:
        """The start dialog: the command, the data the run would drop (if too much), the estimate."""
        if config is not self.state.config or isinstance(self.app.screen, ConfirmDialog):
            return  # the settings changed meanwhile, or a dialog is already up
        body = Text()
        body.append(self.state.train_command() + "\n\n", style="bold")
        title, verb = "Start a training run", "start"
        if self.limits and blocking is None:
            error = self.app.theme_variables.get("error", "red")
            body.append("\n".join(self.limits) + "\n", style=f"bold {error}")
            body.append("turn the setting named above, or start anyway (finetui train --force)\n\n", style="dim")
            title, verb = "Beyond the model's context or the free memory: start anyway?", "start anyway"
        if drops:
            warning = self.app.theme_variables.get("warning", "yellow")
            body.append("\n".join(drops) + "\n", style=f"bold {warning}")
            body.append("fix the data or the settings (Datasets: m maps columns, u uses a dataset as shown), "
                        "or start anyway (what would be dropped is not trained)\n\n", style="dim")
            title, verb = "Records would be dropped: start anyway?", "start anyway"
        body.append_text(self.footprint_text())
        self.app.push_screen(ConfirmDialog(title, body, blocking=blocking, verb=verb), self._start_confirmed)

    def _start_confirmed(self, ok: bool | None) -> None:
        if ok:
            self.launch_run(self.state.config, self.state.run_name(), self.state.runs_root())

    @work(thread=True, group="launch")
    def launch_run(self, config: cfg.Config, name: str, root: str | None) -> None:
        from finetui.engine import runs

        try:
            run_dir = runs.new_run(config, name=name, root=root)
            proc = runs.launch(run_dir)
        except Exception as exc:
            self.app.call_from_thread(self.notify, f"could not start the run: {exc}", title="Start",
                                      severity="error", timeout=10)
            return
        self.app.call_from_thread(self.app.run_launched, run_dir, proc)

    # ------------------------------------------------------------------ palette

    def palette_commands(self) -> list[PaletteCommand]:
        commands: list[PaletteCommand] = [
            ("Settings: open YAML…", "Load a training config file", self.action_load),
            ("Settings: save YAML…", "Write the current settings to a file", self.action_save),
            ("Settings: pick the model…", "Built-in, converted GGUF and cached models, or a path",
             self.action_pick_model),
            ("Settings: preview YAML and command", "The config and its `finetui train` command",
             self.action_preview),
            ("Start run", "Launch the trainer with these settings", self.action_start),
        ]
        for preset in presets():
            commands.append((f"Preset: {preset.title}", preset.description or preset.name,
                             partial(self.load_preset, preset.name)))
        return commands
