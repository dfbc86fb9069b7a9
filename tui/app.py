"""The finetui TUI: one Textual app, one screen per mode, everything on the keyboard.

Adding a screen (one place): add a :class:`ScreenEntry` to :data:`SCREEN_TABLE` naming
its mode, title, default key and ``"module:Class"``. That row gives the screen

* a Textual mode (``App.MODES``; the module is imported on first use, so the first frame
  pays only for the screen it shows),
* a key to reach it, with the binding id ``app.screen_<mode>`` (remappable),
* a place in the screen bar, the command palette ("Go to ...") and the help screen.

The screen class itself subclasses ``tui.screens.base.FinetuiScreen`` (screen bar,
footer, ``palette_commands()``), gives each Binding an id ``<mode>.<action>``, and lists in
``HELP_CLASSES`` the widgets/dialogs whose keys the help screen should show with it.

Process rules (see docs/ARCHITECTURE.md): this process never imports torch,
transformers, peft, bitsandbytes or datasets (tests/test_tui_imports.py checks). Trainers
are subprocesses; ``app.run_processes[run_id]`` keeps each ``Popen`` this UI started so the
dashboard can read its event pipe.

User settings (theme, key remaps) live in ``$XDG_CONFIG_HOME/finetui/config.yaml``
(tui.userconfig); themes are YAML files (tui.themes).
"""

from __future__ import annotations

import importlib
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from textual.app import App
from textual.binding import Binding

from finetui.tui import keymap as keymaps
from finetui.tui import themes as theme_files
from finetui.tui import userconfig
from finetui.tui.commands import FinetuiCommands

if TYPE_CHECKING:
    import subprocess


@dataclass(frozen=True)
class ScreenEntry:
    mode: str  # Textual mode name, also the screen's binding-id prefix
    title: str
    key: str  # default key; the user may remap app.screen_<mode>
    screen: str  # "module:Class", imported when the mode is first shown


SCREEN_TABLE: tuple[ScreenEntry, ...] = (
    ScreenEntry("datasets", "Datasets", "d", "finetui.tui.screens.datasets:DatasetsScreen"),
    ScreenEntry("settings", "Settings", "s", "finetui.tui.screens.settings:SettingsScreen"),
    ScreenEntry("runs", "Runs", "r", "finetui.tui.screens.runs:RunsScreen"),
    ScreenEntry("chat", "Chat", "c", "finetui.tui.screens.chat:ChatScreen"),
    ScreenEntry("eval", "Eval", "e", "finetui.tui.screens.evaluate:EvalScreen"),
)
# Textual's own app keys (no id, not remappable) as the help screen names them.
UNNAMED_ACTIONS = {"help_quit": "How to quit (ctrl+c copies in text boxes)", "quit": "Quit"}
START_MODE = "datasets"  # `finetui` opens on the config's dataset (the sample FAQ)


def screen_class(entry: ScreenEntry) -> type:
    module, _, name = entry.screen.partition(":")
    return getattr(importlib.import_module(module), name)


def _factory(entry: ScreenEntry):
    return lambda: screen_class(entry)()


