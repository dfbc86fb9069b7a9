"""`finetui import llamafactory` on job files shaped like LLaMA-Factory's own examples
(tests/data/llamafactory), and a bare dataset name resolved through data/dataset_info.json
before the Hub. The jobs run from a folder holding LLaMA-Factory's demo data as ``data/``,
as llamafactory-cli runs from its repository."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from cli_helpers import finetui

from finetui.engine import config as cfg
from finetui.engine import events as ev
from finetui.engine.data import readers
from finetui.engine.importers import llamafactory as lf

REPO = Path(__file__).resolve().parents[1]
JOBS = REPO / "tests" / "data" / "llamafactory"
DEMO_DATA = REPO / "tests" / "data" / "datasets" / "llamafactory"


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A folder with LLaMA-Factory's demo datasets in data/ (its dataset_dir default)."""
    data = tmp_path / "data"
    data.mkdir()
    for name in ("dataset_info.json", "identity.json", "alpaca_en_demo.json", "dpo_en_demo.json"):
        shutil.copy(DEMO_DATA / name, data / name)
    return tmp_path


def line_of(path: Path, key: str) -> int:
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.startswith(f"{key}:"):
            return number
    raise AssertionError(f"{key} not in {path}")


def test_lora_example(workdir):
    job = JOBS / "llama3_lora_sft.yaml"
    out = workdir / "imported.yaml"
    proc = finetui("import", "llamafactory", str(job), "--out", str(out), cwd=workdir)
    assert proc.returncode == 0, proc.stderr
    config = cfg.load(out)  # finetui's own validation, from the file written
    assert config.model.name_or_path == "meta-llama/Meta-Llama-3-8B-Instruct"
    assert config.model.trust_remote_code is False  # never carried over silently
    m, d, t = config.method, config.data, config.train
    assert (m.type, m.lora_r, m.lora_alpha, m.target_modules) == ("lora", 8, 16, "all-linear")
    assert d.path == "data/dataset_info.json:identity"
    assert (d.template, d.max_length, d.max_samples, d.num_proc) == ("tokenizer", 2048, 1000, 16)
    assert (t.batch_size, t.gradient_accumulation_steps, t.learning_rate, t.epochs) == (1, 8, 1e-4, 3.0)
    assert (t.lr_scheduler, t.warmup_ratio, t.precision, t.logging_steps) == ("cosine", 0.1, "bf16", 10)
    assert (t.save_strategy, t.save_steps, t.dataloader_num_workers) == ("steps", 500, 4)
    assert t.report_to == [] and t.gradient_checkpointing is True
    assert (d.test_size, t.eval_strategy) == (0.0, "no")  # val_size is commented out in the example
    # the keys that could not be mapped, each at its line, with why
    report = proc.stdout
    unmapped = report.split("not mapped (")[1]
    assert f"{job}:{line_of(job, 'trust_remote_code')}: trust_remote_code:" in unmapped
    assert f"{job}:{line_of(job, 'dataset')}: dataset: finetui trains on one dataset; only identity" in unmapped
    assert "alpaca_en_demo" in unmapped
    assert "resume_from_checkpoint" not in unmapped  # null: nothing to map
    assert "plot_loss: the dashboard" in report.split("not needed (")[1]
    # the written file lists them too, as comments
    assert "# not carried over:" in out.read_text() and "trust_remote_code" in out.read_text()


def test_qlora_example(workdir):
    result = lf.import_job(JOBS / "llama3_lora_sft_otfq.yaml", cwd=workdir)
    c = result.config
    assert (c.method.type, c.model.quantization, c.model.bnb_4bit_quant_type) == ("qlora", "4bit", "nf4")
    assert (c.method.lora_r, c.method.lora_alpha) == (8, 16)  # LLaMA-Factory's defaults, said so
    assert any(line.startswith("method.lora_r: 8 (LLaMA-Factory's default") for line in result.defaults)
    assert (c.data.test_size, c.train.eval_strategy, c.train.eval_steps) == (0.1, "steps", 500)
    assert not any("quantization_method" in line for line in result.unmapped)


