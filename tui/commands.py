"""Command palette (ctrl+p): what fits the current screen first, then the app-wide commands.

A screen offers its own commands through ``palette_commands()`` (see
``tui.screens.base.FinetuiScreen``); the app adds going to each screen, the themes, help
and quit.
"""

from __future__ import annotations

from functools import partial

from textual.command import DiscoveryHit, Hit, Hits, Provider


class FinetuiCommands(Provider):
    def _commands(self) -> list[tuple[str, str, object]]:
        app = self.app
        screen = self.screen
        commands: list[tuple[str, str, object]] = []
        own = getattr(screen, "palette_commands", None)
        if callable(own):
            commands.extend(own())
        for mode, title, key in app.screen_entries():
            if mode != getattr(screen, "MODE", None):
                commands.append((f"Go to {title}", f"Switch screen (key {key})", partial(app.action_goto, mode)))
        own = getattr(app, "theme_files", {})  # finetui's and the user's theme files first
        for name in sorted(app.available_themes, key=lambda n: (n not in own, n)):
            mark = " (current)" if name == app.theme else ""
            commands.append((f"Theme: {name}{mark}", "Switch theme (remembered in your config file)",
                             partial(app.choose_theme, name)))
        commands.append(("Help: keys", "Every key binding and its id", app.action_help))
        commands.append(("Quit", "Leave finetui (running trainers keep going)", app.action_quit))
        return commands

    async def discover(self) -> Hits:
        for name, help_text, callback in self._commands():
            yield DiscoveryHit(name, callback, help=help_text)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for name, help_text, callback in self._commands():
            score = matcher.match(name)
            if score > 0:
                yield Hit(score, matcher.highlight(name), callback, help=help_text)
