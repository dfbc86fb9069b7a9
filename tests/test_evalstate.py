"""finetui.tui.evalstate without Textual: the comparison table's rows and deltas, the result
heading, the subprocess command lines, how progress lines are read, and a job run to its
end through a real subprocess."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from finetui.tui import evalstate, jobs
from finetui.tui.evalstate import MetricRow
from finetui.tui.jobs import Job


def result(**extra) -> dict:
    metrics = {
        "base": {"eval_loss": 3.21, "perplexity": 24.78, "exact_match": 0.0, "n_exact": 0, "n_generated": 30,
                 "accuracy": 0.1},
        "tuned": {"eval_loss": 0.4, "perplexity": 1.49, "exact_match": 0.8, "n_exact": 24, "n_generated": 30,
                  "accuracy": 0.8},
    }
    return {"split": "test", "examples": 30, "split_size": 40, "metrics": metrics, **extra}


def test_the_comparison_rows_and_their_deltas():
    rows = evalstate.metric_rows(result())
    assert rows == [
        MetricRow("eval loss", ["3.2100", "0.4000"], "-2.8100"),
        MetricRow("perplexity", ["24.78", "1.49"], "-23.29"),
        MetricRow("exact match", ["0/30 (0%)", "24/30 (80%)"], "+80%"),
    ]
    assert evalstate.models_in(result()) == ["base", "tuned"]


def test_labels_and_refusals_add_rows():
    r = result(labels=["a", "b", "c", "d", "e", "f", "g"], refusal="I cannot help with that.")
    r["metrics"]["base"].update(refusal_rate=0.5, n_refused=2, n_off_topic=4,
                                false_refusal_rate=None)
    r["metrics"]["tuned"].update(refusal_rate=1.0, n_refused=4, n_off_topic=4,
                                 false_refusal_rate=0.25, n_false_refusals=1, n_in_domain=4)
    rows = {row.label: row for row in evalstate.metric_rows(r)}
    assert rows["accuracy (a, b, c, d, e, f …)"] == MetricRow("accuracy (a, b, c, d, e, f …)", ["10.0%", "80.0%"],
                                                              "+70.0%")
    assert rows["refusals, off-topic"] == MetricRow("refusals, off-topic", ["2/4 (50%)", "4/4 (100%)"], "+50%")
    # a value one side lacks: a dash there, and no delta
    assert rows["false refusals"] == MetricRow("false refusals", ["—", "1/4 (25%)"], "")


def test_tuned_alone_has_no_delta_column():
    r = result()
    del r["metrics"]["base"]
    assert evalstate.models_in(r) == ["tuned"]
    rows = evalstate.metric_rows(r)
    assert [row.values for row in rows] == [["0.4000"], ["1.49"], ["24/30 (80%)"]]
    assert all(row.delta == "" for row in rows)
    assert evalstate.models_in(None) == []


def test_heading_and_summary():
    r = result(total_s=12.4)
    assert evalstate.result_heading(r) == "held-out test split · 30 of 40 examples · evaluated ? in 12s"
    r.update(split="validation", split_size=30)
    assert evalstate.result_heading(r).startswith("validation split · 30 examples")
    assert evalstate.eval_summary(r, 7.2) == "evaluated 30 examples in 7s: tuned loss 0.4000, exact match 24/30"


def test_outputs_are_read_from_the_last_line():
    printed = "progress\n" + json.dumps({"examples": 3}) + "\n"
    assert evalstate.parse_eval_output(printed) == {"examples": 3}
    assert evalstate.parse_eval_output("no json here\n{broken") is None
    assert evalstate.merge_output("note\n/x/merged\n\n", Path("/asked")) == Path("/x/merged")
    assert evalstate.merge_output("", Path("/asked")) == Path("/asked")


class Options:
    compare_base = True
    limit = 5
    max_new_tokens = 32


def test_command_lines():
    run = Path("/runs/r1")
    command = evalstate.eval_command(run, Options(), trust_remote_code=False)
    assert command[1:] == ["-m", "finetui.engine.cli", "eval", "/runs/r1", "--json", "--max-new-tokens", "32",
                           "--compare-base", "--limit", "5"]
    Options.compare_base, Options.limit = False, None
    assert evalstate.eval_command(run, Options(), True)[-3:] == ["--max-new-tokens", "32", "--trust-remote-code"]
    merge = evalstate.merge_command(run, Path("/out"), "2GB")
    assert merge[3:] == ["merge", "/runs/r1", "--out", "/out", "--shard-size", "2GB"]
    assert Job("merge", run, merge).shown_command == "$ finetui merge /runs/r1 --out /out --shard-size 2GB"


def test_progress_lines_move_the_stage():
    job = Job("merge", Path("/r"), [])
    assert job.take_line("\x1b[1m· tuned: generating 27 replies\x1b[0m") == ("· tuned: generating 27 replies", "stage")
    assert job.stage == "tuned: generating 27 replies"
    assert job.take_line(" 40%|████      | 4/10") is None and job.stage == "40%|████      | 4/10"
    assert job.take_line("[ 50%] writing shards") == ("[ 50%] writing shards", "stage")
    assert job.fraction == 0.5 and job.stage == "writing shards"
    assert job.take_line("   ") is None
    assert job.take_line("finetui: no held-out split") == ("finetui: no held-out split", "error")
    assert job.take_line("Loading weights") == ("Loading weights", "dim")
    assert job.failure(0, None) is None
    assert job.failure(1, None) == "no held-out split"
    assert job.failure(None, "cannot start: no such file") == "cannot start: no such file"
    quiet = Job("eval", Path("/r"), [])
    assert quiet.failure(3, None) == "exited with status 3"
    quiet.take_line("Traceback: boom")
    assert quiet.failure(3, None) == "Traceback: boom"


def test_a_job_runs_to_its_end(tmp_path):
    script = ("import sys; print('· reading the split', file=sys.stderr); "
              "print('finetui: bad things', file=sys.stderr); print('{\"examples\": 2}')")
    job = Job("eval", tmp_path, [sys.executable, "-c", script])
    seen: list[tuple[str, str]] = []
    returncode, stdout, problem = jobs.run_job(job, lambda line, kind: seen.append((line, kind)))
    assert (returncode, problem) == (0, None)
    assert evalstate.parse_eval_output(stdout) == {"examples": 2}
    assert seen == [("· reading the split", "stage"), ("finetui: bad things", "error")]
    missing = Job("eval", tmp_path, [str(tmp_path / "nothing-here")])
    returncode, _out, problem = jobs.run_job(missing, lambda *a: None)
    assert returncode is None and problem.startswith("cannot start")


def test_saved_results(tmp_path):
    assert evalstate.read_results(tmp_path) == (None, [], None)
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "results.json").write_text(json.dumps(result()))
    summary, rows, problem = evalstate.read_results(tmp_path)
    assert summary["examples"] == 30 and rows == [] and problem == "results.jsonl is missing: metrics only"
    (tmp_path / "eval" / "results.jsonl").write_text('{"index": 0}\nnot json\n\n{"index": 1}\n')
    summary, rows, problem = evalstate.read_results(tmp_path)
    assert rows == [{"index": 0}, {"index": 1}] and problem == "results.jsonl line 2: not JSON (skipped)"



# ---------------------------------------------------------------------------- what a finished job means


def test_an_evaluation_outcome_for_the_run_on_screen_and_for_another(tmp_path):
    run = tmp_path / "r1"
    done = result(rows=[{"index": 0}], notes=["3 targets are longer"], saved={"results": "r1/eval/results.json"})
    job = Job("eval", run, [])
    outcome = evalstate.job_outcome(job, 0, "log line\n" + json.dumps(done) + "\n", None, run, 12.4)
    assert (outcome.message, outcome.color, outcome.notify) == (
        "evaluated 30 examples in 12s: tuned loss 0.4000, exact match 24/30", "success", None)
    assert outcome.rows == [{"index": 0}] and "rows" not in outcome.result and outcome.result["examples"] == 30
    assert outcome.log == [("note: 3 targets are longer", "warning"), ("saved r1/eval/results.json", "dim")]
    elsewhere = evalstate.job_outcome(Job("eval", run, []), 0, json.dumps(done), None, tmp_path / "r2", 5)
    assert elsewhere.message == "evaluated r1 (5s); o shows it" and elsewhere.result is None
    silent = evalstate.job_outcome(Job("eval", run, []), 0, "no json\n", None, run, 5)
    assert (silent.message, silent.color) == ("evaluation finished but printed no JSON result (see the log)", "error")


def test_failed_stopped_and_merged_outcomes(tmp_path):
    run = tmp_path / "r1"
    failed = Job("eval", run, [])
    failed.take_line("finetui: run r1 has no held-out split")
    outcome = evalstate.job_outcome(failed, 1, "", None, run, 3)
    assert (outcome.message, outcome.color) == ("eval failed: run r1 has no held-out split", "error")
    assert outcome.notify == ("Evaluation failed", "run r1 has no held-out split")
    assert evalstate.job_outcome(Job("merge", run, []), None, "", "cannot start: x", run, 0).notify == (
        "Export failed", "cannot start: x")
    stopped = Job("merge", run, [])
    stopped.stopped = True
    assert (evalstate.job_outcome(stopped, -15, "", None, run, 7.2).message,
            evalstate.job_outcome(stopped, -15, "", None, run, 7.2).color) == ("merge stopped after 7s", "warning")
    out = tmp_path / "merged"
    empty = evalstate.job_outcome(Job("merge", run, [], out=out), 0, f"{out}\n", None, run, 2)
    assert (empty.message, empty.color) == (f"merge finished but {out} holds no config.json (see the log)", "error")
    out.mkdir()
    (out / "config.json").write_text("{}")
    (out / "model.safetensors").write_bytes(b"0" * 2048)
    merge = Job("merge", run, [], out=out)
    merged = evalstate.job_outcome(merge, 0, f"{out}\n", None, run, 9)
    assert (merged.message, merged.color, merged.notify) == (f"exported to {out} in 9s", "success",
                                                             ("Export", f"merged model in {out}"))
    assert merged.log[0] == (f"merged model: {out} (2 files, 1 safetensors shard, 2.0 KiB)", "bold")
    assert merge.fraction == 1.0


def test_the_export_offer_follows_what_the_run_saved(tmp_path):
    import pytest

    from finetui.engine.targets import NotFound

    run = tmp_path / "20260101-a"
    (run / "adapter").mkdir(parents=True)
    title, note = evalstate.export_offer(run)
    assert title == "Export 20260101-a: its full fine-tune as a model folder" and "linked" in note
    (run / "adapter" / "adapter_config.json").write_text("{}")
    assert evalstate.export_offer(run)[0] == "Export 20260101-a: merge its LoRA adapter into the base model"
    (run / "adapter" / "adapter_config.json").unlink()
    (run / "adapter").rmdir()
    with pytest.raises(NotFound, match="no adapter/ in run 20260101-a yet"):
        evalstate.export_offer(run)
    assert evalstate.busy_problem(None) is None
    assert evalstate.busy_problem(Job("merge", run, [])) == "a merge is running: S stops it"
