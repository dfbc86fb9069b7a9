"""Format detection and normalisation (engine.data.formats)."""

from __future__ import annotations

import json

import pytest

from finetui.engine.config import DATA_FORMATS
from finetui.engine.data.formats import (
    FORMATS,
    DataError,
    RecordError,
    detect,
    detect_one,
    parse_tools,
    registry_format,
    to_conversation,
)


def roles(conv):
    return [m.role for m in conv.messages]


def test_format_names_match_the_config_schema():
    assert ("auto", *FORMATS) == DATA_FORMATS


@pytest.mark.parametrize(
    "record, fmt",
    [
        ({"text": "plain words"}, "text"),
        ({"text": "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nhello<|im_end|>"}, "chatml"),
        ({"question": "q", "answer": "a"}, "qa"),
        ({"prompt": "q", "completion": "a"}, "qa"),
        ({"instruction": "i", "input": "", "output": "o"}, "alpaca"),
        ({"instruction": "i", "response": "o"}, "alpaca"),
        ({"instruction": "i", "input": "", "output": "o", "text": "rendered"}, "alpaca"),
        ({"system_prompt": "s", "question": "q", "response": "r"}, "openorca"),
        ({"conversations": [{"from": "human", "value": "hi"}]}, "sharegpt"),
        ({"messages": [{"role": "user", "content": "hi"}]}, "messages"),
        ({"prompt": "p", "chosen": "c", "rejected": "r"}, "preference"),
        ({"conversations": [], "chosen": {}, "rejected": {}}, "preference"),
        ({"id": 1, "label": "x"}, None),
        ([1, 2], None),
    ],
)
def test_detect_one(record, fmt):
    assert detect_one(record) == fmt


def test_detect_votes_over_records():
    records = [{"question": "q", "answer": "a"}] * 3 + [{"text": "t"}]
    assert detect(records) == "qa"


def test_detect_uses_column_mapping():
    records = [{"q": "hello", "a": "world"}]
    assert detect(records, columns={"question": "q", "answer": "a"}) == "qa"


def test_detect_failure_lists_keys_and_suggests_settings():
    with pytest.raises(DataError) as info:
        detect([{"foo": 1, "bar": 2}, {"foo": 3}])
    message = str(info.value)
    assert "foo" in message and "bar" in message
    assert "data.format" in message and "data.columns" in message


def test_detect_failure_on_non_objects():
    with pytest.raises(DataError, match="not objects"):
        detect([[1, 2], "x"])


def test_text_and_chatml():
    conv = to_conversation({"text": "some document"}, "text")
    assert conv.kind == "text" and conv.text == "some document" and conv.messages == []
    chatml = (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi there<|im_end|>\n"
        "<|im_start|>assistant\nHello!<|im_end|>\n"
    )
    conv = to_conversation({"text": chatml}, "chatml")
    assert conv.system == "Be brief."
    assert [(m.role, m.content) for m in conv.messages] == [("user", "Hi there"), ("assistant", "Hello!")]


def test_chatml_errors_name_the_block():
    with pytest.raises(RecordError, match="block 2") as info:
        to_conversation({"text": "<|im_start|>user\nhi<|im_end|><|im_start|>assistant\n<|im_end|>"}, "chatml")
    assert info.value.field == "text"
    with pytest.raises(RecordError, match="no <"):
        to_conversation({"text": "no markers"}, "chatml")


def test_qa_with_columns():
    conv = to_conversation({"prompt": "2+2?", "completion": "4"}, "qa")
    assert [(m.role, m.content) for m in conv.messages] == [("user", "2+2?"), ("assistant", "4")]
    conv = to_conversation({"q": "2+2?", "a": "4"}, "qa", columns={"question": "q", "answer": "a"})
    assert conv.messages[1].content == "4"


def test_alpaca_joins_input_and_keeps_history_and_system():
    record = {
        "instruction": "Translate",
        "input": "bonjour",
        "output": "hello",
        "system": "You translate.",
        "history": [["hi", "hello"], ["how are you", "fine"]],
    }
    conv = to_conversation(record, "alpaca")
    assert conv.system == "You translate."
    assert roles(conv) == ["user", "assistant"] * 3
    assert conv.messages[-2].content == "Translate\nbonjour"
    assert conv.messages[-1].content == "hello"


def test_alpaca_llamafactory_column_names():
    record = {"question": "why?", "response": "because", "system_prompt": "sys"}
    conv = to_conversation(record, "alpaca", columns={"prompt": "question", "response": "response", "system": "system_prompt"})
    assert conv.system == "sys" and conv.messages[0].content == "why?" and conv.messages[1].content == "because"


