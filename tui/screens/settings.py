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

from textual import work
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.widgets import ContentSwitcher, Static

from finetui.engine import config as cfg
from finetui.tui import settingsstate
from finetui.tui.screens.base import FinetuiScreen, PaletteCommand
from finetui.tui.session import SettingsState, display_path, presets
from finetui.tui.settingsstate import YAML_SUFFIXES, Estimate, Footprint, flat_values
from finetui.tui.widgets import settingsviews
from finetui.tui.widgets.dialogs import ConfirmDialog, PathDialog, PickDialog
from finetui.tui.widgets.fieldform import FieldRow, RowEditor, SettingsForm, show_value
from finetui.tui.widgets.modelpicker import ModelPicker
from finetui.tui.widgets.pathinput import PathInput


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
        self.footprint = Footprint()  # the estimate of the current config, this box's GPUs

    @property
    def state(self) -> SettingsState:
        return self.app.settings_state

    @property
    def estimate(self):
        """engine.footprint.MemoryEstimate of the current config (None: none yet, or a problem)."""
        return self.footprint.estimate

    @property
    def limits(self) -> list[str]:
        """engine.startcheck.limits of the current config."""
        return self.footprint.limits

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
        self.query_one(SettingsForm).update_values(flat_values(state.config), set(state.changed()))
        self.query_one("#origin", Static).update(settingsviews.origin_line(state))
        if self.query_one(ContentSwitcher).current == "preview":
            self.render_preview()
        if footprint:
            self.compute_footprint(state.config)
        self.show_help()

    def show_help(self) -> None:
        row = self.focused_row()
        self.query_one("#help", Static).update(settingsviews.help_text(row.spec) if row is not None else "")

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
        try:
            config = settingsstate.propose(self.state.config, row.key, message.value)
        except cfg.ConfigError as exc:
            kept = show_value(settingsstate.current_value(self.state.config, row.key))
            row.refuse(f"{exc}  (kept {kept or '(none)'})")
            return
        self.state.config = config
        row.accept()
        self.refresh_state()

    # ------------------------------------------------------------------ footprint

    def probe_gpus(self) -> list:
        """GPUs this box has (NVML, cached for the screen's life); [] on a CPU-only box."""
        return self.footprint.probe_gpus()

    @work(thread=True, exclusive=True, group="footprint")
    def compute_footprint(self, config: cfg.Config) -> None:
        self.app.call_from_thread(self.show_footprint, self.footprint.compute(config))

    def show_footprint(self, result: Estimate) -> None:
        if result.config is not self.state.config:
            return  # a newer config is being computed
        self.footprint.take(result)
        variables = self.app.theme_variables
        self.query_one("#footprint", Static).update(settingsviews.footprint_line(self.footprint, result.config,
                                                                                 variables))
        if self.query_one(ContentSwitcher).current == "preview":
            self.render_preview()

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
        self.query_one("#preview-text", Static).update(
            settingsviews.preview_text(self.state, self.footprint, self.app.theme_variables))

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
        start = settingsstate.default_save_path(self.state.base_path)
        self.app.push_screen(PathDialog("Save settings YAML", start, self._save_checked, confirm_overwrite=True,
                                        suffixes=YAML_SUFFIXES), self._after_save)

    def _save_checked(self, path: Path) -> str | None:
        problem = settingsstate.save_problem(path)
        if problem:
            return problem
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
        try:
            preset = settingsstate.load_preset(self.state, name)
        except cfg.ConfigError as exc:
            self.notify(str(exc), title=f"preset {name} not loaded", severity="error", timeout=10)
            return
        if preset is None:
            self.notify(f"no preset {name!r}", severity="error")
            return
        self.reload_form()
        self.notify(f"{preset.title}", title=f"preset {name}")

    # ------------------------------------------------------------------ start

    def preflight(self) -> str | None:
        """A problem that makes starting pointless (the trainer would fail at once)."""
        invalid = [row.key for row in self.query_one(SettingsForm).rows if row.error]
        return settingsstate.preflight(self.state.config, self.footprint, invalid)

    def action_start(self) -> None:
        blocking = self.preflight()
        config = self.state.config
        if blocking is not None:
            self.show_start(config, blocking, [])
            return
        lines = settingsstate.drops_at_once(config)
        if lines is not None:
            self.show_start(config, None, lines)
            return
        self.notify("reading the data to count the records a run would drop…", title="Start", timeout=4)
        self.check_drops(config)

    @work(thread=True, exclusive=True, group="dropcheck")
    def check_drops(self, config: cfg.Config) -> None:
        lines, problem = settingsstate.drops(config)
        if problem:
            self.app.call_from_thread(self.notify, problem, title="Start", severity="warning")
        self.app.call_from_thread(self.show_start, config, None, lines)

    def show_start(self, config: cfg.Config, blocking: str | None, drops: list[str]) -> None:
        """The start dialog: the command, the data the run would drop (if too much), the estimate."""
        if config is not self.state.config or isinstance(self.app.screen, ConfirmDialog):
            return  # the settings changed meanwhile, or a dialog is already up
        body = settingsviews.start_body(self.state, self.footprint, blocking, drops, self.app.theme_variables)
        title, verb = settingsstate.start_question(self.limits, drops, blocking)
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