def test_full_example(workdir):
    job = JOBS / "llama3_full_sft.yaml"
    result = lf.import_job(job, cwd=workdir)
    c = result.config
    assert (c.method.type, c.train.learning_rate, c.train.gradient_accumulation_steps) == ("full", 1e-5, 2)
    assert c.method.lora_r == cfg.MethodConfig().lora_r  # no LoRA default written for a full run
    assert any(line.startswith(f"{job}:{line_of(job, 'deepspeed')}: deepspeed: finetui trains on one GPU or "
                               "with DDP") for line in result.unmapped), result.unmapped


def test_peft_variants(workdir):
    pissa = lf.import_job(JOBS / "llama3_pissa_sft.yaml", cwd=workdir).config
    assert pissa.method.init_lora_weights == "pissa_niter_16"
    loraplus = lf.import_job(JOBS / "llama3_loraplus_sft.yaml", cwd=workdir).config
    assert loraplus.method.loraplus_lr_ratio == 16.0
    data, lines = lf.read_job(JOBS / "llama3_lora_sft.yaml")
    data.update(use_dora=True, use_rslora=True, neftune_noise_alpha=5, report_to="tensorboard,swanlab",
                lr_scheduler_type="cosine_with_restarts", packing=True, train_on_prompt=True)
    result = lf.convert(data, lines, "job.yaml", workdir)
    c = result.config
    assert (c.method.use_dora, c.method.use_rslora, c.train.neftune_noise_alpha) == (True, True, 5.0)
    assert (c.train.report_to, c.train.lr_scheduler) == (["tensorboard"], "cosine")
    assert (c.data.packing, c.data.train_on) == (True, "all")
    assert any(line.startswith("job.yaml:28: report_to: swanlab: finetui reports to") for line in result.unmapped)
    assert any("lr_scheduler_type: cosine_with_restarts" in line for line in result.unmapped)


@pytest.mark.parametrize("job, key, words", [
    ("llama3_lora_dpo.yaml", "stage", "dpo (DPO) is not supported"),
    ("llama3_freeze_sft.yaml", "finetuning_type", "freeze (train only the last layers) is refused"),
])
def test_refused_jobs_name_the_key(workdir, job, key, words):
    path = JOBS / job
    proc = finetui("import", "llamafactory", str(path), "--out", str(workdir / "x.yaml"), cwd=workdir)
    assert proc.returncode == 2
    assert f"finetui: {path}:{line_of(path, key)}: {key}: {words}" in proc.stderr, proc.stderr
    assert not (workdir / "x.yaml").exists()


def test_pretraining_on_text_is_taken(workdir):
    data, lines = lf.read_job(JOBS / "llama3_lora_sft.yaml")
    shutil.copy(DEMO_DATA / "c4_demo.jsonl", workdir / "data" / "c4_demo.jsonl")
    data.update(stage="pt", dataset="c4_demo")
    c = lf.convert(data, lines, "job.yaml", workdir).config
    assert (c.data.path, c.data.train_on, c.data.packing) == ("data/dataset_info.json:c4_demo", "all", True)
    data.update(dataset="identity")  # an instruction dataset is not pretraining text
    with pytest.raises(lf.ImportProblem, match=r"job.yaml:\d+: stage: pt trains on raw text"):
        lf.convert(data, lines, "job.yaml", workdir)


