"""Tool-call arguments reach every template in the form it takes.

Datasets give a call's arguments as a mapping (LLaMA-Factory's glaive rows, parsed from the
function_call JSON) or as JSON text (OpenAI's ``"arguments": "{...}"``). Templates differ:
Llama 3.1 and Qwen 2.5 write ``arguments | tojson`` (a mapping), GLM's iterate
``arguments.items()``, DeepSeek-V3's concatenates ``'\\n' + tool['function']['arguments']``
(a string: a mapping raises TypeError there, and every tool-call row was dropped), and a
template that writes ``{{ arguments }}`` prints a mapping as a Python dict. finetui renders a
row with the form the template last took and falls back to the other, so no row that
either form can express is lost.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from finetui.engine.data import readers
from finetui.engine.data.conversation import Conversation, Message
from finetui.engine.data.render import RenderError, prepare_tokenizer, render, resolve_template

DATA = Path(__file__).resolve().parent / "data"
TEMPLATES = DATA / "chat_templates"  # see tests/data/SOURCES.md
GLAIVE = DATA / "datasets" / "llamafactory" / "glaive_toolcall_en_demo.json"


@pytest.fixture(scope="module")
def base_tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def tokenizer_and_template(base, name: str):
    tok = copy.deepcopy(base)
    template = resolve_template(tok, str(TEMPLATES / f"{name}.jinja"))
    prepare_tokenizer(tok, template)  # the template's literal tokens (<｜User｜>, <|eot_id|> ...)
    return tok, template


@pytest.fixture(scope="module")
def glaive():
    loaded = readers.load_records(str(GLAIVE))
    convs = [conv for _, conv in loaded.conversations]
    assert len(convs) == 100
    return convs


def calls_of(conv: Conversation) -> list[dict]:
    return [call["function"] for m in conv.messages for call in (m.tool_calls or ())]


@pytest.mark.parametrize("name, form", [("deepseek_v3", "json"), ("qwen2_5", "mapping"), ("llama3_1", "mapping")])
def test_every_glaive_tool_call_row_renders(base_tokenizer, glaive, name, form):
    tok, template = tokenizer_and_template(base_tokenizer, name)
    with_calls = [conv for conv in glaive if calls_of(conv)]
    assert len(with_calls) == 53
    dropped = []
    for conv in glaive:
        try:
            ex = render(conv, tok, template, max_length=8192)
        except RenderError as exc:
            dropped.append(str(exc))
            continue
        for call in calls_of(conv):
            args = call["arguments"]
            assert isinstance(args, dict)
            assert call["name"] in ex.text
            # the arguments as JSON, once: not a Python dict, not JSON text quoted again
            assert json.dumps(args, ensure_ascii=False) in ex.text
            assert str(args) not in ex.text or str(args) == json.dumps(args)
            assert json.dumps(json.dumps(args, ensure_ascii=False)) not in ex.text
            # and the call is trained: the model learns to make it
            assert json.dumps(args, ensure_ascii=False) in ex.trained_text()
        assert not any("not trained" in note for note in ex.notes)
    assert dropped == []
    assert template.tool_arguments == form


def test_json_text_arguments_reach_a_mapping_template_as_a_mapping(base_tokenizer):
    """OpenAI-style rows carry the arguments as JSON text; Llama 3.1's template writes
    ``arguments | tojson``, which would quote the text again."""
    tok, template = tokenizer_and_template(base_tokenizer, "llama3_1")
    call = {"type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
    conv = Conversation(messages=[
        Message("user", "Weather in Paris?"), Message("assistant", "", tool_calls=[call]),
        Message("tool", "21 C"), Message("assistant", "21 degrees."),
    ])
    ex = render(conv, tok, template)
    assert '{"name": "get_weather", "parameters": {"city": "Paris"}}' in ex.text
    assert template.tool_arguments == "mapping"
    assert call["function"]["arguments"] == '{"city": "Paris"}'  # the record is not changed


def test_mapping_and_json_rows_mixed_on_a_string_template(base_tokenizer):
    """DeepSeek-V3's template after rows of either kind: each renders the call as JSON."""
    tok, template = tokenizer_and_template(base_tokenizer, "deepseek_v3")
    texts = []
    for args in ({"city": "Paris"}, '{"city": "Rome"}', {"city": "Oslo"}):
        call = {"type": "function", "function": {"name": "get_weather", "arguments": args}}
        conv = Conversation(messages=[
            Message("user", "Weather?"), Message("assistant", "", tool_calls=[call]),
            Message("tool", "21 C"), Message("assistant", "21 degrees."),
        ])
        texts.append(render(conv, tok, template).text)
    for city, text in zip(("Paris", "Rome", "Oslo"), texts):
        assert f'get_weather\n```json\n{{"city": "{city}"}}\n```' in text


PRINTS_ARGUMENTS = (
    "{%- for m in messages -%}"
    "{%- if m.role == 'assistant' and m.tool_calls -%}"
    "{{- '<|im_start|>assistant\\n' }}{%- for c in m.tool_calls -%}"
    "{{- '<call>' }}{{ c.function.name }} {{ c.function.arguments }}{{- '</call>' }}"
    "{%- endfor -%}{{- '<|im_end|>\\n' }}"
    "{%- else -%}{{- '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' }}{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def test_a_template_that_prints_arguments_gets_json_text(base_tokenizer, tmp_path):
    path = tmp_path / "prints_arguments.jinja"
    path.write_text(PRINTS_ARGUMENTS)
    tok = copy.deepcopy(base_tokenizer)
    template = resolve_template(tok, str(path))
    prepare_tokenizer(tok, template)
    call = {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris", "days": 2}}}
    conv = Conversation(messages=[Message("user", "Weather?"), Message("assistant", "", tool_calls=[call])])
    ex = render(conv, tok, template)
    assert '<call>get_weather {"city": "Paris", "days": 2}</call><|im_end|>' in ex.text
    assert "{'city'" not in ex.text
    assert template.tool_arguments == "json"
    assert ex.trained_text() == '<call>get_weather {"city": "Paris", "days": 2}</call><|im_end|>'