def test_alpaca_placeholders_kept_verbatim():
    conv = to_conversation({"instruction": "hi", "input": "", "output": "I am {{name}} by {{author}}."}, "alpaca")
    assert conv.messages[-1].content == "I am {{name}} by {{author}}."


@pytest.mark.parametrize(
    "record, field, message",
    [
        ({"instruction": "x", "input": ""}, "output", "missing field"),
        ({"instruction": "x", "output": "   "}, "output", "empty text"),
        ({"instruction": "", "input": "", "output": "o"}, "instruction", "empty instruction"),
        ({"instruction": "x", "output": ["a"]}, "output", "expected text, got a list"),
        ({"instruction": "x", "output": "o", "history": [["only one"]]}, "history[0]", "pair"),
        ({"instruction": "x", "output": "o", "history": "nope"}, "history", "expected a list"),
    ],
)
def test_alpaca_errors(record, field, message):
    with pytest.raises(RecordError, match=message) as info:
        to_conversation(record, "alpaca")
    assert info.value.field == field


def test_openorca():
    conv = to_conversation({"system_prompt": "", "question": "q", "response": "r"}, "openorca")
    assert conv.system is None and roles(conv) == ["user", "assistant"]


def test_sharegpt_tool_calls_and_observation():
    record = {
        "conversations": [
            {"from": "human", "value": "weather in Paris?"},
            {"from": "function_call", "value": json.dumps({"name": "weather", "arguments": {"city": "Paris"}})},
            {"from": "observation", "value": '{"temp": 21}'},
            {"from": "gpt", "value": "21 degrees."},
        ],
        "tools": json.dumps([{"name": "weather", "description": "d", "parameters": {"type": "object"}}]),
    }
    conv = to_conversation(record, "sharegpt")
    assert roles(conv) == ["user", "assistant", "tool", "assistant"]
    call = conv.messages[1].tool_calls[0]
    assert call == {"type": "function", "function": {"name": "weather", "arguments": {"city": "Paris"}}}
    assert conv.tools[0]["type"] == "function" and conv.tools[0]["function"]["name"] == "weather"


def test_sharegpt_function_call_that_is_not_json_keeps_raw_text():
    record = {"conversations": [{"from": "human", "value": "x"}, {"from": "function_call", "value": "call weather(Paris)"}]}
    conv = to_conversation(record, "sharegpt")
    assert conv.messages[1].role == "assistant"
    assert conv.messages[1].content == "call weather(Paris)" and conv.messages[1].tool_calls is None


def test_sharegpt_system_turn_and_tags():
    record = {"msgs": [{"r": "sys", "c": "S"}, {"r": "me", "c": "hi"}, {"r": "bot", "c": "yo"}]}
    tags = {"role_tag": "r", "content_tag": "c", "user_tag": "me", "assistant_tag": "bot", "system_tag": "sys"}
    conv = to_conversation(record, "sharegpt", columns={"messages": "msgs"}, tags=tags)
    assert conv.system == "S" and [(m.role, m.content) for m in conv.messages] == [("user", "hi"), ("assistant", "yo")]


@pytest.mark.parametrize(
    "turns, field, message",
    [
        ([{"from": "human", "value": "hi"}, {"from": "gpt", "value": ""}], "conversations[1].value", "empty turn"),
        ([{"from": "human", "value": "  "}, {"from": "gpt", "value": "x"}], "conversations[0].value", "empty turn"),
        ([{"from": "human", "value": "hi"}], "conversations", "no assistant turn"),
        ([{"from": "alien", "value": "hi"}], "conversations[0].from", "unknown role"),
        ([{"value": "hi"}], "conversations[0]", "no role"),
        (["hi"], "conversations[0]", "expected a turn object"),
        ([], "conversations", "no turns"),
        ("hi", "conversations", "expected a list"),
        (
            [{"from": "human", "value": "a"}, {"from": "system", "value": "s"}, {"from": "gpt", "value": "b"}],
            "conversations[1].value",
            "system turn after",
        ),
    ],
)
def test_sharegpt_errors_name_the_turn(turns, field, message):
    with pytest.raises(RecordError, match=message) as info:
        to_conversation({"conversations": turns}, "sharegpt")
    assert info.value.field == field
    assert str(info.value).startswith(f"field '{field}'")


