"""Masking on the real chat templates: exactly each assistant reply plus the token that
ends it is trained; never the role header, the system/user text, the tool output or the
newline after the end token.

The tokenizer is the tiny model's byte-level BPE with the templates' special tokens added,
so every template renders and tokenises as it would for the real model; what is trained is
checked by decoding the trained token ids back to text.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from finetui.engine.data.conversation import Conversation, Message
from finetui.engine.data.render import (
    IGNORE,
    RenderError,
    TemplateError,
    detect_end_token,
    generation_eos_ids,
    prepare_tokenizer,
    render,
    resolve_template,
)
from render_helpers import trained_runs

TEMPLATES = Path(__file__).resolve().parent / "data" / "chat_templates"  # see tests/data/SOURCES.md

SPECIAL = [
    "<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<|eom_id|>",
    "<|python_tag|>", "<|end_of_text|>", "<start_of_turn>", "<end_of_turn>", "<bos>", "<eos>",
    "<|user|>", "<|assistant|>", "<|end|>", "<|system|>", "<|endoftext|>",
]

# Per template: (bos, eos) as the real tokenizers set them, and the trained text of a reply.
MODELS = {
    "llama3_1": ("<|begin_of_text|>", "<|eot_id|>", lambda c: c.strip() + "<|eot_id|>"),
    "qwen2_5": (None, "<|im_end|>", lambda c: c + "<|im_end|>"),
    "qwen3_training": (None, "<|im_end|>", lambda c: "<think>\n\n</think>\n\n" + c + "<|im_end|>"),
    "gemma3": ("<bos>", "<eos>", lambda c: c.strip() + "<end_of_turn>"),
    "phi3_5": (None, "<|endoftext|>", lambda c: c + "<|end|>"),
}

REPLIES = ["Hello! How can I help?", "It is 4.\nFour, in words.", "  Paris  "]


def conversation(turns: int, system: str | None) -> Conversation:
    messages = []
    questions = ["Hi there", "What is 2+2?", "Capital of France?"]
    for q, a in list(zip(questions, REPLIES))[:turns]:
        messages += [Message("user", q), Message("assistant", a)]
    return Conversation(messages=messages, system=system)


@pytest.fixture(scope="module")
def base_tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    tok.add_tokens(SPECIAL, special_tokens=True)
    return tok


def tokenizer_for(base, name: str):
    bos, eos, _ = MODELS[name]
    tok = copy.deepcopy(base)
    tok.bos_token = bos
    tok.eos_token = eos
    tok.chat_template = (TEMPLATES / f"{name}.jinja").read_text()
    return tok




def check(tok, ex, expected: list[str]) -> None:
    assert trained_runs(tok, ex) == expected
    # the browser's character spans cover exactly the same text
    assert [ex.text[a:b] for a, b in ex.trained_spans] == expected
    assert ex.n_trained == sum(label != IGNORE for label in ex.labels)
    assert not ex.truncated and ex.n_tokens == len(ex.input_ids) == len(ex.labels)


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("turns", [1, 3])
@pytest.mark.parametrize("system", [None, "You are terse."])
def test_real_templates_train_exactly_replies_and_end_token(base_tokenizer, name, turns, system):
    tok = tokenizer_for(base_tokenizer, name)
    template = resolve_template(tok, "auto")
    assert template.origin == "tokenizer"
    conv = conversation(turns, system)
    ex = render(conv, tok, template, max_length=4096)
    expected = [MODELS[name][2](m.content) for m in conv.messages if m.role == "assistant"]
    check(tok, ex, expected)
    # the prompt side is in the text but never trained
    for m in conv.messages:
        if m.role == "user":
            assert m.content in ex.text and m.content not in ex.trained_text()
    if system:
        assert system in ex.text and system not in ex.trained_text()
    assert not ex.notes


@pytest.mark.parametrize("name", list(MODELS))
def test_same_masks_from_a_template_file(base_tokenizer, name):
    tok = tokenizer_for(base_tokenizer, name)
    by_file = resolve_template(tok, str(TEMPLATES / f"{name}.jinja"))
    assert by_file.origin == "file"
    conv = conversation(2, "Sys.")
    assert render(conv, tok, by_file).labels == render(conv, tok, resolve_template(tok, "tokenizer")).labels


def test_end_tokens_detected(base_tokenizer):
    ends = {}
    for name in MODELS:
        tok = tokenizer_for(base_tokenizer, name)
        ends[name] = detect_end_token(tok, resolve_template(tok, "auto"))
    assert ends == {
        "llama3_1": "<|eot_id|>", "qwen2_5": "<|im_end|>", "qwen3_training": "<|im_end|>",
        "gemma3": "<end_of_turn>", "phi3_5": "<|end|>",
    }
    tok = tokenizer_for(base_tokenizer, "gemma3")
    ids = generation_eos_ids(tok, resolve_template(tok, "auto"))
    assert ids == [tok.convert_tokens_to_ids("<end_of_turn>"), tok.convert_tokens_to_ids("<eos>")]


def test_qwen3_generation_markers_leave_the_newline_after_im_end_untrained(base_tokenizer):
    tok = tokenizer_for(base_tokenizer, "qwen3_training")
    template = resolve_template(tok, "auto")
    assert template.has_generation
    conv = Conversation(messages=[
        Message("user", "Why?"),
        Message("assistant", "<think>\nBecause.\n</think>\n\nSo."),
        Message("user", "And?"),
        Message("assistant", "Done."),
    ])
    ex = render(conv, tok, template)
    check(tok, ex, ["<think>\nBecause.\n</think>\n\nSo.<|im_end|>", "<think>\n\n</think>\n\nDone.<|im_end|>"])
    assert ex.text.endswith("<|im_end|>\n")


WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def tool_conversation() -> Conversation:
    call = [{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]
    return Conversation(
        messages=[
            Message("user", "Weather in Paris?"),
            Message("assistant", "", tool_calls=call),
            Message("tool", '{"temp": 21}'),
            Message("assistant", "It is 21 degrees."),
        ],
        tools=[WEATHER_TOOL],
    )


@pytest.mark.parametrize(
    "name, call_text, answer",
    [
        ("llama3_1", '{"name": "get_weather", "parameters": {"city": "Paris"}}<|eot_id|>', "It is 21 degrees.<|eot_id|>"),
        ("qwen2_5", '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>',
         "It is 21 degrees.<|im_end|>"),
        ("qwen3_training",
         '<think>\n\n</think>\n\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>',
         "<think>\n\n</think>\n\nIt is 21 degrees.<|im_end|>"),
    ],
)
def test_tool_calls_trained_tool_output_not(base_tokenizer, name, call_text, answer):
    tok = tokenizer_for(base_tokenizer, name)
    ex = render(tool_conversation(), tok, resolve_template(tok, "auto"), max_length=4096)
    check(tok, ex, [call_text, answer])
    # the tool output is in the text (Llama 3.1's template JSON-quotes a string output)
    assert ('{"temp": 21}' in ex.text or '"{\\"temp\\": 21}"' in ex.text) and "get_weather" in ex.text
    assert not ex.notes


def test_builtin_chatml_with_tools(base_tokenizer):
    tok = copy.deepcopy(base_tokenizer)
    template = resolve_template(tok, "chatml")
    ex = render(tool_conversation(), tok, template, max_length=4096)
    check(tok, ex, [
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>',
        "It is 21 degrees.<|im_end|>",
    ])
    assert json.dumps(WEATHER_TOOL) in ex.text  # the tool list is in the system turn


def test_template_that_ignores_tools_is_noted(base_tokenizer):
    tok = tokenizer_for(base_tokenizer, "gemma3")  # Gemma 3's template has no tool support
    template = resolve_template(tok, "auto")
    conv = tool_conversation()
    conv.messages = conv.messages[:2]  # user, assistant(call): alternation holds
    ex = render(conv, tok, template)
    assert any("ignores tool calls" in n for n in ex.notes)
    assert any("ignores the tool list" in n for n in ex.notes)


# ------------------------------------------------------------------ builtin templates


@pytest.fixture
def bare_tokenizer():
    """A base-model tokenizer: byte-level BPE with only <|endoftext|> (no ChatML, no pad)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(["hello world, a base model tokenizer " * 20], trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>")


def test_chatml_on_a_base_tokenizer_adds_tokens_and_sets_eos(bare_tokenizer):
    tok = bare_tokenizer
    template = resolve_template(tok, "auto")  # no template of its own -> chatml
    assert template.name == "chatml"
    added = prepare_tokenizer(tok, template)
    assert added == ["<|im_start|>", "<|im_end|>", "<|pad|>"]
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|pad|>"
    assert tok.pad_token_id != tok.eos_token_id
    assert generation_eos_ids(tok, template) == [tok.convert_tokens_to_ids("<|im_end|>")]
    ex = render(conversation(2, "Sys."), tok, template)
    check(tok, ex, [REPLIES[0] + "<|im_end|>", REPLIES[1] + "<|im_end|>"])
    assert prepare_tokenizer(tok, template) == []  # idempotent


@pytest.mark.parametrize(
    "name, trained",
    [
        ("qa", lambda c: " " + c + "<|endoftext|>"),
        ("alpaca", lambda c: c + "<|endoftext|>"),
        ("plain", lambda c: c + "<|endoftext|>"),
    ],
)
def test_simple_templates_train_reply_and_eos(bare_tokenizer, name, trained):
    tok = bare_tokenizer
    template = resolve_template(tok, name)
    assert prepare_tokenizer(tok, template) == ["<|pad|>"]
    assert template.end_token == "<|endoftext|>"
    conv = conversation(2, None)
    ex = render(conv, tok, template)
    check(tok, ex, [trained(REPLIES[0]), trained(REPLIES[1])])
    if name == "qa":
        assert ex.text.startswith("### Question: Hi there\n### Answer: Hello!")
    if name == "alpaca":
        assert ex.text.startswith("Below is an instruction that describes a task.")
        assert "### Instruction:\nHi there\n\n### Response:\nHello!" in ex.text


def test_text_preference_all_and_truncation(bare_tokenizer):
    tok = bare_tokenizer
    template = resolve_template(tok, "chatml")
    prepare_tokenizer(tok, template)

    ex = render(Conversation(kind="text", text="hello world"), tok, template)
    assert ex.text == "hello world<|im_end|>" and ex.n_trained == ex.n_tokens
    assert ex.labels == ex.input_ids

    pref = Conversation(kind="preference", messages=[Message("user", "Pick"), Message("assistant", "good")],
                        rejected=Message("assistant", "bad"))
    ex = render(pref, tok, template)
    check(tok, ex, ["good<|im_end|>"])
    assert "bad" not in ex.text

    ex = render(conversation(2, "Sys."), tok, template, train_on="all")
    assert ex.labels == ex.input_ids and ex.trained_spans == [(0, len(ex.text))]

    full = render(conversation(3, None), tok, template)
    short = render(conversation(3, None), tok, template, max_length=20)
    assert short.truncated and short.n_tokens == 20 and short.full_tokens == full.n_tokens
    assert short.input_ids == full.input_ids[:20] and short.labels == full.labels[:20]
    assert short.kept_chars < len(short.text)
    assert all(b <= short.kept_chars for _, b in short.trained_spans)


def test_reasoning_dropping_template(base_tokenizer, tmp_path):
    """Like Qwen 3's original template: earlier turns lose their reasoning. Each turn is
    trained as it appears in the full text, and the example says so."""
    source = (
        "{%- for m in messages -%}"
        "{%- if m.role == 'assistant' -%}"
        "{%- set c = m.content -%}"
        "{%- if not loop.last and '</think>' in c -%}{%- set c = c.split('</think>')[-1].lstrip('\\n') -%}{%- endif -%}"
        "{{- '<|im_start|>assistant\\n' + c + '<|im_end|>\\n' -}}"
        "{%- else -%}{{- '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' -}}{%- endif -%}"
        "{%- endfor -%}"
        "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
    )
    path = tmp_path / "drops_reasoning.jinja"
    path.write_text(source)
    tok = copy.deepcopy(base_tokenizer)
    template = resolve_template(tok, str(path))
    assert not template.has_generation
    conv = Conversation(messages=[
        Message("user", "Q1"), Message("assistant", "<think>\nR1\n</think>\n\nA1"),
        Message("user", "Q2"), Message("assistant", "<think>\nR2\n</think>\n\nA2"),
    ])
    ex = render(conv, tok, template)
    assert "R1" not in ex.text
    check(tok, ex, ["A1<|im_end|>", "<think>\nR2\n</think>\n\nA2<|im_end|>"])
    assert len(ex.notes) == 1 and "assistant turn 1" in ex.notes[0]


def test_template_errors(base_tokenizer):
    tok = tokenizer_for(base_tokenizer, "gemma3")
    template = resolve_template(tok, "auto")
    bad = Conversation(messages=[Message("user", "a"), Message("user", "b"), Message("assistant", "c")])
    with pytest.raises(RenderError, match="alternate"):
        render(bad, tok, template)
    with pytest.raises(TemplateError, match="unknown template"):
        resolve_template(tok, "vicuna")
    with pytest.raises(TemplateError, match="no such template file"):
        resolve_template(tok, "/nonexistent/t.jinja")
    bare = copy.deepcopy(base_tokenizer)
    bare.chat_template = None
    with pytest.raises(TemplateError, match="no chat template"):
        resolve_template(bare, "tokenizer")
    assert resolve_template(bare, "auto").name == "chatml"
