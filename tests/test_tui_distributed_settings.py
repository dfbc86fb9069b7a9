"""The Settings form's distributed section: strategy and its knobs are choices the
keyboard cycles, and the footprint line shows one GPU's share under fsdp / deepspeed."""

from __future__ import annotations

from test_tui_settings import goto_field, open_settings
from tui_helpers import SIZE, settle, text_of, tui_env  # noqa: F401
from finetui.tui.app import FinetuiApp


async def test_strategy_and_zero_stage_cycle_and_the_footprint_shows_the_share(tui_env):
    app = FinetuiApp()
    async with app.run_test(size=SIZE) as pilot:
        await open_settings(pilot, app)
        assert app.settings_state.config.distributed.strategy == "ddp"
        assert "/GPU" not in text_of(app.screen.query_one("#footprint"))
        row = await goto_field(pilot, app, "distributed.strategy")
        assert list(row.spec["choices"]) == ["ddp", "fsdp", "deepspeed"]
        await pilot.press("l")
        await settle(pilot, app)
        assert app.settings_state.config.distributed.strategy == "fsdp"
        assert "fsdp full_shard ×2" in text_of(app.screen.query_one("#footprint"))
        await pilot.press("l")
        await settle(pilot, app)
        await goto_field(pilot, app, "distributed.zero_stage")
        await pilot.press("l")
        await settle(pilot, app)
        assert app.settings_state.config.distributed.zero_stage == 3
        assert "deepspeed ZeRO-3 ×2" in text_of(app.screen.query_one("#footprint"))
