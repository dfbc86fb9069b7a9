"""finetui export: the folder loads with transformers and answers exactly as base + adapter;
the model card's front matter parses and it holds the hyperparameters, the eval table and
the loss summary; --dry-run lists every file and touches no network; --push-to-hub uploads
the folder to a Hub (a real HTTP server on 127.0.0.1 answering the endpoints huggingface_hub
calls); offline, unreachable and GGUF-without-llama.cpp fail with one line; the Runs
screen's export key runs it in a subprocess."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
import yaml
from cli_helpers import finetui

from finetui.engine import export as ex
from finetui.engine import modeling
from train_helpers import stdout_log, train

pytestmark = pytest.mark.slow


# ---------------------------------------------------------------------------- a Hub on 127.0.0.1


class FakeHub:
    """The endpoints huggingface_hub calls for create_repo and upload_folder, served for
    real on 127.0.0.1: repos/create, validate-yaml (the README's front matter must be a
    mapping with a list of tags), preupload (every file "regular": its bytes travel base64
    in the commit) and commit (NDJSON). Anything else answers 404 and is recorded."""

    def __init__(self, token: str) -> None:
        self.token = token
        self.repos: dict[str, dict] = {}
        self.requests: list[tuple[str, str]] = []
        self.validated: list[dict] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def reply(self, status: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                hub.requests.append(("GET", self.path))
                self.reply(404, {"error": "not here"})

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                hub.requests.append(("POST", self.path))
                if self.headers.get("Authorization") != f"Bearer {hub.token}":
                    return self.reply(401, {"error": "Invalid credentials in Authorization header"})
                if self.path == "/api/repos/create":
                    req = json.loads(body)
                    repo = f"{req.get('organization') or 'me'}/{req['name']}"
                    hub.repos.setdefault(repo, {"private": req.get("visibility") == "private", "files": {}})
                    return self.reply(200, {"url": f"{hub.url}/{repo}"})
                if self.path == "/api/validate-yaml":
                    content = json.loads(body)["content"]
                    match = re.match(r"\A---\n(.*?)\n---\n", content, re.S)
                    meta = yaml.safe_load(match.group(1)) if match else None
                    if not isinstance(meta, dict) or not isinstance(meta.get("tags", []), list):
                        return self.reply(400, {"errors": [{"message": "invalid metadata"}]})
                    hub.validated.append(meta)
                    return self.reply(200, {"errors": [], "warnings": []})
                parts = self.path.split("/")
                repo_id = "/".join(parts[3:5])
                if len(parts) == 7 and parts[1:3] == ["api", "models"] and repo_id in hub.repos:
                    if parts[5] == "preupload":
                        files = json.loads(body)["files"]
                        return self.reply(200, {"files": [{"path": f["path"], "uploadMode": "regular",
                                                           "shouldIgnore": False, "oid": None} for f in files]})
                    if parts[5] == "commit":
                        for line in body.decode().splitlines():
                            item = json.loads(line)
                            if item["key"] == "file":
                                value = item["value"]
                                hub.repos[repo_id]["files"][value["path"]] = base64.b64decode(value["content"])
                        return self.reply(200, {"commitUrl": f"{hub.url}/{repo_id}/commit/{'a' * 40}",
                                                "commitOid": "a" * 40, "pullRequestUrl": None})
                self.reply(404, {"error": f"no route {self.path}"})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake_hub():
    hub = FakeHub("hf_test_token")
    yield hub
    hub.close()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------- a run to export


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, finetui_cache_dir) -> Path:
    """A tiny LoRA run, evaluated (eval/results.json, tuned and base)."""
    from finetui.engine import evaluate

    os.environ["FINETUI_CACHE"] = str(finetui_cache_dir)
    root = tmp_path_factory.mktemp("export-runs")
    run_dir, rc, _events = train(root, "lora", method={"type": "lora"},
                                 train={"learning_rate": 2e-2, "save_strategy": "no"})
    assert rc == 0, stdout_log(run_dir)
    evaluate.evaluate(str(run_dir), compare_base=True, limit=4, max_new_tokens=8)
    assert (run_dir / "eval" / "results.json").exists()
    return run_dir


@pytest.fixture(scope="module")
def exported(lora_run, tmp_path_factory) -> ex.Exported:
    return ex.export(lora_run, tmp_path_factory.mktemp("exported") / "model", shard_size="500KB")


def logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


# ---------------------------------------------------------------------------- tests


def test_exported_folder_loads_with_transformers_and_matches_the_adapter(lora_run, exported, finetui_cache):
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    out = exported.folder
    names = {name for name, _ in exported.files}
    assert {"config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
            "model.safetensors.index.json", "README.md", "finetui.json"} <= names
    assert len([n for n in names if n.endswith(".safetensors")]) > 1  # sharded at 500KB
    assert "adapter_config.json" not in names and "training_args.bin" not in names

    model = AutoModelForCausalLM.from_pretrained(out).eval()
    assert not hasattr(model, "peft_config")
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer.chat_template  # the chat template travels with the tokenizer
    adapted, adapter_tok = modeling.load_adapter_model(lora_run / "adapter", device="cpu")
    adapted.eval()
    base, _ = modeling.load_for_inference(lora_run, use_adapter=False, device="cpu")
    messages = [{"role": "user", "content": "What is finetui?"}]
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                        return_dict=True)["input_ids"]
    assert ids.tolist() == adapter_tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                                           return_dict=True)["input_ids"].tolist()
    ours = logits(model, ids)
    torch.testing.assert_close(ours, logits(adapted, ids), rtol=1e-4, atol=1e-4)
    assert not torch.allclose(ours, logits(base.eval(), ids), atol=1e-3)  # the adapter is in the weights

    eos = GenerationConfig.from_pretrained(out).eos_token_id
    eos = [eos] if isinstance(eos, int) else eos
    assert set(modeling.read_meta(lora_run / "adapter")["eos_token_ids"]) <= set(eos)
    meta = json.loads((out / "finetui.json").read_text())
    assert meta["run_id"] == lora_run.name and "merged_from" not in meta  # no local paths published
    assert str(lora_run) not in (out / "README.md").read_text()


def test_model_card_front_matter_hyperparameters_eval_table_and_losses(lora_run, exported):
    from huggingface_hub import ModelCard

    text = (exported.folder / "README.md").read_text()
    front = yaml.safe_load(text.split("---\n")[1])
    assert front["library_name"] == "transformers" and "lora" in front["tags"] and "finetui" in front["tags"]
    assert "base_model" not in front and "datasets" not in front  # tiny and sample: are not on the Hub
    card = ModelCard(text)  # the Hub's own parser
    assert card.data.library_name == "transformers"

    assert "| method.lora_r | 8 |" in text and "| method.lora_alpha | 16 |" in text
    assert "| train.learning_rate | 0.02 |" in text and "| train.max_steps | 4 |" in text
    assert "`sample:finetui_faq`" in text and "| format | qa |" in text and "| train examples | 32 |" in text

    results = json.loads((lora_run / "eval" / "results.json").read_text())
    tuned, base = results["metrics"]["tuned"], results["metrics"]["base"]
    assert "| metric | base | tuned |" in text
    assert f"| eval loss | {base['eval_loss']:.4f} | {tuned['eval_loss']:.4f} |" in text
    assert f"| perplexity | {base['perplexity']:.2f} | {tuned['perplexity']:.2f} |" in text

    steps = [json.loads(line) for line in (lora_run / "events.jsonl").read_text().splitlines()]
    losses = [e["loss"] for e in steps if e["type"] == "step"]
    assert f"| loss, first step | {losses[0]:.4f} (step 1) |" in text
    assert f"| loss, lowest | {min(losses):.4f} " in text
    assert f"finetui {ex.finetui_version()}" in text


def test_card_names_hub_base_datasets_and_the_base_license(lora_run, tmp_path):
    run = tmp_path / lora_run.name
    shutil.copytree(lora_run, run, ignore=shutil.ignore_patterns("checkpoints", "adapter", "eval"))
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["data"]["path"] = "someorg/faq-data"
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    text = ex.model_card(run, base_model="someorg/base-model", method="qlora")
    front = yaml.safe_load(text.split("---\n")[1])
    assert front["base_model"] == "someorg/base-model" and front["datasets"] == ["someorg/faq-data"]
    assert "qlora" in front["tags"] and "license" not in front
    assert "No held-out evaluation was run" in text

    base = tmp_path / "base"
    base.mkdir()
    (base / "README.md").write_text("---\nlicense: apache-2.0\ntags: [x]\n---\n# base\n")
    front = yaml.safe_load(ex.model_card(run, base_model=str(base), method="full").split("---\n")[1])
    assert front["license"] == "apache-2.0" and "base_model" not in front and "full-fine-tune" in front["tags"]


def test_dry_run_lists_every_file_with_its_size_and_no_network(lora_run, tmp_path, finetui_cache):
    out = tmp_path / "dry"
    # A Hub nobody listens on: the dry run must not try it.
    done = finetui("--runs-dir", str(lora_run.parent), "export", lora_run.name, "--out", str(out),
                   "--push-to-hub", "me/tiny-faq", "--private", "--dry-run",
                   env={"HF_ENDPOINT": f"http://127.0.0.1:{closed_port()}", "HF_TOKEN": ""})
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("would create private model repo me/tiny-faq") and lines[-1] == str(out)
    files = ex.folder_files(out)
    assert len(files) >= 7
    for name, size in files:
        assert any(line.split()[:1] == [name] and f"({size:,} bytes)" in line for line in lines), name
    total = sum(size for _, size in files)
    assert "total" in lines[-2] and f"({total:,} bytes)" in lines[-2]


def test_push_to_a_hub_uploads_the_folder(lora_run, exported, tmp_path, fake_hub, finetui_cache):
    out = tmp_path / "pushed"
    done = finetui("--runs-dir", str(lora_run.parent), "export", lora_run.name, "--out", str(out),
                   "--push-to-hub", "me/tiny-faq", "--private", "--json",
                   env={"HF_ENDPOINT": fake_hub.url, "HF_TOKEN": "hf_test_token", "HF_HUB_OFFLINE": "0"})
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["pushed"] == f"{fake_hub.url}/me/tiny-faq"
    repo = fake_hub.repos["me/tiny-faq"]
    assert repo["private"]
    local = {name: (out / name).read_bytes() for name, _ in ex.folder_files(out)}
    assert repo["files"] == local  # every file, byte for byte, nothing else
    assert fake_hub.validated and fake_hub.validated[0]["library_name"] == "transformers"
    assert 'from_pretrained("me/tiny-faq")' in local["README.md"].decode()

    # A wrong token: the Hub's refusal, in one line.
    again = finetui("--runs-dir", str(lora_run.parent), "export", lora_run.name, "--out", str(out),
                    "--push-to-hub", "me/tiny-faq", env={"HF_ENDPOINT": fake_hub.url, "HF_TOKEN": "hf_wrong"})
    assert again.returncode == 1
    errors = [line for line in again.stderr.splitlines() if line.startswith("finetui:")]
    assert len(errors) == 1 and "the Hub refused the push to me/tiny-faq" in errors[0] and "401" in errors[0]


def test_push_offline_unreachable_or_without_token_fails_in_one_line(lora_run, exported, tmp_path):
    folder = exported.folder
    with pytest.raises(ex.ExportError, match=r"^no Hugging Face token"):
        os.environ.pop("HF_TOKEN", None)
        hf_home = tmp_path / "hf-home"
        os.environ["HF_HOME"] = str(hf_home)
        try:
            ex.push(folder, "me/x")
        finally:
            os.environ.pop("HF_HOME", None)
    done = finetui("--runs-dir", str(lora_run.parent), "export", lora_run.name, "--out", str(tmp_path / "o"),
                   "--push-to-hub", "me/x", env={"HF_HUB_OFFLINE": "1", "HF_TOKEN": "hf_x"})
    assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith("finetui: offline (HF_HUB_OFFLINE is set): cannot push to me/x")
    os.environ["HF_ENDPOINT"] = f"http://127.0.0.1:{closed_port()}"
    try:
        with pytest.raises(ex.ExportError, match=r"^cannot reach the Hub at http://127\.0\.0\.1"):
            ex.push(folder, "me/x", token="hf_x")
    finally:
        os.environ.pop("HF_ENDPOINT")


@pytest.mark.parametrize("outtype,tolerance", [("f32", 1e-5), ("q8_0", 0.1)])
def test_gguf_written_by_the_gguf_package_loads_with_the_same_logits_and_tokens(lora_run, tmp_path, monkeypatch,
                                                                                  outtype, tolerance):
    import gguf
    from transformers import AutoModelForCausalLM, AutoTokenizer

    monkeypatch.delenv(ex.LLAMA_CPP_ENV, raising=False)
    done = ex.export(lora_run, tmp_path / "g", gguf=outtype)
    assert done.gguf == done.folder / f"g-{outtype}.gguf" and done.gguf.stat().st_size > 0
    assert done.gguf.name in {name for name, _ in done.files}  # it is part of the folder (and of a push)
    # transformers reads GGUF files on its own (dequantising, undoing llama.cpp's q/k order).
    model = AutoModelForCausalLM.from_pretrained(done.folder).eval()
    from_gguf = AutoModelForCausalLM.from_pretrained(done.folder, gguf_file=done.gguf.name).eval()
    tokenizer = AutoTokenizer.from_pretrained(done.folder)
    gguf_tok = AutoTokenizer.from_pretrained(done.folder, gguf_file=done.gguf.name)
    for text in ["What is finetui? It's 42 times ÄÖ!", "<|im_start|>user\nhi  there<|im_end|>\n\n 12345"]:
        assert gguf_tok(text, add_special_tokens=False)["input_ids"] == tokenizer(text, add_special_tokens=False)[
            "input_ids"]
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "What is finetui?"}], add_generation_prompt=True,
                                        return_tensors="pt", return_dict=True)["input_ids"]
    torch.testing.assert_close(logits(from_gguf, ids), logits(model, ids), rtol=0, atol=tolerance)
    fields = gguf.GGUFReader(done.gguf).fields  # what llama.cpp reads beyond the weights
    assert fields["general.architecture"].contents() == "llama"
    assert fields["tokenizer.chat_template"].contents() == tokenizer.chat_template
    assert fields["tokenizer.ggml.eos_token_id"].contents() == tokenizer.eos_token_id


def test_gguf_says_how_when_neither_llama_cpp_nor_the_built_in_writer_can(lora_run, tmp_path, monkeypatch):
    monkeypatch.delenv(ex.LLAMA_CPP_ENV, raising=False)
    run = tmp_path / "runs" / "20200101-000000-qwen"
    (run / "adapter").mkdir(parents=True)
    for name in ("config.yaml", "events.jsonl"):
        shutil.copy(lora_run / name, run / name)
    shutil.copy(lora_run / "adapter" / "tokenizer.json", run / "adapter")
    (run / "adapter" / "config.json").write_text(json.dumps({"model_type": "qwen3",
                                                             "architectures": ["Qwen3ForCausalLM"]}))
    out = tmp_path / "g"
    done = finetui("--runs-dir", str(run.parent), "export", run.name, "--out", str(out), "--gguf")
    assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr
    assert "not 'qwen3'" in done.stderr and "git clone https://github.com/ggml-org/llama.cpp" in done.stderr
    assert "--llama-cpp" in done.stderr
    assert not out.exists()  # stopped before any work
    with pytest.raises(ex.ExportError, match="no convert_hf_to_gguf.py in"):
        ex.export(lora_run, out, gguf="f16", llama_cpp=tmp_path)


def test_full_fine_tune_exports_its_weights_as_they_are(tmp_path, finetui_cache):
    run_dir, rc, _ = train(tmp_path, "full", train={"save_strategy": "no", "eval_strategy": "no"})
    assert rc == 0, stdout_log(run_dir)
    done = ex.export(run_dir, tmp_path / "full-export")
    out = done.folder
    weights = sorted(p.name for p in (run_dir / "adapter").glob("*.safetensors"))
    assert weights and all((out / n).read_bytes() == (run_dir / "adapter" / n).read_bytes() for n in weights)
    front = yaml.safe_load((out / "README.md").read_text().split("---\n")[1])
    assert "full-fine-tune" in front["tags"]
    assert "method.lora_r" not in (out / "README.md").read_text()
    assert not (run_dir / "adapter" / "README.md").exists() or \
        (run_dir / "adapter" / "README.md").read_text() != (out / "README.md").read_text()
    # An earlier export in the folder is replaced; a folder of other files is refused.
    (out / "stale-00009.safetensors").write_bytes(b"x")
    ex.export(run_dir, out)
    assert not (out / "stale-00009.safetensors").exists()
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(ex.ExportError, match="not empty"):
        ex.export(run_dir, other)


# ---------------------------------------------------------------------------- the TUI


async def test_runs_screen_export_key_runs_the_export_in_a_subprocess(lora_run, tmp_path, monkeypatch,
                                                                      finetui_cache):
    from tui_helpers import SIZE, copy_run, wait_until

    from finetui.tui.app import FinetuiApp
    from finetui.tui.screens.export import ExportScreen
    from finetui.tui.screens.runs import RunsScreen

    for name in ("config", "work"):
        (tmp_path / name).mkdir()
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("FINETUI_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.chdir(tmp_path / "work")
    run_dir = copy_run(lora_run, tmp_path / "runs")
    app = FinetuiApp()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("r")
        await wait_until(pilot, lambda: isinstance(app.screen, RunsScreen) and app.screen.loaded
                         and len(app.screen.infos) == 1, timeout=30, what="the runs list")
        await pilot.press("e")
        await wait_until(pilot, lambda: isinstance(app.screen, ExportScreen), timeout=10, what="the export dialog")
        dialog = app.screen
        out_field = dialog.query_one("#export-out")
        assert Path(out_field.value).resolve() == (run_dir / "export").resolve()
        await pilot.press("enter")
        assert dialog.running
        await wait_until(pilot, lambda: not dialog.running, timeout=240, what="the export subprocess")
        assert dialog.result is not None, dialog.lines
        out = run_dir / "export"
        assert dialog.folder == out.resolve() or dialog.folder == out
        assert (out / "README.md").exists() and (out / "config.json").exists()
        assert any(line.startswith("$ finetui export") for line in dialog.lines)
        assert any(re.match(r"\s*\d+% merging", line) for line in dialog.lines)  # the progress lines
        assert any(line.startswith(f"exported to {dialog.folder}") for line in dialog.lines)
        await pilot.press("escape")
        await wait_until(pilot, lambda: isinstance(app.screen, RunsScreen), timeout=10, what="back to Runs")


def test_an_up_to_date_merge_is_linked_not_merged_again(lora_run, exported, tmp_path):
    from finetui.engine.merge import merge

    merged = merge(lora_run, shard_size="500KB")
    stages: list[str] = []
    done = ex.export(lora_run, tmp_path / "from-merged", progress=lambda stage, fraction: stages.append(stage))
    assert stages[0] == "linking the merged model of `finetui merge`" and "merging" not in stages
    for name in ("model.safetensors.index.json", "config.json", "tokenizer.json"):
        assert (done.folder / name).stat().st_ino == (merged / name).stat().st_ino
    meta = json.loads((done.folder / "finetui.json").read_text())
    assert meta["method"] == "lora" and "merged_from" not in meta
    assert "merged_from" in json.loads((merged / "finetui.json").read_text())  # the run's own copy is untouched
    shutil.rmtree(merged)
