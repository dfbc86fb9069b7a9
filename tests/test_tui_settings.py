"""Settings screen, driven by keyboard through Textual's Pilot at 80x24."""

from __future__ import annotations

import json

import pytest
import yaml
from tui_helpers import SIZE, notifications, record_launches, settle, text_of, tui_env, type_text, wait_until  # noqa: F401

from finetui.engine import config as cfg
from finetui.engine import footprint
from finetui.engine.units import format_bytes
from finetui.tui.app import FinetuiApp
from finetui.tui.screens.settings import SettingsScreen
from finetui.tui.widgets.dialogs import ConfirmDialog, PathDialog, PickDialog
from finetui.tui.widgets.fieldform import FieldRow, RowEditor, RowError, SettingsForm
from finetui.tui.widgets.modelpicker import ModelPicker


async def open_settings(pilot, app) -> None:
    """The app opens on Datasets; s goes to Settings."""
    await settle(pilot, app)
    await pilot.press("s")
    await settle(pilot, app)
    assert isinstance(app.screen, SettingsScreen)


async def goto_field(pilot, app, key: str) -> FieldRow:
    """Walk the form with j until ``key`` has focus (the way a user would)."""
    form = app.screen.query_one(SettingsForm)
    keys = [r.key for r in form.rows]
    sections = [k.split(".")[0] for k in keys]
    target_section = key.split(".")[0]
    for _ in range(len(set(sections))):  # jump by section first ([ and ])
        row = app.screen.focused
        here = row.key.split(".")[0] if isinstance(row, FieldRow) else sections[0]
        if here == target_section:
            break
        await pilot.press("right_square_bracket" if sections.index(target_section) > sections.index(here)
                          else "left_square_bracket")
        if sections.index(target_section) < sections.index(here):
            continue
    for _ in range(len(form.rows) + 1):
        row = app.screen.focused
        if isinstance(row, FieldRow) and row.key == key:
            return row
        here = keys.index(row.key) if isinstance(row, FieldRow) else 0
        await pilot.press("j" if keys.index(key) > here else "k")
    raise AssertionError(f"never reached {key}")


async def edit(pilot, app, key: str, text: str) -> FieldRow:
    row = await goto_field(pilot, app, key)
    await pilot.press("enter")
    assert isinstance(app.focused, RowEditor)
    await pilot.press("ctrl+a", "ctrl+k")  # home, delete to the end
    await type_text(pilot, text)
    await pilot.press("enter")
    await pilot.pause()
    return row


async def test_opens_on_tiny_model_and_sample_data(tui_env):
    app = FinetuiApp()
    async with app.run_test(size=SIZE) as pilot:
        await open_settings(pilot, app)
        assert isinstance(app.screen, SettingsScreen)
        config = app.settings_state.config
        assert config.model.name_or_path == "tiny"
        assert config.data.path == "sample:finetui_faq"
        assert isinstance(app.focused, FieldRow) and app.focused.key == "model.name_or_path"
        # Every schema field has a row, with its help text shown when focused.
        form = app.screen.query_one(SettingsForm)
        assert [r.key for r in form.rows] == [s["key"] for s in cfg.field_specs()]
        assert "built-in 0.3M demo model" in text_of(app.screen.query_one("#help"))
        footprint = text_of(app.screen.query_one("#footprint"))
        assert "tiny" in footprint and "params" in footprint and "est." in footprint


async def test_invalid_value_is_refused_inline_then_valid_value_accepted(tui_env):
    app = FinetuiApp()
    async with app.run_test(size=SIZE) as pilot:
        await open_settings(pilot, app)
        before = app.settings_state.config.train.batch_size
        row = await edit(pilot, app, "train.batch_size", "0")
        errors = [text_of(e) for e in app.screen.query(RowError)]
        assert len(errors) == 1
        assert "train.batch_size" in errors[0] and "greater than or equal to 1" in errors[0]
        assert app.settings_state.config.train.batch_size == before  # refused: nothing changed
        # The same words as the CLI's --set.
        try:
            cfg.validate(cfg.apply_overrides(app.settings_state.config.to_dict(), ["train.batch_size=0"]))
        except cfg.ConfigError as exc:
            assert str(exc) in errors[0]
        # Still editing: fix it.
        assert isinstance(app.focused, RowEditor)
        await pilot.press("backspace")
        await type_text(pilot, "4")
        await pilot.press("enter")
        await settle(pilot, app)
        assert app.settings_state.config.train.batch_size == 4
        assert not list(app.screen.query(RowError))
        assert app.focused is row and row.changed
        assert "1 changed" in text_of(app.screen.query_one("#origin"))
        assert "bs 4" in text_of(app.screen.query_one("#footprint"))


