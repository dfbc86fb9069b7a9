"""Format detection and normalisation: raw record (a dict) -> :class:`Conversation`.

Light module (stdlib only). Formats, by the names ``data.format`` takes:

========== =================================================================================
text       ``text`` (pretraining; every token trains)
qa         ``question`` / ``answer`` (also ``prompt`` / ``completion`` or ``response``;
           TRL's conversational ``prompt`` / ``completion`` message lists)
alpaca     ``instruction`` / ``input`` / ``output`` (or ``response``), optional ``system``,
           ``history`` as ``[[question, answer], ...]``
openorca   ``system_prompt`` / ``question`` / ``response``
sharegpt   ``conversations: [{from, value}]``; roles human / gpt / system / function_call /
           observation; optional ``tools`` (JSON text or a list)
messages   ``messages: [{role, content}]`` (OpenAI, LLaMA-Factory v1; content may be a list
           of parts, see :func:`_content`)
chatml     ``text`` holding ``<|im_start|>role\n...<|im_end|>`` blocks
preference ``chosen`` / ``rejected``: strings with a prompt field, message lists, Anthropic
           HH transcripts (``\n\nHuman: ...\n\nAssistant: ...``), LLaMA-Factory ranking
           style (``conversations`` + ``chosen``/``rejected`` turns) or v1's
           ``chosen_messages`` / ``rejected_messages``; SFT trains the chosen reply only
transcript speaker-labelled utterances, rows of ``{speaker, text}`` grouped by a
           ``conversation_id`` / ``episode_id`` ... column, or ``Name: text`` lines, with a
           role per speaker (``data.roles``); see :mod:`engine.data.transcripts`
========== =================================================================================

``columns`` maps canonical names to a dataset's own names, e.g. ``{"question": "prompt",
"answer": "completion"}``. LLaMA-Factory's column names are understood too (``prompt`` /
``query`` / ``response`` are alpaca's instruction / input / output, ``messages`` is the
turn list, ``kto_tag`` the KTO label), and ``tags`` are LLaMA-Factory's role/content tags
for turn lists.

What a record says about training is kept: a turn's ``loss_weight: 0`` / ``weight: 0`` /
``training: false`` makes it context (``Message.train``); a KTO row labelled false
(TRL's ``label``, LLaMA-Factory's ``kto_tag``) raises :class:`RecordSkipped`; an empty turn
in a turn list is dropped with its exchange and noted in ``Conversation.repairs`` rather
than refusing the whole conversation.

Errors: :class:`RecordError` names the field (``conversations[3].value``) so a reader can
report ``file:line: field '...': message``; :class:`DataError` is a dataset-level problem
already phrased for the user.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from typing import Any, Iterable, Mapping

from finetui.engine.data.conversation import Conversation, Message

# Must match engine.config.DATA_FORMATS minus "auto" (a test checks); not imported from
# there so this module stays stdlib-only.
FORMATS = ("text", "qa", "alpaca", "openorca", "sharegpt", "messages", "chatml", "preference", "transcript")

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

# Columns that hold a system prompt, by their name; every format without a system of its
# own reads the first one a record has (an explicit ``columns: {system: NAME}`` wins).
SYSTEM_COLUMNS = ("system", "system_prompt", "system_message", "instruction_system")

# The canonical fields of each format, as ``columns`` maps them (``--column FIELD=NAME``):
# what a hint about an unused column offers and the TUI's column dialog lists.
FIELDS = {
    "text": ("text",),
    "qa": ("question", "answer", "system"),
    "alpaca": ("instruction", "input", "output", "system", "history", "tools"),
    "openorca": ("question", "response", "system"),
    "sharegpt": ("conversations", "system", "tools"),
    "messages": ("messages", "system", "tools"),
    "chatml": ("text",),
    "preference": ("prompt", "chosen", "rejected", "system"),
    "transcript": ("speaker", "text", "conversation_id", "system"),
}


# What a message shows of the user's data: a 10 MB value (a role, a column name, a key)
# is cut to SHOW_CHARS with its length said; a whole message to MESSAGE_CHARS.
SHOW_CHARS = 200
MESSAGE_CHARS = 1000


def clip(text: str, limit: int = SHOW_CHARS) -> str:
    """``text``, or its first ``limit`` characters and ``… (N chars)``."""
    text = str(text)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… ({len(text):,} chars)"


def shown(value: Any, limit: int = SHOW_CHARS) -> str:
    """A value as a message quotes it (``repr``), at most about ``limit`` characters."""
    if isinstance(value, str):
        quoted = repr(value[:limit])
        return quoted if len(value) <= limit else f"{quoted}… ({len(value):,} chars)"
    import reprlib

    short = reprlib.Repr()
    short.maxstring = short.maxother = limit
    return clip(short.repr(value), limit)


class DataError(ValueError):
    """A dataset-level problem (unreadable source, unknown format), phrased for the user."""

    def __init__(self, message: str = "", *args: Any):
        super().__init__(clip(message, MESSAGE_CHARS) if isinstance(message, str) else message, *args)


class RecordError(ValueError):
    """One record cannot be used; ``field`` names where (``conversations[3].value``)."""

    def __init__(self, field: str | None, message: str):
        self.field = clip(field) if field is not None else None
        self.message = clip(message, MESSAGE_CHARS)
        super().__init__(f"field '{self.field}': {self.message}" if field else self.message)


class RecordSkipped(RecordError):
    """A well-formed record that supervised fine-tuning must not train on (a KTO row
    labelled undesirable); readers count it as skipped, with its reason, not as invalid."""


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
    if columns:
        for name in (canonical, *column_aliases):
            if name in columns:
                key = columns[name]
                return key, record.get(key, _MISSING)
    if canonical in record:  # (read for every field of every record: no tuple built)
        return canonical, record[canonical]
    for key in record_aliases:
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

    if has("chosen", record_aliases=("chosen_messages",)) and has("rejected", record_aliases=("rejected_messages",)):
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
    from finetui.engine.data import transcripts

    # one utterance of a transcript: a speaker, its words and the conversation it is in
    if transcripts.is_row(record, columns, with_id=True):
        return "transcript"
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
        order = ("preference", "sharegpt", "messages", "openorca", "alpaca", "qa", "transcript", "chatml", "text")
        best = max(votes.values())
        return next(f for f in order if votes.get(f) == best)
    if not records:
        raise DataError("no records to detect the format from")
    if not keys:
        raise DataError(
            f"cannot tell the format: the records are not objects ({non_objects} of the first "
            f"{min(len(records), sample)} are lists or values); each record must be a JSON object"
        )
    seen = ", ".join(clip(k, 60) for k, _ in keys.most_common(12))
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


# Content part types (OpenAI chat / Responses, LLaMA-Factory v1, Anthropic) that are text.
_TEXT_PARTS = {"text", "input_text", "output_text"}
_REASONING_PARTS = {"reasoning", "thinking"}
_TOOL_CALL_PARTS = {"tool_call", "tool_calls"}
_THINK = "<think>\n{}\n</think>\n\n"  # how a reasoning part joins the reply (Qwen 3 / DeepSeek-R1 style)


def _part_text(part: Mapping[str, Any], *keys: str) -> str | None:
    for key in keys:
        if isinstance(part.get(key), str):
            return part[key]
    return None


def _content(value: Any, field: str, tools_out: list | None = None) -> tuple[str | None, list[dict[str, Any]] | None]:
    """(text, tool calls) of a turn's content; text is None when there is no content.

    ``content`` is a string or a list of parts: strings, text parts (OpenAI's
    ``{"type": "text", "text"}``, LLaMA-Factory v1's ``{"type": "text", "value"}``) joined
    with newlines, reasoning parts put before the reply as ``<think>`` blocks, LLaMA-Factory
    v1's ``tool_call`` parts as tool calls and its ``tools`` parts appended to ``tools_out``.
    Any other part (image, audio, video, file) is refused naming the part and its type:
    finetui trains on text.
    """
    if value is None or value is _MISSING:
        return None, None
    if isinstance(value, str):
        return value, None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value), None
    if isinstance(value, dict) and "type" in value:
        value = [value]  # a single part written without its list
    if not isinstance(value, list):
        raise RecordError(field, f"expected text, got {_type_name(value)}")
    texts: list[str] = []
    reasoning: list[str] = []
    calls: list[dict[str, Any]] = []
    for j, part in enumerate(value):
        where = f"{field}[{j}]"
        if isinstance(part, str):
            texts.append(part)
            continue
        if not isinstance(part, dict):
            raise RecordError(where, f"expected a content part object, got {_type_name(part)}")
        kind = part.get("type", "text")
        if not isinstance(kind, str):
            raise RecordError(f"{where}.type", f"expected a part type name, got {_type_name(kind)}")
        if kind in _TEXT_PARTS or kind == "refusal":
            text = _part_text(part, "text", "value", "content", "refusal")
            if text is None:
                raise RecordError(where, f"{kind} part has no text ('text' or 'value')")
            texts.append(text)
        elif kind in _REASONING_PARTS:
            text = _part_text(part, "value", "text", "thinking", "reasoning", "content")
            if text is None:
                raise RecordError(where, f"{kind} part has no text ('value' or 'text')")
            if text.strip():
                reasoning.append(text.strip())
        elif kind in _TOOL_CALL_PARTS:
            raw = part.get("value", part.get("text", part.get("function")))
            parsed = None
            if isinstance(raw, str):
                parsed = _parse_tool_calls(raw)
            elif isinstance(raw, (dict, list)):
                parsed = _parse_tool_calls(json.dumps(raw))
            if parsed is None:
                raise RecordError(where, f"{kind} part is not a JSON {{\"name\", \"arguments\"}} object")
            calls.extend(parsed)
        elif kind == "tools":
            found = parse_tools(part.get("value", part.get("tools")), f"{where}.value")
            if found and tools_out is not None:
                tools_out.extend(found)
        else:
            raise RecordError(
                where, f"{kind} parts are not supported: finetui trains on text (remove the {kind} parts or the record)"
            )
    text = "\n".join(texts)
    if reasoning:
        text = _THINK.format("\n\n".join(reasoning)) + text
    return text, calls or None


# A record nested deeper than this is refused (no dataset format comes near it; code that
# walks records recursively, the parser included, would run out of stack near 1,000).
MAX_JSON_DEPTH = 100


def nesting_problem(value: Any, text: str | None = None, start: int = 0, end: int | None = None) -> str | None:
    """Why a parsed JSON value is nested too deeply to use, or None. ``text[start:end]``:
    its source, when at hand, so the walk runs only for text with that many brackets."""
    if text is not None:
        end = len(text) if end is None else end
        if text.count("[", start, end) + text.count("{", start, end) <= MAX_JSON_DEPTH:
            return None
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > MAX_JSON_DEPTH:
            return too_deep_message()
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return None


def too_deep_message() -> str:
    return f"JSON nested too deeply (more than {MAX_JSON_DEPTH} levels of [ and {{)"


class JsonTooDeep(ValueError):
    """JSON nested deeper than MAX_JSON_DEPTH."""

    def __init__(self) -> None:
        super().__init__(too_deep_message())


def json_text(text: str) -> Any:
    """``json.loads`` for JSON held in a field of a record (tool calls, tool schemas):
    json.JSONDecodeError when invalid, JsonTooDeep when nested too deeply, never a
    RecursionError."""
    try:
        value = json.loads(text)
    except RecursionError:
        raise JsonTooDeep() from None
    if nesting_problem(value, text):
        raise JsonTooDeep()
    return value


def _parse_tool_calls(text: str) -> list[dict[str, Any]] | None:
    """OpenAI-style tool_calls from a ShareGPT function_call value, or None if it is not
    the JSON ``{"name", "arguments"}`` (or a list of them)."""
    try:
        parsed = json_text(text)
    except (json.JSONDecodeError, TypeError, JsonTooDeep):
        return None
    items = parsed if isinstance(parsed, list) else [parsed]
    calls = []
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            return None
        arguments = item.get("arguments", item.get("parameters", {}))
        if isinstance(arguments, str):
            try:
                arguments = json_text(arguments)
            except json.JSONDecodeError:
                pass  # keep the string: some datasets store free-form arguments
            except JsonTooDeep:
                return None
        calls.append({"type": "function", "function": {"name": item["name"], "arguments": arguments}})
    return calls or None


# Per-turn training flags: LLaMA-Factory v1's loss_weight, Axolotl's training / weight.
_TRAIN_KEYS = ("loss_weight", "training", "train", "weight")


def _train_flag(turn: Mapping[str, Any], where: str) -> bool:
    """False when the turn says it is not trained (``loss_weight: 0``, ``training: false``)."""
    for key in _TRAIN_KEYS:
        if key not in turn or turn[key] is None:
            continue
        value = turn[key]
        if isinstance(value, bool):
            return value
        if isinstance(value, (int, float)):
            return value > 0
        if isinstance(value, str) and value.strip().lower() in ("true", "false", "0", "1", "0.0", "1.0"):
            return value.strip().lower() in ("true", "1", "1.0")
        raise RecordError(f"{where}.{key}", f"expected a number or true/false, got {_type_name(value)}")
    return True


def parse_turns(
    turns: Any,
    field: str,
    tags: Mapping[str, str] | None = None,
    *,
    repairs: list[tuple[str, str]] | None = None,
    tools_out: list[dict[str, Any]] | None = None,
) -> tuple[str | None, list[Message]]:
    """(system, messages) from a ShareGPT or OpenAI turn list.

    A system turn is accepted at the start only; consecutive turns of one role are
    tolerated. An assistant turn with ``loss_weight: 0`` (or ``training: false``) is kept
    as context with ``train=False``. An empty user/assistant/tool turn is an error naming
    ``field[i].value``, unless ``repairs`` is a list: then the turn is dropped, alone when a
    turn of its role stands next to it, else with the rest of its exchange (the user turn
    that opens it up to the next user turn), so the roles still alternate; each drop is
    appended to ``repairs`` as (field, message). Tool schemas found in content parts are
    appended to ``tools_out``.
    """
    if not isinstance(turns, list):
        raise RecordError(field, f"expected a list of turns, got {_type_name(turns)}")
    if not turns:
        raise RecordError(field, "no turns")
    merged_tags = dict(DEFAULT_TAGS)
    if tags:
        merged_tags.update(tags)
    system: str | None = None
    # (message, its field, the error if the turn is empty)
    parsed: list[tuple[Message, str, RecordError | None]] = []
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
                f"unknown role {shown(turn[role_key])} (expected human/user, gpt/assistant, system, "
                "function_call, observation/tool)",
            )
        content, part_calls = _content(turn.get(content_key) if content_key else None, content_field, tools_out)
        tool_calls = turn.get("tool_calls") if isinstance(turn.get("tool_calls"), list) else None
        tool_calls = tool_calls or part_calls
        if role == "system":
            if parsed:
                raise RecordError(content_field, "system turn after the conversation started")
            if content and content.strip():
                system = content if system is None else f"{system}\n\n{content}"
            continue
        train = _train_flag(turn, where) if role in ("assistant", "function_call") else True
        if role == "function_call":
            if content is None or not content.strip():
                if tool_calls:
                    parsed.append((Message("assistant", "", tool_calls=tool_calls, train=train), content_field, None))
                    continue
                error = RecordError(content_field, "empty turn")
                if repairs is None:
                    raise error
                parsed.append((Message("assistant", ""), content_field, error))
                continue
            calls = _parse_tool_calls(content)
            if calls is not None:
                parsed.append((Message("assistant", "", tool_calls=calls, train=train), content_field, None))
            else:
                parsed.append((Message("assistant", content, train=train), content_field, None))
            continue
        if (content is None or not content.strip()) and not (role == "assistant" and tool_calls):
            error = RecordError(content_field, "empty turn" if content is not None else "missing content")
            if repairs is None:
                raise error
            parsed.append((Message(role, content or ""), content_field, error))
            continue
        parsed.append((Message(role, content or "", tool_calls=tool_calls or None, train=train), content_field, None))
    empty = [error for _, _, error in parsed if error is not None]
    if not empty:
        return system, [m for m, _, _ in parsed]
    if repairs is None:
        raise empty[0]
    return system, _drop_empty_turns(parsed, field, repairs)


def _drop_empty_turns(
    parsed: list[tuple[Message, str, RecordError | None]], field: str, repairs: list[tuple[str, str]]
) -> list[Message]:
    """The turns left once every empty one is dropped (see parse_turns); raises the first
    empty turn's error when nothing trainable would be left."""
    n = len(parsed)
    roles = [m.role for m, _, _ in parsed]
    # Exchange k: a user turn (or the first turn) up to the next user turn after a reply.
    exchange, k = [], 0
    for i, role in enumerate(roles):
        if i and role == "user" and roles[i - 1] != "user":
            k += 1
        exchange.append(k)
    drop: set[int] = set()
    notes: list[tuple[str, set[int]]] = []
    for i, (message, where, error) in enumerate(parsed):
        if error is None or i in drop:
            continue
        if (i and roles[i - 1] == roles[i] and i - 1 not in drop) or (i + 1 < n and roles[i + 1] == roles[i]):
            gone = {i}  # a neighbour of the same role stays: the roles still alternate
        else:
            gone = {j for j in range(n) if exchange[j] == exchange[i]}
        drop |= gone
        notes.append((where, gone))
    kept = [m for i, (m, _, _) in enumerate(parsed) if i not in drop]
    if not any(m.role == "assistant" for m in kept):
        raise next(error for _, _, error in parsed if error is not None)
    for where, gone in notes:
        first, last = min(gone), max(gone)
        span = f"{field}[{first}]" if first == last else f"{field}[{first}..{last}]"
        what = "empty turn dropped" if len(gone) == 1 else "empty turn dropped with its exchange"
        repairs.append((where, f"{what} ({span}; {len(kept)} of {n} turns kept)"))
    return kept


def _require_assistant(messages: list[Message], field: str) -> None:
    if not any(m.role == "assistant" for m in messages):
        raise RecordError(field, "no assistant turn")
    if not any(m.role == "assistant" and m.train for m in messages):
        raise RecordError(field, "no assistant turn is trained (every one has loss_weight 0 or training false)")


def parse_tools(value: Any, field: str = "tools") -> list[dict[str, Any]] | None:
    """Tool schemas as OpenAI ``{"type": "function", "function": {...}}`` objects."""
    if value is None or value is _MISSING:
        return None
    if isinstance(value, str):
        if not value.strip():
            return None
        try:
            value = json_text(value)
        except json.JSONDecodeError as exc:
            raise RecordError(field, f"not valid JSON: {exc.msg} (column {exc.colno})") from None
        except JsonTooDeep as exc:
            raise RecordError(field, str(exc)) from None
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

    def in_block(field: str | None, message: str) -> str:
        # parse_turns names a synthetic list (text[2].content); name the block instead.
        block = re.search(r"\[(\d+)\]", field or "")
        return message + (f" in <|im_start|> block {int(block.group(1)) + 1}" if block else "")

    repairs: list[tuple[str, str]] = []
    try:
        system, messages = parse_turns(turns, key, repairs=repairs)
    except RecordError as exc:
        raise RecordError(key, in_block(exc.field, exc.message)) from None
    _require_assistant(messages, key)
    repairs = [(key, in_block(field, re.sub(r" \(.*\)$", "", message))) for field, message in repairs]
    return Conversation(messages=messages, system=system, repairs=repairs)


def _system(record: dict, columns: Mapping[str, str], *aliases: str) -> str | None:
    """A system prompt column: ``columns["system"]``, else one named like one
    (:data:`SYSTEM_COLUMNS`)."""
    key, value = _field(record, columns, "system", aliases, SYSTEM_COLUMNS[1:])
    return _text(value, key, required=False)


def _qa(record: dict, columns: Mapping[str, str], tags: Any) -> Conversation:
    """Also TRL's conversational prompt/completion rows: ``prompt`` and ``completion`` as
    message lists."""
    qkey, question = _field(record, columns, "question", ("prompt", "query"), ("prompt", "input"))
    akey, answer = _field(record, columns, "answer", ("response",), ("completion", "response", "output"))
    system = _system(record, columns)
    repairs: list[tuple[str, str]] = []
    if isinstance(question, list):
        turn_system, prompt = parse_turns(question, qkey, tags, repairs=repairs)
        if turn_system:
            system = turn_system if not system else f"{system}\n\n{turn_system}"
    else:
        prompt = [Message("user", _text(question, qkey))]
    if isinstance(answer, list):
        _, reply = parse_turns(answer, akey, tags)
        if not reply or reply[-1].role != "assistant":
            raise RecordError(akey, "the completion does not end with an assistant turn")
    else:
        reply = [Message("assistant", _text(answer, akey))]
    messages = prompt + reply
    _require_assistant(messages, akey)
    return Conversation(messages=messages, system=system, repairs=repairs)


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
    repairs: list[tuple[str, str]] = []
    hkey, history = _field(record, columns, "history")
    if history is not _MISSING and history is not None:
        if not isinstance(history, list):
            raise RecordError(hkey, f"expected a list of [question, answer] pairs, got {_type_name(history)}")
        empty: list[str] = []
        for i, pair in enumerate(history):
            if not isinstance(pair, (list, tuple)) or len(pair) != 2:
                raise RecordError(f"{hkey}[{i}]", "expected a [question, answer] pair")
            question = _text(pair[0], f"{hkey}[{i}][0]", allow_empty=True)
            answer = _text(pair[1], f"{hkey}[{i}][1]", allow_empty=True)
            if not question.strip() or not answer.strip():
                # One empty half drops its pair (the exchange), not the record.
                empty.append(f"{hkey}[{i}][{0 if not question.strip() else 1}]")
                continue
            messages.append(Message("user", question))
            messages.append(Message("assistant", answer))
        n = 2 * len(history) + 2
        for where in empty:
            repairs.append((where, f"empty turn dropped with its exchange ({where[:-3]}; {n - 2 * len(empty)} of {n} turns kept)"))
    messages.append(Message("user", prompt))
    messages.append(Message("assistant", _text(output, okey)))
    tkey, tools = _field(record, columns, "tools")
    return Conversation(
        messages=messages, system=_system(record, columns), tools=parse_tools(tools, tkey), repairs=repairs
    )


def _openorca(record: dict, columns: Mapping[str, str], tags: Any) -> Conversation:
    skey, system = _field(record, columns, "system_prompt", ("system",), SYSTEM_COLUMNS)
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
        repairs: list[tuple[str, str]] = []
        part_tools: list[dict[str, Any]] = []
        system, messages = parse_turns(turns, key, tags, repairs=repairs, tools_out=part_tools)
        _require_assistant(messages, key)
        extra_system = _system(record, columns)
        if extra_system:
            system = extra_system if not system else f"{extra_system}\n\n{system}"
        tkey, tools = _field(record, columns, "tools")
        return Conversation(
            messages=messages, system=system, tools=parse_tools(tools, tkey) or part_tools or None, repairs=repairs
        )

    return convert


def _same(a: Message, b: Message) -> bool:
    return a.role == b.role and a.content == b.content


# Anthropic HH-RLHF style transcripts: "\n\nHuman: ...\n\nAssistant: ..." in one string.
_HH_TURN = re.compile(r"(?:^|\n\n)(Human|Assistant):[ \t]?")


def _hh_turns(text: str) -> list[dict[str, str]] | None:
    """The turns of an HH-style transcript, or None when ``text`` is not one."""
    if not text.lstrip().startswith("Human:") or "\n\nAssistant:" not in text:
        return None
    marks = list(_HH_TURN.finditer(text.lstrip()))
    body = text.lstrip()
    turns = []
    for k, mark in enumerate(marks):
        end = marks[k + 1].start() if k + 1 < len(marks) else len(body)
        turns.append({"role": "user" if mark.group(1) == "Human" else "assistant", "content": body[mark.end():end].strip()})
    return turns


def _preference(record: dict, columns: Mapping[str, str], tags: Mapping[str, str] | None) -> Conversation:
    """Chosen/rejected pairs; SFT trains the chosen reply, never the rejected one."""
    ckey, chosen = _field(record, columns, "chosen", (), ("chosen_messages",))
    rkey, rejected = _field(record, columns, "rejected", (), ("rejected_messages",))
    if chosen is _MISSING:
        raise RecordError(ckey, "missing field")
    if rejected is _MISSING:
        raise RecordError(rkey, "missing field")

    system: str | None = None
    prompt: list[Message] | None = None
    repairs: list[tuple[str, str]] = []
    tkey, turns = _field(record, columns, "conversations", ("messages",), ("messages",))
    pkey, prompt_value = _field(record, columns, "prompt", ("instruction", "question"), ("instruction", "question"))
    if turns is not _MISSING:
        system, prompt = parse_turns(turns, tkey, tags, repairs=repairs)
    elif prompt_value is not _MISSING:
        if isinstance(prompt_value, list):
            system, prompt = parse_turns(prompt_value, pkey, tags, repairs=repairs)
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
            hh = _hh_turns(value) if prompt is None else None
            if hh is not None:
                try:
                    return parse_turns(hh, key, tags)[1]
                except RecordError as exc:
                    turn = re.search(r"\[(\d+)\]", exc.field or "")
                    where = f" (turn {int(turn.group(1)) + 1} of the transcript)" if turn else ""
                    raise RecordError(key, exc.message + where) from None
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
    return Conversation(
        messages=prompt + chosen_msgs, system=system, kind="preference", rejected=rejected_msgs[0], repairs=repairs
    )


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


def kto_label(record: Mapping[str, Any], columns: Mapping[str, str] | None = None) -> tuple[str, bool] | None:
    """(field, desirable) for a KTO-style row (TRL's ``label``, LLaMA-Factory's ``kto_tag``
    column), or None when the row carries no such label. ``label`` counts only as
    true/false (a class name or number in a ``label`` column is something else), unless
    the column is mapped as ``kto_tag``, when 1/0 count too."""
    columns = columns or {}
    mapped = "kto_tag" in columns
    key, value = _field(record, columns, "kto_tag", (), ("label",))
    if value is _MISSING or value is None:
        return None
    if isinstance(value, bool):
        return key, value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return key, value.strip().lower() == "true"
    if mapped and isinstance(value, (int, float)) and value in (0, 1):
        return key, bool(value)
    if mapped:
        raise RecordError(key, f"expected a KTO label true/false, got {shown(value, 60)}")
    return None


KTO_UNDESIRABLE = "undesirable reply (KTO label false): not trained, SFT learns from desirable replies only"


class _Reads(dict):
    """A record that notes which of its keys a converter read (every converter reads the
    record through :func:`_field`, i.e. ``get`` and ``[]``)."""

    def __init__(self, record: Mapping[str, Any]):
        super().__init__(record)
        self.read: set[str] = set()

    def __getitem__(self, key):
        self.read.add(key)
        return super().__getitem__(key)

    def get(self, key, default=None):
        self.read.add(key)
        return super().get(key, default)


def has_value(value: Any) -> bool:
    """Whether a column's value holds anything (not null, not blank, not an empty list)."""
    if value is None:
        return False
    if isinstance(value, str):
        return bool(value.strip())
    if isinstance(value, (list, dict, tuple)):
        return bool(value)
    return True


def unused_columns(record: Mapping[str, Any], used: set[str]) -> list[str]:
    """The record's columns with a value that the conversion did not read."""
    return [key for key, value in record.items() if key not in used and has_value(value)]


def to_conversation(
    record: Any,
    fmt: str,
    columns: Mapping[str, str] | None = None,
    tags: Mapping[str, str] | None = None,
    used: set[str] | None = None,
    roles: Mapping[str, str] | None = None,
) -> Conversation:
    """Normalise one record; raise RecordError naming the field that is wrong, or
    RecordSkipped for a row that is deliberately not trained (a KTO ``label: false``).

    ``used``, when given, receives the record's keys the conversion read (so the caller can
    tell which columns went unused: :func:`unused_columns`). ``roles``: a transcript's
    speaker -> role mapping. A transcript record here is one text of ``Name: text`` lines;
    rows of utterances are grouped into conversations by the readers."""
    if fmt == "transcript":
        from finetui.engine.data import transcripts

        if not isinstance(record, dict):
            raise RecordError(None, f"record is {_type_name(record)}, not an object")
        if transcripts.is_row(record, columns):
            raise RecordError(None, "one utterance of a transcript: its conversation is all the rows with its "
                              "conversation id, read together from the file")
        reads = _Reads(record)
        conversation = transcripts.from_text(reads, columns, transcripts.check_roles(roles))[0]
        if used is not None:
            used.update(reads.read)
        return conversation
    if fmt not in _CONVERTERS:
        raise DataError(f"data.format: unknown format {fmt!r} (known: {', '.join(FORMATS)})")
    if not isinstance(record, dict):
        raise RecordError(None, f"record is {_type_name(record)}, not an object")
    label = kto_label(record, columns) if fmt != "preference" else None
    if used is None:
        conversation = _CONVERTERS[fmt](record, columns or {}, tags or None)
    else:
        reads = _Reads(record)
        conversation = _CONVERTERS[fmt](reads, columns or {}, tags or None)
        used.update(reads.read)
        if label is not None:
            used.add(label[0])
    if label is not None and not label[1]:
        raise RecordSkipped(label[0], KTO_UNDESIRABLE)
    return conversation
