"""The PEFT family and the trackers in the Settings form, by keyboard at 80x24: DoRA,
rsLoRA, the LoRA initialisation, LoRA+, NEFTune and train.report_to are rows like any
other, and a combination peft cannot do is refused in the row, naming the settings."""

from __future__ import annotations

import importlib.util

import pytest
from test_tui_settings import edit, goto_field, open_settings
from tui_helpers import SIZE, settle, text_of, tui_env  # noqa: F401

from finetui.tui.app import FinetuiApp
from finetui.tui.widgets.dialogs import ConfirmDialog
from finetui.tui.widgets.fieldform import RowError


def on_screen(app, row) -> bool:
    region = row.region
    return region.height > 0 and 0 <= region.y < SIZE[1] and region.right <= SIZE[0]


async def test_peft_variants_by_keyboard(tui_env):
    app = FinetuiApp()
    async with app.run_test(size=SIZE) as pilot:
        await open_settings(pilot, app)
        config = lambda: app.settings_state.config  # noqa: E731
        row = await goto_field(pilot, app, "method.type")
        while config().method.type != "lora":
            await pilot.press("l")
            await settle(pilot, app)

        row = await goto_field(pilot, app, "method.use_dora")
        assert on_screen(app, row)
        assert "DoRA" in text_of(app.screen.query_one("#help"))
        await pilot.press("space")
        await settle(pilot, app)
        assert config().method.use_dora is True

        await goto_field(pilot, app, "method.use_rslora")
        await pilot.press("space")
        await settle(pilot, app)
        assert config().method.use_rslora is True

        row = await goto_field(pilot, app, "method.init_lora_weights")
        assert on_screen(app, row)
        await pilot.press("l")  # default -> gaussian
        await settle(pilot, app)
        assert config().method.init_lora_weights == "gaussian"
        await pilot.press("l")  # -> pissa, which peft cannot convert back with DoRA on
        await settle(pilot, app)
        assert config().method.init_lora_weights == "gaussian"
        refused = text_of(app.screen.query_one(RowError))
        assert "method.init_lora_weights: pissa with method.use_dora" in refused

        await edit(pilot, app, "method.loraplus_lr_ratio", "16")
        await settle(pilot, app)
        assert config().method.loraplus_lr_ratio == 16.0

        await edit(pilot, app, "train.neftune_noise_alpha", "5")
        await settle(pilot, app)
        assert config().train.neftune_noise_alpha == 5.0

        await edit(pilot, app, "train.report_to", "[tensorboard]")
        await settle(pilot, app)
        assert config().train.report_to == ["tensorboard"]

        # Back to full fine-tuning with DoRA still on: refused, naming both settings
        row = await goto_field(pilot, app, "method.type")
        await pilot.press("h")  # lora -> full
        await settle(pilot, app)
        assert config().method.type == "lora"
        assert "method.use_dora: a LoRA setting, but method.type is full" in row.error
        assert any("method.use_dora: a LoRA setting" in text_of(e) for e in app.screen.query(RowError))


@pytest.mark.skipif(importlib.util.find_spec("wandb") is not None, reason="wandb is installed here")
async def test_start_refuses_a_tracker_that_is_not_installed(tui_env, monkeypatch):
    """Start with train.report_to: [wandb] and no wandb: the start dialog names the setting
    and the pip line, and no run is made."""
    from finetui.engine import runs

    monkeypatch.setattr(runs, "new_run", lambda *a, **k: (_ for _ in ()).throw(AssertionError("run folder made")))
    app = FinetuiApp()
    async with app.run_test(size=SIZE) as pilot:
        await open_settings(pilot, app)
        await edit(pilot, app, "train.report_to", "[wandb]")
        await settle(pilot, app)
        await pilot.press("g")
        await pilot.pause()
        assert isinstance(app.screen, ConfirmDialog)
        error = text_of(app.screen.query_one(".dialog-error"))
        assert "train.report_to: wandb needs the wandb package" in error and "pip install wandb" in error
        await pilot.press("enter")
        await pilot.pause()
        assert isinstance(app.screen, ConfirmDialog)  # Start stays refused
        await pilot.press("escape")
        await pilot.pause()
        assert not app.run_processes
