"""The app shell: screens by key and palette, themes, key remaps from the user config,
the help screen, and binding ids. Textual Pilot at 80x24, keyboard only."""

from __future__ import annotations

import yaml
from textual.binding import Binding
from textual.command import CommandPalette
from tui_helpers import SIZE, notifications, settle, text_of, tui_env, type_text, user_config_dir  # noqa: F401

from finetui.tui import keymap, themes, userconfig
from finetui.tui.app import SCREEN_TABLE, FinetuiApp, screen_class
from finetui.tui.screens.help import HelpScreen
from finetui.tui.screens.settings import SettingsScreen


async def test_screens_switch_by_key(tui_env):
    app = FinetuiApp()
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot, app)
        for entry in SCREEN_TABLE:
            # A screen may focus a text box (chat prompt) that takes letters; the user
            # leaves it first, as here.
            app.screen.set_focus(None)
            await pilot.press(entry.key)
            await settle(pilot, app)
            assert app.current_mode == entry.mode
            assert type(app.screen) is screen_class(entry)
            assert entry.title in text_of(app.screen.query_one("ScreenBar"))
        app.screen.set_focus(None)
        await pilot.press("s")
        await pilot.pause()
        assert isinstance(app.screen, SettingsScreen)


async def test_footer_shows_the_current_screens_keys(tui_env):
    app = FinetuiApp()
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot, app)
        footer_keys = {key.description for key in app.screen.query("FooterKey")}
        assert {"View", "Open", "Search", "Lengths", "Help", "Quit"} <= footer_keys
        await pilot.press("s")
        await settle(pilot, app)
        footer_keys = {key.description for key in app.screen.query("FooterKey")}
        assert {"Preset", "Open", "Save", "Preview", "Start", "Help", "Quit"} <= footer_keys
        await pilot.press("r")
        await settle(pilot, app)
        footer_keys = {key.description for key in app.screen.query("FooterKey")}
        assert "Preset" not in footer_keys and "Help" in footer_keys


async def test_every_screens_footer_fits_80_columns_and_the_bar_shows_the_palette_key(tui_env):
    """Each screen's footer keys lie whole within 80 columns (none cut at the edge); the
    palette's key, not in the footer, is in the top bar instead."""
    app = FinetuiApp()
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot, app)
        assert SIZE[0] == 80
        for entry in SCREEN_TABLE:
            app.screen.set_focus(None)
            await pilot.press(entry.key)
            await settle(pilot, app)
            keys = list(app.screen.query("FooterKey"))
            assert len(keys) >= 3, entry.mode
            cut = [k.description for k in keys if k.region.right > SIZE[0] or k.region.width == 0]
            assert not cut, (entry.mode, cut)
            assert "Palette" not in {k.description for k in keys}
            assert "^p palette" in text_of(app.screen.query_one("ScreenBar")), entry.mode


async def test_palette_switches_screen_and_offers_screen_commands(tui_env):
    app = FinetuiApp()
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot, app)
        await pilot.press("ctrl+p")
        await pilot.pause()
        assert isinstance(app.screen, CommandPalette)
        await type_text(pilot, "go to runs")
        await settle(pilot, app)
        await pilot.press("enter")
        await settle(pilot, app)
        assert app.current_mode == "runs"
        # On Settings the palette offers the Settings commands (presets, load/save, start).
        await pilot.press("s", "ctrl+p")
        await settle(pilot, app)
        await type_text(pilot, "preset cpu")
        await settle(pilot, app)
        await pilot.press("enter")
        await settle(pilot, app)
        assert app.settings_state.origin == "preset cpu_demo_tiny"


async def test_switch_theme_from_palette_and_it_persists(tui_env):
    app = FinetuiApp()
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot, app)
        assert app.theme == "finetui"
        assert {"finetui", "finetui-light", "phosphor"} <= set(app.available_themes)
        await pilot.press("ctrl+p")
        await pilot.pause()
        await type_text(pilot, "theme: phosphor")
        await settle(pilot, app)
        await pilot.press("enter")
        await settle(pilot, app)
        assert app.theme == "phosphor"
    saved = yaml.safe_load((user_config_dir(tui_env) / "config.yaml").read_text())
    assert saved["theme"] == "phosphor"
    app = FinetuiApp()
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot, app)
        assert app.theme == "phosphor"


async def test_remap_keys_from_the_config_file(tui_env):
    (user_config_dir(tui_env) / "config.yaml").write_text(
        "keys:\n  app.screen_settings: f2\n  app.screen_runs: f3\n  settings.preview: ctrl+y\n")
    app = FinetuiApp()
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot, app)
        await pilot.press("f3")
        await settle(pilot, app)
        assert app.current_mode == "runs"
        await pilot.press("s")  # no longer bound
        await pilot.pause()
        assert app.current_mode == "runs"
        await pilot.press("f2")
        await settle(pilot, app)
        assert app.current_mode == "settings"
        await pilot.press("ctrl+y")
        await settle(pilot, app)
        assert app.screen.query_one("#switcher").current == "preview"
        assert " f2 Settings" in text_of(app.screen.query_one("ScreenBar"))
        assert not [n for n in notifications(app) if "keys" in n]


