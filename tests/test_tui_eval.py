"""Eval screen, by keyboard through Textual's Pilot at 80x24: saved results (metrics, the
browsable table, one example in detail), `finetui eval` and `finetui merge` run as
subprocesses from the UI with their progress, and the faults (no runs, no held-out split,
no adapter, a stopped job). The run is a real tiny LoRA run trained once per session."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import yaml
from tui_helpers import (  # noqa: F401
    SIZE, copy_run, notifications, settle, text_of, trained_run, tui_env, type_text, wait_until,
)

from finetui.tui.app import FinetuiApp
from finetui.tui.screens.evaluate import EvalScreen
from finetui.tui.widgets.dialogs import PickDialog
from finetui.tui.widgets.evaldialogs import EvalDialog, ExportDialog, normal_shard_size, shard_size_problem


async def open_eval(pilot, app) -> EvalScreen:
    await settle(pilot, app)
    await pilot.press("e")
    await pilot.pause()
    screen = app.screen
    assert isinstance(screen, EvalScreen)
    await settle(pilot, app)
    return screen


def shown(screen: EvalScreen, widget_id: str) -> str:
    return text_of(screen.query_one(widget_id))


def log_lines(screen: EvalScreen) -> list[str]:
    return screen.log_lines


def fake_results(run_dir: Path, n: int = 30) -> None:
    """Saved results as `finetui eval --compare-base` writes them, labels included."""
    rows = []
    for i in range(n):
        target = "positive" if i % 2 else "negative"
        rows.append({"index": i, "prompt": f"Review {i}: {'great' if i % 2 else 'dull'} film", "target": target,
                     "base": "neutral", "base_match": False, "base_loss": 3.2,
                     "tuned": target if i % 3 else "positive", "tuned_match": bool(i % 3) or target == "positive",
                     "tuned_loss": 0.4, "prompt_text": f"<|im_start|>user\nReview {i}<|im_end|>\n<|im_start|>assistant\n"})
    metrics = {
        "base": {"name": "base", "source": "base", "eval_loss": 3.21, "perplexity": 24.78, "trained_tokens": 60,
                 "exact_match": 0.0, "n_exact": 0, "n_generated": n, "accuracy": 0.0},
        "tuned": {"name": "tuned", "source": "adapter", "eval_loss": 0.4, "perplexity": 1.49, "trained_tokens": 60,
                  "exact_match": 0.8, "n_exact": 24, "n_generated": n, "accuracy": 0.8},
    }
    summary = {"run_id": run_dir.name, "split": "test", "examples": n, "split_size": 40, "limit": n,
               "template": "chatml", "max_new_tokens": 8, "labels": ["negative", "positive"], "metrics": metrics,
               "notes": [], "data_s": 0.1, "total_s": 2.0, "created": time.time()}
    (run_dir / "eval").mkdir(exist_ok=True)
    (run_dir / "eval" / "results.json").write_text(json.dumps(summary))
    (run_dir / "eval" / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


# ---------------------------------------------------------------------------- saved results


async def test_saved_results_metrics_table_and_detail(tui_env, trained_run):
    run_dir = copy_run(trained_run, tui_env / "runs")
    fake_results(run_dir)
    app = FinetuiApp()
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_eval(pilot, app)
        await wait_until(pilot, lambda: screen.rows, 20, "the saved results")
        assert run_dir.name in shown(screen, "#ev-run") and "completed · lora · tiny" in shown(screen, "#ev-run")
        metrics = shown(screen, "#ev-metrics")
        for expected in ("eval loss", "3.2100", "0.4000", "perplexity", "24.78", "exact match", "24/30 (80%)",
                         "accuracy (negative, positive)", "80.0%", "tuned − base", "-2.8100"):
            assert expected in metrics, (expected, metrics)
        table = screen.query_one("#ev-table")
        assert table.row_count == 30 and app.focused is table
        assert [str(c.label) for c in table.columns.values()] == ["#", "prompt", "target", "base out", "tuned out"]

        # Enter opens an example; ←/→ step through; esc goes back to the table.
        await pilot.press(*["down"] * 6, "enter")
        await pilot.pause()
        detail = shown(screen, "#ev-detail-text")
        assert "example 6" in detail and "Review 6: dull film" in detail and "negative" in detail
        assert "base output  ✗ differs  loss 3.2000" in detail and "tuned output  ✗ differs" in detail
        assert "<|im_start|>user" in detail  # the prompt as the model saw it
        await pilot.press("right")
        await pilot.pause()
        assert "example 7" in shown(screen, "#ev-detail-text")
        assert "tuned output  ✓ exact match" in shown(screen, "#ev-detail-text")
        await pilot.press("escape")
        await pilot.pause()
        assert screen.view == "ev-table" and table.cursor_row == 7

        # t: chat with this run (what the dashboard does too).
        await pilot.press("t")
        await pilot.pause()
        assert app.current_mode == "chat" and app.screen.main.target == str(run_dir.resolve())
        app.screen.unload()
        await pilot.pause()


async def test_refusal_rates_are_shown_for_a_moderation_split(tui_env, trained_run):
    run_dir = copy_run(trained_run, tui_env / "runs")
    fake_results(run_dir)
    summary = json.loads((run_dir / "eval" / "results.json").read_text())
    summary["refusal"] = "Let's keep the discussion relevant to finetui."
    summary["metrics"]["base"].update(refusal_rate=0.0, n_refused=0, n_off_topic=10, false_refusal_rate=0.0,
                                      n_false_refusals=0, n_in_domain=20)
    summary["metrics"]["tuned"].update(refusal_rate=0.9, n_refused=9, n_off_topic=10, false_refusal_rate=0.05,
                                       n_false_refusals=1, n_in_domain=20)
    (run_dir / "eval" / "results.json").write_text(json.dumps(summary))
    app = FinetuiApp()
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_eval(pilot, app)
        await wait_until(pilot, lambda: screen.rows, 20, "the saved results")
        metrics = shown(screen, "#ev-metrics")
        for expected in ("refusals, off-topic", "0/10 (0%)", "9/10 (90%)", "+90%", "false refusals", "1/20 (5%)"):
            assert expected in metrics, (expected, metrics)


# ---------------------------------------------------------------------------- subprocesses


async def test_evaluate_then_export_from_the_ui(tui_env, finetui_cache, trained_run):
    run_dir = copy_run(trained_run, tui_env / "runs")
    app = FinetuiApp()
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_eval(pilot, app)
        await wait_until(pilot, lambda: screen.run_dir is not None, 20)
        assert "No evaluation yet" in shown(screen, "#ev-metrics")

        # g: the options dialog; a bad limit is refused; 3 examples with the base model.
        await pilot.press("g")
        await pilot.pause()
        assert isinstance(app.screen, EvalDialog)
        await type_text(pilot, "x")
        await pilot.press("enter")
        await pilot.pause()
        assert "not a whole number" in text_of(app.screen.query_one("#error"))
        await pilot.press("backspace", "3", "enter")
        await pilot.pause()
        assert isinstance(app.screen, EvalScreen) and screen.job is not None
        assert screen.view == "ev-log" and "evaluating" in shown(screen, "#ev-status")
        assert screen.job.command[-4:] == ["64", "--compare-base", "--limit", "3"]
        await wait_until(pilot, lambda: screen.job is None, 300, "the evaluation")

        lines = log_lines(screen)
        assert any(line.startswith("· tuned: loss on 3 examples") for line in lines), lines  # live progress
        assert any(line.startswith("· base: generating 3 replies") for line in lines), lines
        assert screen.view == "ev-table" and screen.query_one("#ev-table").row_count == 3
        assert "evaluated 3 examples" in shown(screen, "#ev-status")
        metrics = shown(screen, "#ev-metrics")
        assert "base" in metrics and "tuned" in metrics and "perplexity" in metrics and "/3 (" in metrics
        saved = json.loads((run_dir / "eval" / "results.json").read_text())
        assert saved["examples"] == 3 and set(saved["metrics"]) == {"base", "tuned"}
        assert f"{saved['metrics']['tuned']['eval_loss']:.4f}" in metrics

        # x: export. A bad shard size is refused; a small one makes several shards.
        await pilot.press("x")
        await pilot.pause()
        assert isinstance(app.screen, ExportDialog)
        assert app.screen.query_one("#out").value.endswith(f"{run_dir.name}/merged")
        await pilot.press("ctrl+a", "ctrl+k")
        await type_text(pilot, "exported")
        await pilot.press("tab", "ctrl+a", "ctrl+k")
        await type_text(pilot, "lots")
        await pilot.press("enter")
        await pilot.pause()
        assert "a whole number and a unit" in text_of(app.screen.query_one("#error"))
        await pilot.press("ctrl+a", "ctrl+k")
        await type_text(pilot, "300kb")
        await pilot.press("enter")
        await pilot.pause()
        assert isinstance(app.screen, EvalScreen) and screen.job is not None and screen.job.kind == "merge"
        assert screen.job.command[-2:] == ["--shard-size", "300KB"]
        await wait_until(pilot, lambda: screen.job is None, 300, "the merge")
        out = tui_env / "work" / "exported"
        assert (out / "config.json").exists() and (out / "model.safetensors.index.json").exists()
        assert len(list(out.glob("*.safetensors"))) > 1
        lines = log_lines(screen)
        assert "[ 60%] merging" in lines and "[100%] done" in lines
        assert any(line.startswith(f"merged model: {out}") for line in lines)
        assert f"exported to {out}" in shown(screen, "#ev-status")
        assert any(f"merged model in {out}" in n for n in notifications(app))

        # Exporting into a folder that is not empty asks for a second enter.
        await pilot.press("x")
        await pilot.pause()
        await pilot.press("ctrl+a", "ctrl+k")
        await type_text(pilot, "exported")
        await pilot.press("enter")
        await pilot.pause()
        assert "is not empty" in text_of(app.screen.query_one("#error"))
        await pilot.press("escape")
        await pilot.pause()
        assert screen.job is None


async def test_faults_no_runs_no_split_no_adapter_and_stop(tui_env, finetui_cache, trained_run):
    app = FinetuiApp()
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_eval(pilot, app)
        assert "no runs yet" in shown(screen, "#ev-run")
        await pilot.press("g")
        await pilot.pause()
        assert isinstance(app.screen, EvalScreen) and "no run to evaluate" in shown(screen, "#ev-status")

        # A run trained without a held-out split: the evaluator's own words, UI alive.
        no_split = copy_run(trained_run, tui_env / "runs", "20200101-000000-nosplit")
        config = yaml.safe_load((no_split / "config.yaml").read_text())
        config["data"]["test_size"] = 0
        config["data"]["test_path"] = None
        (no_split / "config.yaml").write_text(yaml.safe_dump(config))
        good = copy_run(trained_run, tui_env / "runs", "20200101-000001-good")
        await pilot.press("o")
        await wait_until(pilot, lambda: isinstance(app.screen, PickDialog), 20)
        await pilot.press("down", "enter")  # newest first: good, then nosplit
        await wait_until(pilot, lambda: screen.run_dir is not None and screen.run_dir.name == no_split.name, 20)
        await pilot.press("g")
        await pilot.pause()
        await pilot.press("enter")
        await wait_until(pilot, lambda: screen.job is None, 300, "the failing evaluation")
        assert "eval failed" in shown(screen, "#ev-status") and "has no held-out split" in shown(screen, "#ev-status")
        assert any("Evaluation failed" in n and "--split train" in n for n in notifications(app))
        assert "No evaluation yet" in shown(screen, "#ev-metrics")

        # A run without an adapter cannot be exported.
        shutil.rmtree(no_split / "adapter")
        await pilot.press("x")
        await pilot.pause()
        assert isinstance(app.screen, EvalScreen) and f"no adapter/ in run {no_split.name}" in shown(screen, "#ev-status")

        # S stops a running evaluation (its process group is signalled).
        app.eval_target = good.name
        app.action_goto("chat")  # leave and come back: the screen takes the handed-over run
        await pilot.pause()
        app.action_goto("eval")
        await pilot.pause()
        await wait_until(pilot, lambda: screen.run_dir is not None and screen.run_dir.name == good.name, 20)
        assert getattr(app, "eval_target", None) is None
        await pilot.press("g")
        await pilot.pause()
        await pilot.press("enter")
        await wait_until(pilot, lambda: screen.job is not None and screen.job.proc is not None, 20)
        proc = screen.job.proc
        await pilot.press("S")
        await wait_until(pilot, lambda: screen.job is None, 60, "the stop")
        assert proc.poll() is not None
        assert "eval stopped" in shown(screen, "#ev-status")
        assert not (good / "eval" / "results.json").exists()


def test_shard_sizes():
    assert shard_size_problem("2GB") is None and shard_size_problem("500 mb") is None
    assert shard_size_problem("4GiB") is None
    assert shard_size_problem("1.5GB") and shard_size_problem("lots") and shard_size_problem("0MB")
    assert normal_shard_size("500 mb") == "500MB" and normal_shard_size("4gib") == "4GiB"