class FinetuiApp(App):
    TITLE = "finetui"
    CSS_PATH = "app.tcss"
    MODES = {entry.mode: _factory(entry) for entry in SCREEN_TABLE}
    DEFAULT_MODE = START_MODE
    COMMANDS = {FinetuiCommands}
    BINDINGS = [
        *(Binding(e.key, f"goto('{e.mode}')", e.title, show=False, id=f"app.screen_{e.mode}")
          for e in SCREEN_TABLE),
        Binding("question_mark", "help", "Help", id="app.help"),
        Binding("q", "quit", "Quit", id="app.quit"),
        # shown in the top bar (ScreenBar) where it fits, not in the footer: at 80 columns the
        # footer needs its room for the screen's own keys
        Binding("ctrl+p", "command_palette", "Palette", show=False, id="app.command_palette", priority=True),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.run_processes: dict[str, subprocess.Popen] = {}  # run id -> trainer started here
        self.run_dirs: dict[str, Path] = {}
        self.startup_problems: list[tuple[str, str]] = []  # (title, message)
        self.user_config = userconfig.load()
        for problem in self.user_config.problems:
            self.startup_problems.append(("config file", problem))
        self._load_themes()
        self._settings_state = None
        self._settings_lock = threading.Lock()
        self._clashes_reported: set[frozenset[str]] = set()

    @property
    def settings_state(self):
        """The config being edited (tui.session.SettingsState), shared by every screen.

        Made on first use, which may be a worker thread: it imports engine.config
        (pydantic), which the first frame of the Datasets screen does not need."""
        if self._settings_state is None:
            with self._settings_lock:
                if self._settings_state is None:
                    from finetui.tui.session import SettingsState

                    state, problems = SettingsState.initial()
                    for problem in problems:
                        self._notify_any_thread(problem, "settings")
                    self._settings_state = state
        return self._settings_state

    @settings_state.setter
    def settings_state(self, state) -> None:
        self._settings_state = state

    def notify(self, message: str, *, title: str = "", severity="information", timeout: float | None = None,
               markup: bool = True) -> None:
        """Every toast (screens' and widgets' notify come here): errors quote paths, names and
        data, shown with their control characters made visible (engine.visible)."""
        from finetui.tui.safetext import visible

        super().notify(visible(message), title=visible(title), severity=severity, timeout=timeout, markup=markup)

    def _notify_any_thread(self, message: str, title: str) -> None:
        if threading.get_ident() == self._thread_id:
            self.notify(message, title=title, severity="error", timeout=15)
        else:
            self.call_from_thread(self.notify, message, title=title, severity="error", timeout=15)

    # ------------------------------------------------------------------ start-up

    def _load_themes(self) -> None:
        themes, self.theme_files, problems = theme_files.load_all(userconfig.user_themes_dir())
        for theme in themes.values():
            self.register_theme(theme)
        for problem in problems:
            self.startup_problems.append(("theme file", problem))
        wanted = self.user_config.theme or theme_files.DEFAULT_THEME
        if wanted not in self.available_themes:
            self.startup_problems.append(
                ("theme", f"theme {wanted!r} from {self.user_config.path} is not available "
                          f"(see the theme file problem above, if any); using {theme_files.DEFAULT_THEME}"))
            wanted = theme_files.DEFAULT_THEME
        if wanted in self.available_themes:
            self.theme = wanted

    def on_mount(self) -> None:
        raw_keys = self.user_config.keys
        if raw_keys:
            keymap, problems = keymaps.parse(raw_keys, self.known_binding_ids(), str(self.user_config.path))
            self.set_keymap(keymap)
            for problem in problems:
                self.startup_problems.append(("keys", problem))
        for title, message in self.startup_problems:
            self.notify(message, title=title, severity="error", timeout=15)
        self.theme_changed_signal.subscribe(self, self._theme_changed)

    # ------------------------------------------------------------------ screens

    def screen_entries(self) -> list[tuple[str, str, str]]:
        """(mode, title, key as shown) for each screen, after the user's keymap."""
        return [(e.mode, e.title, self.key_for(f"app.screen_{e.mode}", e.key)) for e in SCREEN_TABLE]

    def key_for(self, binding_id: str, default: str = "") -> str:
        for _key, binding in self._bindings:
            if binding.id == binding_id:
                default = binding.key
                break
        keys = self._keymap.get(binding_id, default)
        return "/".join(self.get_key_display(Binding(k.strip(), "")) for k in keys.split(",") if k.strip())

    def action_goto(self, mode: str) -> None:
        if self.current_mode == mode:
            return
        while len(self.screen_stack) > 1:  # leave dialogs/help of the current screen first
            self.pop_screen()
        self.switch_mode(mode)

    def action_help(self) -> None:
        from finetui.tui.screens.help import HelpScreen

        if isinstance(self.screen, HelpScreen):
            self.screen.dismiss(None)
            return
        self.push_screen(HelpScreen(self.binding_groups(), str(self.user_config.path)))

    def run_launched(self, run_dir: Path, proc: subprocess.Popen) -> None:
        """A trainer started from this UI: keep its process for the dashboard, go there."""
        run_id = run_dir.name
        self.run_processes[run_id] = proc
        self.run_dirs[run_id] = run_dir
        self.notify(f"run {run_id} started (pid {proc.pid})", title="Start", timeout=10)
        self.action_goto("runs")
        from finetui.tui.screens.runs import RunsScreen

        if isinstance(self.screen, RunsScreen):
            self.screen.post_message(RunsScreen.RunStarted(run_id))

    # ------------------------------------------------------------------ themes

    def choose_theme(self, name: str) -> None:
        self.theme = name

    def _theme_changed(self, theme: Any) -> None:
        if self.user_config.theme == theme.name:
            return
        self.run_worker(lambda: self._save_theme(theme.name), thread=True, group="userconfig")

    def _save_theme(self, name: str) -> None:
        try:
            path = userconfig.save_setting("theme", name)
        except (OSError, ValueError) as exc:
            self.call_from_thread(self.notify, f"theme not remembered: {exc}", title="theme", severity="warning")
            return
        self.user_config.data["theme"] = name
        self.call_from_thread(self.notify, f"theme {name} (saved in {path})", title="theme", timeout=4)

    # ------------------------------------------------------------------ keys

    def binding_classes(self) -> list[tuple[str, list[type]]]:
        """(group title, classes) for every screen, for help and keymap checks."""
        groups = []
        for entry in SCREEN_TABLE:
            cls = screen_class(entry)
            groups.append((entry.title, [cls, *getattr(cls, "HELP_CLASSES", [])]))
        from finetui.tui.screens.help import HelpScreen

        groups.append(("Help", [HelpScreen]))
        return groups

    def known_binding_ids(self) -> set[str]:
        ids = {b.id for b in keymaps.bindings_of(type(self)) if b.id}
        for _title, classes in self.binding_classes():
            for cls in classes:
                ids.update(b.id for b in keymaps.bindings_of(cls) if b.id)
        return ids

    def binding_groups(self) -> list[tuple[str, list[tuple[str, str, str]]]]:
        """Every binding as (keys shown, description, id), grouped; current screen first."""
        current = getattr(self.screen, "MODE", None) or self.current_mode

        def rows(classes: list[type], with_unnamed: bool = False) -> list[tuple[str, str, str]]:
            seen: dict[str, list] = {}
            for cls in classes:
                for binding in keymaps.bindings_of(cls):
                    if not binding.id and not with_unnamed:
                        continue
                    ident = binding.id or f"({binding.action})"
                    description = binding.description or UNNAMED_ACTIONS.get(binding.action, binding.action)
                    entry = seen.setdefault(ident, [[], description, binding.id or "—"])
                    for key in keymaps.keys_for(binding, self._keymap):
                        shown = self.get_key_display(Binding(key, ""))
                        if shown not in entry[0]:
                            entry[0].append(shown)
            return [("/".join(keys), desc, ident) for keys, desc, ident in seen.values()]

        groups = [("Global", rows([type(self)], with_unnamed=True))]
        per_screen = self.binding_classes()
        per_screen.sort(key=lambda g: 0 if g[0].lower() == str(current) else 1)
        for title, classes in per_screen:
            found = rows(classes)
            if found:
                groups.append((f"{title} screen" if title != "Help" else title, found))
        return groups

    def handle_bindings_clash(self, clashed_bindings: set[Binding], node) -> None:
        ids = frozenset(b.id or b.action for b in clashed_bindings)
        if ids in self._clashes_reported:
            return
        self._clashes_reported.add(ids)
        keys = ", ".join(sorted({b.key for b in clashed_bindings}))
        self.notify(f"{keys} is bound to more than one action ({', '.join(sorted(ids))}); "
                    f"change one in {self.user_config.path}", title="keys", severity="warning", timeout=10)


def run() -> int:
    FinetuiApp().run()
    return 0