def test_sharegpt_tolerates_consecutive_turns_of_one_role():
    turns = [{"from": "human", "value": "a"}, {"from": "human", "value": "b"}, {"from": "gpt", "value": "c"}]
    assert roles(to_conversation({"conversations": turns}, "sharegpt")) == ["user", "user", "assistant"]


def test_messages_content_parts_and_tool_calls():
    record = {
        "messages": [
            {"role": "system", "content": "S"},
            {"role": "user", "content": [{"type": "text", "text": "part one"}, {"type": "text", "text": "part two"}]},
            {"role": "assistant", "content": None, "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": "{}"}}]},
            {"role": "tool", "content": "result"},
            {"role": "assistant", "content": "done"},
        ]
    }
    conv = to_conversation(record, "messages")
    assert conv.system == "S"
    assert conv.messages[0].content == "part one\npart two"
    assert conv.messages[1].tool_calls and conv.messages[1].content == ""
    assert roles(conv) == ["user", "assistant", "tool", "assistant"]


def test_messages_image_part_is_reported():
    record = {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}, {"role": "assistant", "content": "x"}]}
    with pytest.raises(RecordError, match="image_url parts are not supported") as info:
        to_conversation(record, "messages")
    assert info.value.field == "messages[0].content[0]"


def test_preference_strings_with_prompt():
    conv = to_conversation({"prompt": "p", "chosen": "good", "rejected": "bad", "system": "s"}, "preference")
    assert conv.kind == "preference" and conv.system == "s"
    assert [(m.role, m.content) for m in conv.messages] == [("user", "p"), ("assistant", "good")]
    assert conv.rejected.role == "assistant" and conv.rejected.content == "bad"


def test_preference_message_lists_with_implicit_prompt():
    prompt = [{"role": "user", "content": "p"}]
    record = {
        "chosen": prompt + [{"role": "assistant", "content": "good"}],
        "rejected": prompt + [{"role": "assistant", "content": "bad"}],
    }
    conv = to_conversation(record, "preference")
    assert [(m.role, m.content) for m in conv.messages] == [("user", "p"), ("assistant", "good")]
    assert conv.rejected.content == "bad"


def test_preference_llamafactory_ranking_style():
    record = {
        "conversations": [{"from": "system", "value": "S"}, {"from": "human", "value": "p"}],
        "chosen": {"from": "gpt", "value": "good"},
        "rejected": {"from": "gpt", "value": "bad"},
    }
    conv = to_conversation(record, "preference")
    assert conv.system == "S" and conv.rejected.content == "bad" and conv.messages[-1].content == "good"


@pytest.mark.parametrize(
    "record, field, message",
    [
        ({"prompt": "p", "chosen": "", "rejected": "bad"}, "chosen", "empty text"),
        ({"prompt": "p", "chosen": "good"}, "rejected", "missing field"),
        ({"chosen": "good", "rejected": "bad"}, "prompt", "no prompt"),
        (
            {"conversations": [{"from": "human", "value": "p"}], "chosen": {"from": "gpt", "value": ""}, "rejected": {"from": "gpt", "value": "b"}},
            "chosen.value",
            "empty turn",
        ),
    ],
)
def test_preference_errors(record, field, message):
    with pytest.raises(RecordError, match=message) as info:
        to_conversation(record, "preference")
    assert info.value.field == field


def test_non_object_record():
    with pytest.raises(RecordError, match="record is a list, not an object") as info:
        to_conversation(["a", "b"], "qa")
    assert info.value.field is None


def test_unknown_format():
    with pytest.raises(DataError, match="unknown format"):
        to_conversation({}, "yaml")


def test_parse_tools_errors():
    with pytest.raises(RecordError, match="not valid JSON") as info:
        parse_tools("[{oops")
    assert info.value.field == "tools"
    assert parse_tools("") is None
    wrapped = parse_tools([{"type": "function", "function": {"name": "f"}}])
    assert wrapped == [{"type": "function", "function": {"name": "f"}}]


@pytest.mark.parametrize(
    "entry, expected",
    [
        ({"file_name": "identity.json"}, ("alpaca", {}, {})),
        ({"file_name": "c4.jsonl", "columns": {"prompt": "text"}}, ("text", {"text": "text"}, {})),
        ({"formatting": "sharegpt", "columns": {"messages": "conversations"}}, ("sharegpt", {"messages": "conversations"}, {})),
        ({"ranking": True, "formatting": "sharegpt"}, ("preference", {}, {})),
    ],
)
def test_registry_format(entry, expected):
    assert registry_format(entry) == expected