def test_bad_input_names_file_and_line(workdir):
    bad = workdir / "bad.yaml"
    bad.write_text("model_name_or_path: tiny\nstage: sft\ndataset: [identity\ntemplate: llama3\n")
    proc = finetui("import", "llamafactory", str(bad), cwd=workdir)
    assert proc.returncode == 2 and f"finetui: {bad}:4: invalid YAML" in proc.stderr, proc.stderr
    wrong = workdir / "wrong.yaml"
    wrong.write_text("model_name_or_path: tiny\ndataset: identity\nlora_rank: eight\nlearning_rate: 1e-4\n")
    proc = finetui("import", "llamafactory", str(wrong), cwd=workdir)
    assert proc.returncode == 2
    assert f"finetui: {wrong}:3: lora_rank: expected an integer, got 'eight'" in proc.stderr, proc.stderr
    missing = workdir / "missing.yaml"
    missing.write_text("model_name_or_path: tiny\ndataset: no_such_set\n")
    proc = finetui("import", "llamafactory", str(missing), cwd=workdir)
    assert proc.returncode == 2 and f"{missing}:2: dataset:" in proc.stderr and "no_such_set" in proc.stderr
    # 1e-4 (no dot) is a string to YAML 1.1; it is read as the number LLaMA-Factory means
    wrong.write_text("model_name_or_path: tiny\ndataset: identity\nlearning_rate: 1e-4\n")
    assert lf.import_job(wrong, cwd=workdir).config.train.learning_rate == 1e-4


@pytest.mark.slow
def test_imported_job_trains(workdir, finetui_cache):
    job = JOBS / "tiny_lora_sft.yaml"
    proc = finetui("import", "llamafactory", str(job), "--out", "job.yaml", cwd=workdir)
    assert proc.returncode == 0, proc.stderr
    assert "not mapped: none" in proc.stdout
    offline = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    proc = finetui("train", "job.yaml", cwd=workdir, env=offline)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (run,) = [p for p in (workdir / "runs").iterdir() if (p / "config.yaml").exists()]
    assert "saves-tiny-lora-sft" in run.name
    events = ev.read_file(run / "events.jsonl")
    steps = [e["step"] for e in events if e["type"] == "step"]
    finished = [e for e in events if e["type"] == "finished"]
    assert steps == [1, 2, 3] and finished[-1]["status"] == "completed"
    assert any(e["type"] == "eval" for e in events)  # val_size + eval_strategy: steps
    started = next(e for e in events if e["type"] == "run_started")
    assert started["config"]["data"]["path"] == "data/dataset_info.json:identity"
    assert (run / "adapter").is_dir()


def test_bare_name_resolves_through_dataset_info_before_the_hub(workdir, monkeypatch):
    monkeypatch.chdir(workdir)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert not (workdir / "identity").exists()  # not a local file or folder
    source = readers.resolve_source("identity")
    assert (source.kind, source.hub_id, source.spec) == ("registry", None, "data/dataset_info.json:identity")
    assert source.paths == [Path("data") / "identity.json"]
    loaded = readers.load_records("identity", on_error="strict")
    assert len(loaded.conversations) == len(json.loads((workdir / "data" / "identity.json").read_text()))
    assert readers.resolve_source("hf:identity").kind == "hub"  # hf: still names the Hub
    assert readers.resolve_source("org/not_listed").kind == "hub"  # a name not in the registry
    # the same name without data/dataset_info.json would be a Hub id
    (workdir / "data" / "dataset_info.json").rename(workdir / "data" / "elsewhere.json")
    assert readers.resolve_source("identity").kind == "hub"


def test_bare_name_inspected_offline(workdir, finetui_cache):
    """A bare name given to finetui data inspect, offline: the entry in data/dataset_info.json."""
    env = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    proc = finetui("data", "inspect", "identity", "--num-proc", "1", "--json", cwd=workdir, env=env)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert "data/dataset_info.json:identity" in json.dumps(report)
    # the containment check still holds for an entry found this way
    info = json.loads((workdir / "data" / "dataset_info.json").read_text())
    info["identity"]["file_name"] = "../outside.json"
    (workdir / "outside.json").write_text("[]")
    (workdir / "data" / "dataset_info.json").write_text(json.dumps(info))
    proc = finetui("data", "inspect", "identity", "--num-proc", "1", cwd=workdir, env=env)
    assert proc.returncode != 0 and "outside the dataset folder" in proc.stderr, proc.stderr