async def test_text_garbage_and_yaml_fields(tui_env):
    app = FinetuiApp()
    async with app.run_test(size=SIZE) as pilot:
        await open_settings(pilot, app)
        await edit(pilot, app, "train.learning_rate", "fast")
        assert "train.learning_rate" in text_of(app.screen.query_one(RowError))
        await pilot.press("escape")  # cancel the edit
        await pilot.pause()
        assert not list(app.screen.query(RowError)) and isinstance(app.focused, FieldRow)
        await edit(pilot, app, "method.target_modules", "[q_proj, v_proj]")
        assert app.settings_state.config.method.target_modules == ["q_proj", "v_proj"]


async def test_choice_fields_cycle_and_cross_field_rules_are_explained(tui_env):
    app = FinetuiApp()
    async with app.run_test(size=SIZE) as pilot:
        await open_settings(pilot, app)
        assert app.settings_state.config.method.type == "full"
        await goto_field(pilot, app, "model.quantization")
        await pilot.press("l")  # none -> 4bit: impossible with full fine-tuning
        await pilot.pause()
        error = text_of(app.screen.query_one(RowError))
        assert "full fine-tuning cannot update quantised weights" in error
        assert app.settings_state.config.model.quantization == "none"
        await goto_field(pilot, app, "method.type")
        await pilot.press("l")  # full -> lora
        await pilot.pause()
        assert app.settings_state.config.method.type == "lora"
        await pilot.press("x")  # back to the default (lora) stays lora
        await pilot.pause()
        assert app.settings_state.config.method.type == "lora"


async def test_save_and_reload_yaml(tui_env):
    app = FinetuiApp()
    target = tui_env / "work" / "mine.yaml"
    async with app.run_test(size=SIZE) as pilot:
        await open_settings(pilot, app)
        await edit(pilot, app, "train.batch_size", "4")
        await pilot.press("w")
        await pilot.pause()
        assert isinstance(app.screen, PathDialog)
        await pilot.press("ctrl+a", "ctrl+k")
        await type_text(pilot, "mine.yaml")
        await pilot.press("enter")
        await settle(pilot, app)
        assert isinstance(app.screen, SettingsScreen)
        saved = yaml.safe_load(target.read_text())
        assert saved["train"]["batch_size"] == 4
        assert cfg.load(target) == app.settings_state.config
        assert "mine.yaml" in text_of(app.screen.query_one("#origin"))

        await edit(pilot, app, "train.batch_size", "2")
        assert app.settings_state.config.train.batch_size == 2
        await pilot.press("o")
        await pilot.pause()
        await pilot.press("ctrl+a", "ctrl+k")
        await type_text(pilot, "mine.yaml")
        await pilot.press("enter")
        await settle(pilot, app)
        assert isinstance(app.screen, SettingsScreen)
        assert app.settings_state.config.train.batch_size == 4
        assert "unchanged" in text_of(app.screen.query_one("#origin"))

        # Saving over an existing file asks first.
        await pilot.press("w")
        await pilot.pause()
        await pilot.press("enter")
        await pilot.pause()
        assert "exists" in text_of(app.screen.query_one("#error"))
        await pilot.press("enter")
        await pilot.pause()
        assert isinstance(app.screen, SettingsScreen)


