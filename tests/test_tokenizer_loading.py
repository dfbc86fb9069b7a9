"""A tokenizer that AutoTokenizer would load as the generic ``TokenizersBackend`` (finetui's
built-in models, transformers 5's own saves of Llama-type models) is loaded as that class
directly: the same tokenizer, without AutoTokenizer's imports (torch, the config tables),
which every ``finetui data inspect`` and dataset-browser worker would pay."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from finetui.engine import modeling

TEXTS = ["Hello, world!", "<|im_start|>user\nWhat is LoRA?<|im_end|>\n", "日本語 and émoji 🎉", "  spaced  \n\n"]


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def assert_same_as_auto(folder: Path, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    assert modeling._generic_fast_tokenizer(folder)
    direct = modeling.load_tokenizer(str(folder))
    auto = AutoTokenizer.from_pretrained(str(folder))
    assert type(direct) is type(auto)
    assert direct.init_kwargs == auto.init_kwargs
    assert direct.special_tokens_map == auto.special_tokens_map and len(direct) == len(auto)
    assert direct.added_tokens_decoder == auto.added_tokens_decoder
    for text in TEXTS:
        assert direct(text) == auto(text)
    chat = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    if auto.chat_template:
        assert direct.apply_chat_template(chat, tokenize=False) == auto.apply_chat_template(chat, tokenize=False)
    direct.save_pretrained(tmp_path / "direct")
    auto.save_pretrained(tmp_path / "auto")
    assert _files(tmp_path / "direct") == _files(tmp_path / "auto")


def test_tiny_loads_directly_as_auto_would(tiny_model_dir, tmp_path):
    assert_same_as_auto(Path(tiny_model_dir), tmp_path)


@pytest.mark.real
def test_smollm2_loads_directly_as_auto_would(tmp_path):
    from finetui.engine import gguf

    assert_same_as_auto(gguf.fetch_builtin("smollm2"), tmp_path)


def test_the_shortcut_model_types_are_not_swapped_by_auto():
    from transformers.models.auto.tokenization_auto import MODELS_WITH_INCORRECT_HUB_TOKENIZER_CLASS

    assert not modeling.GENERIC_TOKENIZER_MODEL_TYPES & MODELS_WITH_INCORRECT_HUB_TOKENIZER_CLASS


@pytest.mark.parametrize("change", ["class", "auto_map", "model_type", "no_json"])
def test_other_folders_go_through_auto(tiny_model_dir, tmp_path, change):
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    settings = json.loads((folder / "tokenizer_config.json").read_text())
    config = json.loads((folder / "config.json").read_text())
    if change == "class":
        settings["tokenizer_class"] = "LlamaTokenizer"
    elif change == "auto_map":
        settings["auto_map"] = {"AutoTokenizer": ["tok.MyTokenizer", None]}
    elif change == "model_type":
        config["model_type"] = "gemma3"
    else:
        (folder / "tokenizer.json").unlink()
    (folder / "tokenizer_config.json").write_text(json.dumps(settings))
    (folder / "config.json").write_text(json.dumps(config))
    assert not modeling._generic_fast_tokenizer(folder)


def test_loading_the_tiny_tokenizer_imports_no_torch(tiny_model_dir):
    code = ("import sys; from finetui.engine import modeling; "
            f"tok = modeling.load_tokenizer({str(tiny_model_dir)!r}); "
            "print(type(tok).__name__, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["TokenizersBackend", "False"]
