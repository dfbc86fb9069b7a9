"""Format detection and normalisation: raw record (a dict) -> :class:`Conversation`.

Light module (stdlib only). Formats, by the names ``data.format`` takes:

========== =================================================================================
text       ``text`` (pretraining; every token trains)
qa         ``question`` / ``answer`` (also ``prompt`` / ``completion`` or ``response``)
alpaca     ``instruction`` / ``input`` / ``output`` (or ``response``), optional ``system``,
           ``history`` as ``[[question, answer], ...]``
openorca   ``system_prompt`` / ``question`` / ``response``
sharegpt   ``conversations: [{from, value}]``; roles human / gpt / system / function_call /
           observation; optional ``tools`` (JSON text or a list)
messages   ``messages: [{role, content}]`` (OpenAI; content may be a list of text parts)
chatml     ``text`` holding ``<|im_start|>role\\n...<|im_end|>`` blocks
preference ``chosen`` / ``rejected``: strings with a prompt field, message lists, or
           LLaMA-Factory ranking style (``conversations`` + ``chosen``/``rejected`` turns)
========== =================================================================================

``columns`` maps canonical names to a dataset's own names, e.g. ``{"question": "prompt",
"answer": "completion"}``. LLaMA-Factory's column names are understood too (``prompt`` /
``query`` / ``response`` are alpaca's instruction / input / output, ``messages`` is the
turn list), and ``tags`` are LLaMA-Factory's role/content tags for turn lists.

Errors: :class:`RecordError` names the field (``conversations[3].value``) so a reader can
report ``file:line: field '...': message``; :class:`DataError` is a dataset-level problem
already phrased for the user.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from typing import Any, Iterable, Mapping

from engine.data.conversation import Conversation, Message

# Must match engine.config.DATA_FORMATS minus "auto" (a test checks); not imported from
# there so this module stays stdlib-only.
FORMATS = ("text", "qa", "alpaca", "openorca", "sharegpt", "messages", "chatml", "preference")

DETECT_SAMPLE = 50

# LLaMA-Factory's default sharegpt tags.
DEFAULT_TAGS = {
    "role_tag": "from",
    "content_tag": "value",
    "user_tag": "human",
    "assistant_tag": "gpt",
    "observation_tag": "observation",
    "function_tag": "function_call",
    "system_tag": "system",
}

# Role names seen in the wild, beyond the tags of a given dataset.
_USER_ROLES = {"human", "user"}
_ASSISTANT_ROLES = {"gpt", "assistant", "bot", "model", "chatgpt"}
_SYSTEM_ROLES = {"system", "developer"}
_FUNCTION_CALL_ROLES = {"function_call"}
_TOOL_ROLES = {"observation", "tool", "function", "ipython"}

_CHATML_BLOCK = re.compile(r"<\|im_start\|>([^\n]*)\n(.*?)(?:<\|im_end\|>|\Z)", re.S)

_MISSING = object()


class DataError(ValueError):
    """A dataset-level problem (unreadable source, unknown format), phrased for the user."""


class RecordError(ValueError):
    """One record cannot be used; ``field`` names where (``conversations[3].value``)."""

    def __init__(self, field: str | None, message: str):
        self.field = field
        self.message = message
        super().__init__(f"field '{field}': {message}" if field else message)


# ------------------------------------------------------------------------ columns


def _field(
    record: Mapping[str, Any],
    columns: Mapping[str, str],
    canonical: str,
    column_aliases: Iterable[str] = (),
    record_aliases: Iterable[str] = (),
) -> tuple[str, Any]:
    """(key in the record, value or _MISSING) for a canonical field.

    An explicit column mapping wins; otherwise the canonical name, then common aliases
    found in the record itself (``response`` for alpaca's ``output``).
    """
    for name in (canonical, *column_aliases):
        if name in columns:
            key = columns[name]
            return key, record.get(key, _MISSING)
    for key in (canonical, *record_aliases):
        if key in record:
            return key, record[key]
    return canonical, _MISSING


def _text(value: Any, field: str, *, required: bool = True, allow_empty: bool = False) -> str | None:
    if value is _MISSING or value is None:
        if required:
            raise RecordError(field, "missing field")
        return None
    if not isinstance(value, str):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = str(value)
        else:
            raise RecordError(field, f"expected text, got {_type_name(value)}")
    if not value.strip() and not allow_empty:
        if required:
            raise RecordError(field, "empty text")
        return None
    return value


def _type_name(value: Any) -> str:
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "null"
    return type(value).__name__


# ---------------------------------------------------------------------- detection


def _turn_style(turns: Any, tags: Mapping[str, str] | None) -> str | None:
    """'sharegpt' for {from, value} turns, 'messages' for {role, content}, else None."""
    if not isinstance(turns, list) or not turns:
        return None
    first = next((t for t in turns if isinstance(t, dict)), None)
    if first is None:
        return None
    if tags and tags.get("role_tag", "from") in first:
        return "sharegpt"
    if "from" in first or "value" in first:
        return "sharegpt"
    if "role" in first or "content" in first:
        return "messages"
    return None


def detect_one(
    record: Any, columns: Mapping[str, str] | None = None, tags: Mapping[str, str] | None = None
) -> str | None:
    """The format one record looks like, or None."""
    if not isinstance(record, dict):
        return None
    columns = columns or {}

    def has(canonical: str, *aliases: str, record_aliases: Iterable[str] = ()) -> bool:
        return _field(record, columns, canonical, aliases, record_aliases)[1] is not _MISSING

    if has("chosen") and has("rejected"):
        return "preference"
    for canonical in ("conversations", "messages"):
        key, turns = _field(record, columns, canonical)
        if turns is not _MISSING:
            style = _turn_style(turns, tags)
            if style:
                return style
    if has("system_prompt") and has("question") and has("response"):
        return "openorca"
    if has("instruction", "prompt") and has("output", "response", record_aliases=("response",)):
        return "alpaca"
    if has("question", "prompt", record_aliases=("prompt", "input")) and has(
        "answer", "response", record_aliases=("completion", "response", "output")
    ):
        return "qa"
    key, text = _field(record, columns, "text")
    if isinstance(text, str):
        return "chatml" if "<|im_start|>" in text else "text"
    return None


def detect(
    records: list[Any],
    columns: Mapping[str, str] | None = None,
    tags: Mapping[str, str] | None = None,
    sample: int = DETECT_SAMPLE,
) -> str:
    """Vote over the first ``sample`` records; raise DataError naming the keys seen."""
    votes: Counter[str] = Counter()
    keys: Counter[str] = Counter()
    non_objects = 0
    for record in records[:sample]:
        if not isinstance(record, dict):
            non_objects += 1
            continue
        keys.update(record.keys())
        fmt = detect_one(record, columns, tags)
        if fmt:
            votes[fmt] += 1
    if votes:
        # Ties go to the more specific format (earlier in this order).
        order = ("preference", "sharegpt", "messages", "openorca", "alpaca", "qa", "chatml", "text")
        best = max(votes.values())
        return next(f for f in order if votes.get(f) == best)
    if not records:
        raise DataError("no records to detect the format from")
    if not keys:
        raise DataError(
            f"cannot tell the format: the records are not objects ({non_objects} of the first "
            f"{min(len(records), sample)} are lists or values); each record must be a JSON object"
        )
    seen = ", ".join(k for k, _ in keys.most_common(12))
    raise DataError(
        f"cannot tell the format from the keys seen ({seen}); set data.format (one of "
        f"{', '.join(FORMATS)}) or map your columns with data.columns, e.g. "
        "{question: prompt, answer: completion}"
    )


def registry_format(entry: Mapping[str, Any]) -> tuple[str | None, dict[str, str], dict[str, str]]:
    """(format, columns, tags) for a LLaMA-Factory dataset_info.json entry.

    LLaMA-Factory's alpaca entries without a response column are pretraining text
    (``c4_demo``: ``columns: {prompt: text}``).
    """
    formatting = entry.get("formatting", "alpaca")
    columns = dict(entry.get("columns") or {})
    tags = dict(entry.get("tags") or {})
    ranking = bool(entry.get("ranking"))
    if ranking:
        return "preference", columns, tags
    if formatting == "sharegpt":
        return "sharegpt", columns, tags
    if formatting == "openai":
        return "messages", columns, tags
    if columns and "prompt" in columns and "response" not in columns and "query" not in columns:
        return "text", {"text": columns["prompt"]}, tags
    return "alpaca", columns, tags


# ------------------------------------------------------------------------- turns


def _role_of(raw: Any, tags: Mapping[str, str]) -> str | None:
    """Canonical role (system/user/assistant/tool, or 'function_call'), or None."""
    if not isinstance(raw, str):
        return None
    if raw == tags.get("user_tag"):
        return "user"
    if raw == tags.get("assistant_tag"):
        return "assistant"
    if raw == tags.get("system_tag"):
        return "system"
    if raw == tags.get("function_tag"):
        return "function_call"
    if raw == tags.get("observation_tag"):
        return "tool"
    name = raw.strip().lower()
    for role, names in (
        ("user", _USER_ROLES),
        ("assistant", _ASSISTANT_ROLES),
        ("system", _SYSTEM_ROLES),
        ("function_call", _FUNCTION_CALL_ROLES),
        ("tool", _TOOL_ROLES),
    ):
        if name in names:
            return role
    return None


def _content_text(value: Any, field: str) -> str | None:
    """Turn content as text: a string, or OpenAI content parts joined; None if absent."""
    if value is None or value is _MISSING:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        texts = []
        for j, part in enumerate(value):
            if isinstance(part, str):
                texts.append(part)
            elif isinstance(part, dict) and part.get("type", "text") == "text" and isinstance(part.get("text"), str):
                texts.append(part["text"])
            elif isinstance(part, dict):
                raise RecordError(
                    f"{field}[{j}]", f"{part.get('type', 'untyped')!s} parts are not supported (text only)"
                )
            else:
                raise RecordError(f"{field}[{j}]", f"expected a content part object, got {_type_name(part)}")
        return "\n".join(texts)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    raise RecordError(field, f"expected text, got {_type_name(value)}")


def _parse_tool_calls(text: str) -> list[dict[str, Any]] | None:
    """OpenAI-style tool_calls from a ShareGPT function_call value, or None if it is not
    the JSON ``{"name", "arguments"}`` (or a list of them)."""
    try:
        parsed = json.loads(text)
    except (json.JSONDecodeError, TypeError):
        return None
    items = parsed if isinstance(parsed, list) else [parsed]
    calls = []
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            return None
        arguments = item.get("arguments", item.get("parameters", {}))
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments)
            except json.JSONDecodeError:
                pass  # keep the string: some datasets store free-form arguments
        calls.append({"type": "function", "function": {"name": item["name"], "arguments": arguments}})
    return calls or None


def parse_turns(
    turns: Any, field: str, tags: Mapping[str, str] | None = None
) -> tuple[str | None, list[Message]]:
    """(system, messages) from a ShareGPT or OpenAI turn list.

    A system turn is accepted at the start only; an empty user/assistant/tool turn is an
    error naming ``field[i].value``; consecutive turns of one role are tolerated.
    """
    if not isinstance(turns, list):
        raise RecordError(field, f"expected a list of turns, got {_type_name(turns)}")
    if not turns:
        raise RecordError(field, "no turns")
    merged_tags = dict(DEFAULT_TAGS)
    if tags:
        merged_tags.update(tags)
    system: str | None = None
    messages: list[Message] = []
    for i, turn in enumerate(turns):
        where = f"{field}[{i}]"
        if not isinstance(turn, dict):
            raise RecordError(where, f"expected a turn object, got {_type_name(turn)}")
        role_key = next((k for k in (merged_tags["role_tag"], "from", "role") if k in turn), None)
        if role_key is None:
            raise RecordError(where, f"turn has no role ('{merged_tags['role_tag']}' or 'role')")
        content_key = next((k for k in (merged_tags["content_tag"], "value", "content") if k in turn), None)
        content_field = f"{where}.{content_key or merged_tags['content_tag']}"
        role = _role_of(turn[role_key], merged_tags)
        if role is None:
            raise RecordError(
                f"{where}.{role_key}",
                f"unknown role {turn[role_key]!r} (expected human/user, gpt/assistant, system, "
                "function_call, observation/tool)",
            )
        content = _content_text(turn.get(content_key) if content_key else None, content_field)
        tool_calls = turn.get("tool_calls") if isinstance(turn.get("tool_calls"), list) else None
        if role == "system":
            if messages:
                raise RecordError(content_field, "system turn after the conversation started")
            if content and content.strip():
                system = content if system is None else f"{system}\n\n{content}"
            continue
        if role == "function_call":
            if content is None or not content.strip():
                raise RecordError(content_field, "empty turn")
            calls = _parse_tool_calls(content)
            if calls is not None:
                messages.append(Message("assistant", "", tool_calls=calls))
            else:
                messages.append(Message("assistant", content))
            continue
        if (content is None or not content.strip()) and not (role == "assistant" and tool_calls):
            raise RecordError(content_field, "empty turn" if content is not None else "missing content")
        messages.append(Message(role, content or "", tool_calls=tool_calls or None))
    return system, messages


def _require_assistant(messages: list[Message], field: str) -> None:
    if not any(m.role == "assistant" for m in messages):
        raise RecordError(field, "no assistant turn")


def parse_tools(value: Any, field: str = "tools") -> list[dict[str, Any]] | None:
    """Tool schemas as OpenAI ``{"type": "function", "function": {...}}`` objects."""
    if value is None or value is _MISSING:
        return None
    if isinstance(value, str):
        if not value.strip():
            return None
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise RecordError(field, f"not valid JSON: {exc.msg} (column {exc.colno})") from None
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list):
        raise RecordError(field, f"expected a list of tool schemas, got {_type_name(value)}")
    tools = []
    for i, tool in enumerate(value):
        if not isinstance(tool, dict):
            raise RecordError(f"{field}[{i}]", f"expected a tool schema object, got {_type_name(tool)}")
        if tool.get("type") == "function" and isinstance(tool.get("function"), dict):
            tools.append(tool)
        else:
            tools.append({"type": "function", "function": tool})
    return tools or None


# -------------------------------------------------------------------- converters


def _text_format(record: dict, columns: Mapping[str, str], tags: Any) -> Conversation:
    key, value = _field(record, columns, "text", ("prompt",), ("content",))
    return Conversation(kind="text", text=_text(value, key))


def _chatml(record: dict, columns: Mapping[str, str], tags: Any) -> Conversation:
    key, value = _field(record, columns, "text")
    text = _text(value, key)
    blocks = list(_CHATML_BLOCK.finditer(text))
    if not blocks:
        raise RecordError(key, "no <|im_start|>role ... <|im_end|> blocks")
    outside = _CHATML_BLOCK.sub("", text).strip()
    if outside:
        raise RecordError(key, f"text outside <|im_start|> blocks: {outside[:40]!r}")
    turns = [{"role": m.group(1).strip(), "content": m.group(2).strip("\n")} for m in blocks]
    try:
        system, messages = parse_turns(turns, key)
    except RecordError as exc:
        # parse_turns names a synthetic list (text[2].content); name the block instead.
        block = re.search(r"\[(\d+)\]", exc.field or "")
        where = f" in <|im_start|> block {int(block.group(1)) + 1}" if block else ""
        raise RecordError(key, exc.message + where) from None
    _require_assistant(messages, key)
    return Conversation(messages=messages, system=system)


def _system(record: dict, columns: Mapping[str, str], *aliases: str) -> str | None:
    key, value = _field(record, columns, "system", aliases)
    return _text(value, key, required=False)


def _qa(record: dict, columns: Mapping[str, str], tags: Any) -> Conversation:
    qkey, question = _field(record, columns, "question", ("prompt", "query"), ("prompt", "input"))
    akey, answer = _field(record, columns, "answer", ("response",), ("completion", "response", "output"))
    return Conversation(
        messages=[Message("user", _text(question, qkey)), Message("assistant", _text(answer, akey))],
        system=_system(record, columns),
    )


def _alpaca(record: dict, columns: Mapping[str, str], tags: Any) -> Conversation:
    ikey, instruction = _field(record, columns, "instruction", ("prompt",))
    inkey, input_ = _field(record, columns, "input", ("query",), ("context",))
    okey, output = _field(record, columns, "output", ("response",), ("response",))
    instruction_text = _text(instruction, ikey, required=False, allow_empty=True) or ""
    input_text = _text(input_, inkey, required=False, allow_empty=True) or ""
    # LLaMA-Factory joins instruction and input with one newline; so do we, so a model
    # trained here sees what it would see there.
    prompt = "\n".join(p for p in (instruction_text, input_text) if p.strip())
    if not prompt.strip():
        if instruction is _MISSING:
            raise RecordError(ikey, "missing field")
        raise RecordError(ikey, "empty instruction (and no input)")
    messages: list[Message] = []
    hkey, history = _field(record, columns, "history")
    if history is not _MISSING and history is not None:
        if not isinstance(history, list):
            raise RecordError(hkey, f"expected a list of [question, answer] pairs, got {_type_name(history)}")
        for i, pair in enumerate(history):
            if not isinstance(pair, (list, tuple)) or len(pair) != 2:
                raise RecordError(f"{hkey}[{i}]", "expected a [question, answer] pair")
            messages.append(Message("user", _text(pair[0], f"{hkey}[{i}][0]")))
            messages.append(Message("assistant", _text(pair[1], f"{hkey}[{i}][1]")))
    messages.append(Message("user", prompt))
    messages.append(Message("assistant", _text(output, okey)))
    tkey, tools = _field(record, columns, "tools")
    return Conversation(messages=messages, system=_system(record, columns), tools=parse_tools(tools, tkey))


def _openorca(record: dict, columns: Mapping[str, str], tags: Any) -> Conversation:
    skey, system = _field(record, columns, "system_prompt", ("system",))
    qkey, question = _field(record, columns, "question", ("prompt",))
    rkey, response = _field(record, columns, "response")
    return Conversation(
        messages=[Message("user", _text(question, qkey)), Message("assistant", _text(response, rkey))],
        system=_text(system, skey, required=False),
    )


def _turn_list(record: dict, columns: Mapping[str, str], canonical: str) -> tuple[str, Any]:
    other = "messages" if canonical == "conversations" else "conversations"
    key, turns = _field(record, columns, canonical, (other,), (other,))
    if turns is _MISSING:
        raise RecordError(key, "missing field")
    return key, turns


def _chat(canonical: str):
    def convert(record: dict, columns: Mapping[str, str], tags: Mapping[str, str] | None) -> Conversation:
        key, turns = _turn_list(record, columns, canonical)
        system, messages = parse_turns(turns, key, tags)
        _require_assistant(messages, key)
        extra_system = _system(record, columns)
        if extra_system:
            system = extra_system if not system else f"{extra_system}\n\n{system}"
        tkey, tools = _field(record, columns, "tools")
        return Conversation(messages=messages, system=system, tools=parse_tools(tools, tkey))

    return convert


def _same(a: Message, b: Message) -> bool:
    return a.role == b.role and a.content == b.content


def _preference(record: dict, columns: Mapping[str, str], tags: Mapping[str, str] | None) -> Conversation:
    ckey, chosen = _field(record, columns, "chosen")
    rkey, rejected = _field(record, columns, "rejected")
    if chosen is _MISSING:
        raise RecordError(ckey, "missing field")
    if rejected is _MISSING:
        raise RecordError(rkey, "missing field")

    system: str | None = None
    prompt: list[Message] | None = None
    tkey, turns = _field(record, columns, "conversations", ("messages",), ("messages",))
    pkey, prompt_value = _field(record, columns, "prompt", ("instruction", "question"), ("instruction", "question"))
    if turns is not _MISSING:
        system, prompt = parse_turns(turns, tkey, tags)
    elif prompt_value is not _MISSING:
        if isinstance(prompt_value, list):
            system, prompt = parse_turns(prompt_value, pkey, tags)
        else:
            prompt = [Message("user", _text(prompt_value, pkey))]
            ikey, input_ = _field(record, columns, "input", ("query",))
            extra = _text(input_, ikey, required=False)
            if extra:
                prompt[0].content += "\n" + extra
    extra_system = _system(record, columns)
    if extra_system:
        system = extra_system if not system else f"{extra_system}\n\n{system}"

    def reply(value: Any, key: str) -> list[Message]:
        nonlocal system
        if isinstance(value, str):
            return [Message("assistant", _text(value, key))]
        if isinstance(value, dict):
            try:
                return parse_turns([value], key, tags)[1]
            except RecordError as exc:
                # Name the object itself, not a one-element list around it.
                raise RecordError((exc.field or key).replace(f"{key}[0]", key), exc.message) from None
        if isinstance(value, list):
            sys_part, msgs = parse_turns(value, key, tags)
            if sys_part and not system:
                system = sys_part
            return msgs
        raise RecordError(key, f"expected text, a turn or a list of turns, got {_type_name(value)}")

    chosen_msgs = reply(chosen, ckey)
    rejected_msgs = reply(rejected, rkey)

    if prompt is None:
        # Implicit prompt: the shared beginning of the chosen and rejected conversations.
        n = 0
        while n < min(len(chosen_msgs), len(rejected_msgs)) and _same(chosen_msgs[n], rejected_msgs[n]):
            n += 1
        prompt, chosen_msgs, rejected_msgs = chosen_msgs[:n], chosen_msgs[n:], rejected_msgs[n:]
    else:
        # Some datasets repeat the prompt at the start of each reply list.
        for name in ("chosen", "rejected"):
            msgs = chosen_msgs if name == "chosen" else rejected_msgs
            if len(msgs) > len(prompt) and all(_same(a, b) for a, b in zip(prompt, msgs)):
                msgs[: len(prompt)] = []
    if not prompt or not any(m.role == "user" for m in prompt):
        raise RecordError(pkey if turns is _MISSING else tkey, "no prompt (user turn) before the replies")
    if not chosen_msgs or chosen_msgs[-1].role != "assistant":
        raise RecordError(ckey, "chosen reply is not an assistant turn")
    if len(rejected_msgs) != 1 or rejected_msgs[0].role != "assistant":
        raise RecordError(rkey, "rejected must be a single assistant reply")
    return Conversation(messages=prompt + chosen_msgs, system=system, kind="preference", rejected=rejected_msgs[0])


_CONVERTERS = {
    "text": _text_format,
    "qa": _qa,
    "alpaca": _alpaca,
    "openorca": _openorca,
    "sharegpt": _chat("conversations"),
    "messages": _chat("messages"),
    "chatml": _chatml,
    "preference": _preference,
}


def to_conversation(
    record: Any,
    fmt: str,
    columns: Mapping[str, str] | None = None,
    tags: Mapping[str, str] | None = None,
) -> Conversation:
    """Normalise one record; raise RecordError naming the field that is wrong."""
    if fmt not in _CONVERTERS:
        raise DataError(f"data.format: unknown format {fmt!r} (known: {', '.join(FORMATS)})")
    if not isinstance(record, dict):
        raise RecordError(None, f"record is {_type_name(record)}, not an object")
    return _CONVERTERS[fmt](record, columns or {}, tags or None)