async def test_bad_files_show_the_place_and_keep_the_settings(tui_env):
    work = tui_env / "work"
    (work / "broken.yaml").write_text("train:\n  batch_size: 4\n  epochs: [1,\n")
    (work / "range.yaml").write_text("model:\n  name_or_path: tiny\ntrain:\n  batch_size: -3\n")
    app = FinetuiApp()
    async with app.run_test(size=SIZE) as pilot:
        await open_settings(pilot, app)
        await edit(pilot, app, "train.batch_size", "3")
        for name, expected in [
            ("missing.yaml", "missing.yaml: no such config file"),
            ("broken.yaml", "broken.yaml:4: invalid YAML"),
            ("range.yaml", "range.yaml:4: train.batch_size: Input should be greater than or equal to 1"),
        ]:
            await pilot.press("o")
            await pilot.pause()
            await pilot.press("ctrl+a", "ctrl+k")
            await type_text(pilot, name)
            await pilot.press("enter")
            await pilot.pause()
            assert isinstance(app.screen, PathDialog), name  # stays open to retry
            assert expected in text_of(app.screen.query_one("#error")), name
            await pilot.press("escape")
            await pilot.pause()
            assert isinstance(app.screen, SettingsScreen)
            assert app.settings_state.config.train.batch_size == 3  # kept
        # Saving into a folder that cannot be written is explained too.
        await pilot.press("w")
        await pilot.pause()
        await pilot.press("ctrl+a", "ctrl+k")
        await type_text(pilot, "/proc/nope/x.yaml")
        await pilot.press("enter")
        await pilot.pause()
        assert "cannot write" in text_of(app.screen.query_one("#error"))
        await pilot.press("escape")


async def test_preview_shows_yaml_and_equivalent_command(tui_env):
    app = FinetuiApp()
    async with app.run_test(size=SIZE) as pilot:
        await open_settings(pilot, app)
        await edit(pilot, app, "train.batch_size", "4")
        await edit(pilot, app, "data.max_length", "256")
        await pilot.press("v")
        await settle(pilot, app)
        shown = text_of(app.screen.query_one("#preview-text"))
        command = "finetui train sample_data/quickstart.yaml --set data.max_length=256 --set train.batch_size=4"
        assert command.split("sample_data/")[1] in shown
        assert "batch_size: 4" in shown and "max_length: 256" in shown
        assert "parameters" in shown and "memory" in shown
        # The command really reproduces the settings.
        state = app.settings_state
        rebuilt = cfg.load(state.base_path, state.overrides())
        assert rebuilt == state.config
        await pilot.press("v")
        await pilot.pause()
        assert isinstance(app.focused, FieldRow)


async def test_preset_picker_loads_a_preset(tui_env):
    app = FinetuiApp()
    async with app.run_test(size=SIZE) as pilot:
        await open_settings(pilot, app)
        await pilot.press("p")
        await pilot.pause()
        assert isinstance(app.screen, PickDialog)
        names = [item[0] for item in app.screen.items]
        assert "cpu_demo_tiny" in names
        await pilot.press(*["down"] * names.index("cpu_demo_tiny"), "enter")
        await settle(pilot, app)
        assert isinstance(app.screen, SettingsScreen)
        assert app.settings_state.origin == "preset cpu_demo_tiny"
        assert app.settings_state.base_path.name == "cpu_demo_tiny.yaml"


async def test_start_launches_a_run_and_keeps_its_process(tui_env, monkeypatch):
    launched = record_launches(monkeypatch)
    app = FinetuiApp()
    async with app.run_test(size=SIZE) as pilot:
        await open_settings(pilot, app)
        await pilot.press("g")
        await pilot.pause()
        assert isinstance(app.screen, ConfirmDialog)
        body = text_of(app.screen.query_one("VerticalScroll Static"))
        assert "finetui train" in body and "parameters" in body and "memory" in body
        await pilot.press("enter")
        # Not settle(): the Runs screen may keep a worker following the run.
        await wait_until(pilot, lambda: app.run_processes, 10, "the run to start", step=0.05)
        assert len(launched) == 1
        run_id = launched[0].name
        assert run_id in app.run_processes
        assert (tui_env / "runs" / run_id / "config.yaml").exists()
        assert any(run_id in n for n in notifications(app))
        await pilot.pause(0.1)
        assert app.current_mode == "runs"
        app.run_processes[run_id].wait()