async def test_remap_from_toml_and_unknown_ids_are_reported(tui_env):
    (user_config_dir(tui_env) / "config.toml").write_text(
        '[keys]\n"app.screen_runs" = "f3"\n"app.screen_setings" = "f2"\n')
    app = FinetuiApp()
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot, app)
        await pilot.press("f3")
        await settle(pilot, app)
        assert app.current_mode == "runs"
        problems = [n for n in notifications(app) if "app.screen_setings" in n]
        assert problems and "did you mean app.screen_settings" in problems[0]
        assert "config.toml" in problems[0]


async def test_help_lists_every_binding(tui_env):
    (user_config_dir(tui_env) / "config.yaml").write_text("keys:\n  app.screen_eval: f9\n")
    app = FinetuiApp()
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot, app)
        await pilot.press("question_mark")
        await pilot.pause()
        assert isinstance(app.screen, HelpScreen)
        shown = text_of(app.screen.query_one("#help-table"))
        for binding_id in app.known_binding_ids():
            assert binding_id in shown, binding_id
        eval_line = next(line for line in shown.splitlines() if "app.screen_eval" in line)
        assert "f9" in eval_line
        await pilot.press("escape")
        await pilot.pause()
        assert not isinstance(app.screen, HelpScreen)


def test_every_finetui_binding_has_an_id():
    from finetui.tui.screens import datasets
    from finetui.tui.widgets import columnmap, dialogs, fieldform, pathinput, rowtable

    classes = [FinetuiApp, HelpScreen, fieldform.FieldRow, fieldform.RowEditor, fieldform.SettingsForm,
               pathinput.PathInput, dialogs.PathDialog, dialogs.PickDialog, dialogs.ConfirmDialog,
               rowtable.RowTable, datasets.SearchInput, columnmap.ColumnMapDialog]
    classes += [screen_class(e) for e in SCREEN_TABLE]
    for cls in classes:
        for binding in keymap._as_bindings(cls.__dict__.get("BINDINGS", [])):
            assert isinstance(binding, Binding) and binding.id, f"{cls.__name__}: {binding.key} has no id"


async def test_invalid_theme_file_falls_back_to_default_with_a_notice(tui_env):
    folder = user_config_dir(tui_env)
    (folder / "themes").mkdir()
    (folder / "themes" / "broken.yaml").write_text("name: broken\nprimary: notacolour\n")
    (folder / "themes" / "mine.yaml").write_text("name: mine\nprimary: '#ff0000'\ndark: true\n")
    (folder / "config.yaml").write_text("theme: broken\n")
    app = FinetuiApp()
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot, app)
        assert app.theme == "finetui"
        assert "mine" in app.available_themes  # user themes load next to the built-ins
        notes = notifications(app)
        assert any("broken.yaml" in n and "primary" in n and "not a colour" in n for n in notes)
        assert any("'broken'" in n and "using finetui" in n for n in notes)
    # The broken choice is not overwritten behind the user's back.
    assert "theme: broken" in (folder / "config.yaml").read_text()


async def test_broken_user_config_is_reported_and_left_alone(tui_env):
    path = user_config_dir(tui_env) / "config.yaml"
    path.write_text("theme: phosphor\nkeys: [oops\n")
    app = FinetuiApp()
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot, app)
        assert app.theme == "finetui"
        assert any("config.yaml:3" in n and "invalid YAML" in n for n in notifications(app))
        app.theme = "phosphor"
        await settle(pilot, app)
        assert any("theme not remembered" in n for n in notifications(app))
    assert path.read_text() == "theme: phosphor\nkeys: [oops\n"


def test_builtin_themes_parse_and_bad_fields_are_named(tmp_path):
    found, files, problems = themes.load_all(None)
    assert not problems
    assert {"finetui", "finetui-light", "phosphor"} <= set(found)
    assert themes.DEFAULT_THEME == "finetui"
    for data, message in [
        ({"name": "x"}, "missing primary"),
        ({"name": "x", "primary": "#fff", "colour": "red"}, "unknown key 'colour'"),
        ({"name": "x", "primary": "#fff", "dark": "yes"}, "dark: expected true or false"),
        ([1, 2], "must be a mapping"),
    ]:
        try:
            themes.parse(data, "t.yaml")
        except themes.ThemeError as exc:
            assert message in str(exc) and "t.yaml" in str(exc)
        else:
            raise AssertionError(f"{data} accepted")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nprimary: [\n")
    try:
        themes.load_file(bad)
    except themes.ThemeError as exc:
        assert "bad.yaml:" in str(exc) and "invalid YAML" in str(exc)


def test_user_config_round_trips_yaml_and_toml(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    assert userconfig.load().path == tmp_path / "finetui" / "config.yaml"
    userconfig.save_setting("theme", "phosphor")
    assert userconfig.load().theme == "phosphor"
    (tmp_path / "finetui" / "config.yaml").unlink()
    toml = tmp_path / "finetui" / "config.toml"
    toml.write_text('[keys]\n"app.quit" = "ctrl+q"\n')
    userconfig.save_setting("theme", "finetui-light")
    loaded = userconfig.load()
    assert loaded.path == toml and loaded.theme == "finetui-light" and loaded.keys == {"app.quit": "ctrl+q"}