async def test_start_refuses_a_missing_data_file(tui_env, monkeypatch):
    from finetui.engine import runs

    monkeypatch.setattr(runs, "launch", lambda *a, **k: (_ for _ in ()).throw(AssertionError("launched")))
    app = FinetuiApp()
    async with app.run_test(size=SIZE) as pilot:
        await open_settings(pilot, app)
        await edit(pilot, app, "data.path", "./nowhere.jsonl")
        await pilot.press("g")
        await pilot.pause()
        assert isinstance(app.screen, ConfirmDialog)
        assert "data.path: ./nowhere.jsonl: no such file or folder" in text_of(app.screen.query_one(".dialog-error"))
        await pilot.press("enter")
        await pilot.pause()
        assert isinstance(app.screen, ConfirmDialog)
        await pilot.press("escape")
        await pilot.pause()
        assert not app.run_processes


async def test_unknown_model_folder_is_named_in_the_footprint(tui_env):
    app = FinetuiApp()
    async with app.run_test(size=SIZE) as pilot:
        await open_settings(pilot, app)
        await edit(pilot, app, "model.name_or_path", "./no-model-here")
        await settle(pilot, app)
        assert "model.name_or_path: ./no-model-here: no such folder" in text_of(app.screen.query_one("#footprint"))


# ---------------------------------------------------------------------------- model picker

SMALL_LLAMA = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
               "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 1000,
               "tie_word_embeddings": False, "torch_dtype": "float32"}


@pytest.fixture
def model_cache(tui_env, monkeypatch):
    """An empty finetui cache and a Hugging Face cache holding one model, both private, plus
    one converted GGUF file: what the picker finds does not depend on this machine."""
    cache = tui_env / "finetui-cache"
    hub = tui_env / "hf" / "hub"
    monkeypatch.setenv("FINETUI_CACHE", str(cache))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tui_env / "xdg-cache"))
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    for name in ("HF_HOME", "TRANSFORMERS_CACHE"):
        monkeypatch.delenv(name, raising=False)
    snapshot = hub / "models--acme--mini-llama" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text(json.dumps(SMALL_LLAMA))
    (hub / "models--acme--mini-llama" / "refs").mkdir()
    (hub / "models--acme--mini-llama" / "refs" / "main").write_text("abc123")
    converted = cache / "models" / "gguf-old-0123456789abcdef"
    converted.mkdir(parents=True)
    (converted / "config.json").write_text(json.dumps({**SMALL_LLAMA, "num_hidden_layers": 4}))
    (converted / "finetui_source.json").write_text(json.dumps({"gguf_file": "/gone/old.gguf"}))
    return tui_env


def option_lines(app) -> list[str]:
    return [str(option.prompt) for option in app.screen.query_one("OptionList").options]


async def open_picker(pilot, app) -> None:
    await open_settings(pilot, app)
    await pilot.press("m")
    await settle(pilot, app)
    assert isinstance(app.screen, ModelPicker)


def params_of(config: dict) -> str:
    return footprint.human_count(footprint.count_params(footprint.Architecture.from_config(config)).total)


async def test_model_picker_lists_models_with_size_and_estimate(model_cache):
    app = FinetuiApp()
    async with app.run_test(size=SIZE) as pilot:
        await open_picker(pilot, app)
        lines = option_lines(app)
        tiny = next(line for line in lines if line.split()[:2] in (["●", "tiny"], ["tiny"]))
        smollm2 = next(line for line in lines if "smollm2" in line)
        tiny_params = params_of(footprint.read_model_config("tiny")[0])
        assert tiny_params in tiny and "ready" in tiny and "●" in tiny  # the current model
        assert "135M" in smollm2 and "fetched on first use (92.9 MB)" in smollm2
        # Each row's memory column is the estimate of these settings with that model in it.
        config = app.settings_state.config.to_dict()
        config["model"]["name_or_path"] = "smollm2"
        gpu = bool(app.screen_stack[-2].probe_gpus())
        assert format_bytes(footprint.estimate(config, gpu=gpu).total_bytes) in smollm2
        # Hub-cache models and converted GGUF files come from the same list.
        hub = next(line for line in lines if "acme/mini-llama" in line)
        assert params_of(SMALL_LLAMA) in hub
        gguf = next(line for line in lines if "old.gguf" in line)
        assert params_of({**SMALL_LLAMA, "num_hidden_layers": 4}) in gguf
        assert "other" in lines[-1]
        # The highlighted model is described under the list.
        assert "fast demo" in text_of(app.screen.query_one("#model-detail"))
        await pilot.press("escape")
        await pilot.pause()
        assert isinstance(app.screen, SettingsScreen)
        assert app.settings_state.config.model.name_or_path == "tiny"


async def test_model_picker_sets_smollm2_and_the_estimate_follows(model_cache):
    app = FinetuiApp()
    async with app.run_test(size=SIZE) as pilot:
        await open_settings(pilot, app)
        before = text_of(app.screen.query_one("#footprint"))
        assert before.startswith("tiny")
        await goto_field(pilot, app, "train.batch_size")  # m works from any row
        await pilot.press("m")
        await settle(pilot, app)
        assert isinstance(app.screen, ModelPicker)
        lines = option_lines(app)
        await pilot.press(*["down"] * next(i for i, line in enumerate(lines) if "smollm2" in line))
        await pilot.pause()
        assert "SmolLM2-135M-Instruct" in text_of(app.screen.query_one("#model-detail"))
        await pilot.press("enter")
        await settle(pilot, app)
        assert isinstance(app.screen, SettingsScreen)
        assert app.settings_state.config.model.name_or_path == "smollm2"
        row = app.screen.query_one(SettingsForm).by_key["model.name_or_path"]
        assert app.focused is row and row.changed and row.value == "smollm2"
        after = text_of(app.screen.query_one("#footprint"))
        assert after != before and after.startswith("smollm2 135M params")
        assert "--set model.name_or_path=smollm2" in app.settings_state.train_command()


async def test_model_picker_takes_a_typed_gguf_path(model_cache, monkeypatch):
    from finetui.engine import runs

    monkeypatch.setattr(runs, "launch", lambda *a, **k: (_ for _ in ()).throw(AssertionError("launched")))
    gguf = model_cache / "work" / "my-model.Q4_K_M.gguf"
    gguf.write_bytes(b"GGUF")
    app = FinetuiApp()
    async with app.run_test(size=SIZE) as pilot:
        await open_picker(pilot, app)
        await pilot.press("tab")  # to the path field
        await pilot.pause()
        await type_text(pilot, "./nowhere.gguf")
        await pilot.press("enter")
        await pilot.pause()
        assert isinstance(app.screen, ModelPicker)  # refused; the dialog stays
        assert "./nowhere.gguf: no such file or folder" in text_of(app.screen.query_one("#error"))
        await pilot.press("ctrl+a", "ctrl+k")
        await type_text(pilot, "./my-")
        await pilot.pause()
        await pilot.press("tab")  # completes the file name
        await pilot.pause()
        await pilot.press("enter")
        await settle(pilot, app)
        assert isinstance(app.screen, SettingsScreen)
        assert app.settings_state.config.model.name_or_path == "./my-model.Q4_K_M.gguf"
        # Not converted yet: no estimate, which does not stop a run (the run converts it).
        assert "not converted yet" in text_of(app.screen.query_one("#footprint"))
        await pilot.press("g")
        await pilot.pause()
        assert isinstance(app.screen, ConfirmDialog)
        assert not list(app.screen.query(".dialog-error"))
        await pilot.press("escape")
        await pilot.pause()
        # Opening the picker again offers the typed path back.
        await pilot.press("m")
        await settle(pilot, app)
        assert app.screen.query_one("#model-input").value == "./my-model.Q4_K_M.gguf"
        assert app.screen.query_one("OptionList").highlighted == len(option_lines(app)) - 1


async def test_kernels_is_a_choice_the_keyboard_switches(tui_env):
    """train.kernels (engine/perf): auto or reference, cycled with l/h like every choice."""
    app = FinetuiApp()
    async with app.run_test(size=SIZE) as pilot:
        await open_settings(pilot, app)
        assert app.settings_state.config.train.kernels == "auto"
        row = await goto_field(pilot, app, "train.kernels")
        assert list(row.spec["choices"]) == ["auto", "reference"]
        await pilot.press("l")
        await pilot.pause()
        assert app.settings_state.config.train.kernels == "reference"
        await pilot.press("h")
        await pilot.pause()
        assert app.settings_state.config.train.kernels == "auto"
