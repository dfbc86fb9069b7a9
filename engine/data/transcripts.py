"""Speaker-labelled transcripts -> conversations (``data.format: transcript``).

Light module (stdlib + :mod:`engine.data.formats`). Two shapes, as podcasts, interviews
and meeting minutes come:

* rows of one utterance each: a speaker (``speaker``, ``speaker_name``, ``name``,
  ``role``, ``from``) and its words (``text``, ``utterance``, ``content``, ``message``,
  ``value``, ``transcript``), grouped into conversations by an id column
  (``conversation_id``, ``episode_id``, ``dialog_id``, ``session_id`` ... see
  :data:`ID_KEYS`) in the order of the file; rows without an id column, under an explicit
  ``format: transcript``, are one conversation per file. The readers group them
  (:class:`Groups`); :func:`formats.detect_one` recognises such a row only when it has all
  three, so no other format's records look like one;
* ``Name: text`` lines: a ``.txt`` file whose lines mostly carry a speaker label is read
  one conversation per block (a blank line or a ``---`` line between conversations, or
  only ``---`` lines when blank lines stand between single turns; :func:`sniff`), and a
  ``text`` column holding such lines is one conversation a record. As text is also what
  pretraining data is, this shape becomes a transcript only when it is asked for (a
  ``data.roles`` mapping, or ``format: transcript``); otherwise it stays text and the
  readers say that it looks like a transcript and how to map its speakers.

Roles: ``data.roles`` (``--roles Host=user,Guest=assistant``) maps a speaker to user,
assistant or system (exactly, else ignoring case); speakers named like a role (user,
assistant, human, gpt, system ...) need no mapping. Consecutive turns of one role merge
into one message (two hosts mapped to user are one user turn). A speaker without a role
makes its conversation invalid, reported where it first speaks with how to map it; system
turns are the system prompt and may only open a conversation; an empty utterance is
dropped and counted as a repair.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from finetui.engine.data.conversation import Conversation, Message
from finetui.engine.data.formats import SYSTEM_COLUMNS, DataError, RecordError, _field, _MISSING, _role_of, _type_name

ROLES = ("user", "assistant", "system")  # engine.config.TRANSCRIPT_ROLES (a test checks)
SPEAKER_KEYS = ("speaker", "speaker_name", "name", "role", "from")
TEXT_KEYS = ("text", "utterance", "content", "message", "value", "transcript")
ID_KEYS = (
    "conversation_id", "episode_id", "dialog_id", "dialogue_id", "session_id", "thread_id", "chat_id", "conv_id",
    "episode", "conversation", "dialog", "dialogue",
)

# "Dr. Jane Smith: Thank you." A label starts with a letter, has at most four words and no
# colon; a colon not followed by a space (http://, 10:30) is not a label.
_LABEL = re.compile(r"^(?P<name>[^\W\d_][\w .'\u2019&()-]{0,39}?)[ \t]*:[ \t]+(?P<text>\S.*)$")
_SEPARATOR = re.compile(r"^[ \t]*-{3,}[ \t]*$")
MAX_LABEL_WORDS = 4
SNIFF_LINES = 4  # labelled lines a .txt file needs before it is read as a transcript
SNIFF_SHARE = 0.8  # of its non-blank lines
TEXT_SHARE = 0.6  # of a text record's non-blank lines, for the record to be a transcript


class TurnError(RecordError):
    """A problem with one turn of a transcript: ``turn`` says where it is."""

    def __init__(self, turn: "Turn", field: str | None, message: str):
        super().__init__(field, message)
        self.turn = turn


@dataclass
class Turn:
    """One utterance: its speaker, words, and where it is (a row's line and row, or the
    1-based line within a text)."""

    speaker: Any
    text: Any
    line: int | None = None
    row: int | None = None
    offset: int | None = None  # line within a text record
    field: str = "text"  # the key its words are in


# ------------------------------------------------------------------------ lines


def label(line: str) -> tuple[str, str] | None:
    """(speaker, words) of a ``Name: text`` line, or None."""
    m = _LABEL.match(line.strip())
    if m is None or len(m.group("name").split()) > MAX_LABEL_WORDS:
        return None
    return m.group("name").strip(), m.group("text").strip()


def is_separator(line: str) -> bool:
    return bool(_SEPARATOR.match(line))


def line_speakers(lines: Iterable[str], *, min_labelled: int = 2, share: float = TEXT_SHARE) -> Counter | None:
    """Turns per speaker when ``lines`` read as a transcript (at least ``min_labelled``
    labelled lines, ``share`` of the non-blank ones, two speakers or more, each speaking
    again on average: ``Title: / Author: / Date:`` headers do not), else None."""
    content = [line for line in lines if line.strip() and not is_separator(line)]
    names = [found[0] for found in map(label, content) if found]
    if len(names) < min_labelled or len(names) < share * len(content):
        return None
    speakers = Counter(names)
    if len(speakers) < 2 or len(speakers) > max(2, len(names) // 2):
        return None
    return speakers


def sniff(head: bytes) -> str | None:
    """How a .txt file that starts with ``head`` is read as a transcript: "blocks" (a
    blank or ``---`` line between conversations), "dashes" (only ``---`` lines: blank
    lines stand between single turns), or None (not a transcript: read as text)."""
    text = head.decode("utf-8", errors="replace")
    lines = text.splitlines()
    if len(head) >= (1 << 20) and lines:
        lines = lines[:-1]  # cut mid-line
    if line_speakers(lines, min_labelled=SNIFF_LINES, share=SNIFF_SHARE) is None:
        return None
    blocks, current = [], 0
    for line in lines:
        if not line.strip() or is_separator(line):
            if current:
                blocks.append(current)
            current = 0
        elif label(line):
            current += 1
    if current:
        blocks.append(current)
    if len(blocks) >= 3 and sum(1 for n in blocks if n == 1) >= SNIFF_SHARE * len(blocks):
        return "dashes"
    return "blocks"


def text_turns(text: str, key: str = "text") -> tuple[list[Turn], list[int]]:
    """(turns, offsets of lines before the first label) of ``Name: text`` lines; a line
    without a label continues the turn before it."""
    turns: list[Turn] = []
    leading: list[int] = []
    for offset, line in enumerate(text.splitlines(), 1):
        if not line.strip() or is_separator(line):
            continue
        found = label(line)
        if found:
            turns.append(Turn(found[0], found[1], offset=offset, field=key))
        elif turns:
            turns[-1].text = f"{turns[-1].text}\n{line.strip()}"
        else:
            leading.append(offset)
    return turns, leading


# ------------------------------------------------------------------------ rows


def row_keys(record: Any, columns: Mapping[str, str] | None = None) -> tuple[str, str, str | None] | None:
    """(speaker key, text key, id key or None) when ``record`` is one utterance of a
    transcript (a speaker and its words), else None."""
    if not isinstance(record, dict):
        return None
    columns = columns or {}
    skey, speaker = _field(record, columns, "speaker", (), SPEAKER_KEYS[1:])
    tkey, text = _field(record, columns, "text", ("utterance",), TEXT_KEYS[1:])
    if speaker is _MISSING or text is _MISSING:
        return None
    if not isinstance(speaker, (str, int)) or isinstance(speaker, bool) or not isinstance(text, (str, type(None))):
        return None
    ikey, value = _field(record, columns, "conversation_id", ("episode_id",), ID_KEYS[1:])
    return skey, tkey, (ikey if value is not _MISSING else None)


def is_row(record: Any, columns: Mapping[str, str] | None = None, *, with_id: bool = False) -> bool:
    keys = row_keys(record, columns)
    return keys is not None and (not with_id or keys[2] is not None)


class Groups:
    """Rows of a row-shaped transcript, grouped by their conversation id in the order each
    id first appears, until the file they are in has been read (:meth:`take`)."""

    def __init__(self, columns: Mapping[str, str] | None = None):
        self.columns = dict(columns or {})
        self.groups: dict[Any, list] = {}

    def add(self, record) -> None:
        keys = row_keys(record.data, self.columns)
        ident = record.data.get(keys[2]) if keys and keys[2] else None
        if isinstance(ident, (list, dict)):
            ident = repr(ident)
        self.groups.setdefault(ident, []).append(record)

    def take(self) -> list[list]:
        groups, self.groups = list(self.groups.values()), {}
        return groups


# ------------------------------------------------------------------------ roles


def check_roles(roles: Mapping[str, str] | None) -> dict[str, str]:
    """``roles`` validated: each speaker -> user, assistant or system."""
    out: dict[str, str] = {}
    for speaker, role in (roles or {}).items():
        if not isinstance(role, str) or role.strip().lower() not in ROLES:
            raise DataError(f"data.roles: {speaker}={role}: a role is one of {', '.join(ROLES)}")
        out[str(speaker).strip()] = role.strip().lower()
    return out


def role_for(speaker: Any, roles: Mapping[str, str] | None) -> str | None:
    """The role of a speaker: its mapping (exact, else ignoring case), else the role its
    name says (user, human, assistant, gpt, system ...), else None."""
    name = str(speaker).strip()
    roles = roles or {}
    if name in roles:
        return roles[name]
    folded = name.casefold()
    for key, role in roles.items():
        if key.strip().casefold() == folded:
            return role
    role = _role_of(name, {})
    return role if role in ROLES else None


def roles_hint(speakers: Iterable[Any]) -> str:
    """``--roles Host=user,Guest=assistant`` for the speakers named (the first a user, the
    second an assistant, the rest users)."""
    names = list(dict.fromkeys(str(s) for s in speakers))
    pairs = [f"{name}={'assistant' if i == 1 else 'user'}" for i, name in enumerate(names)]
    return f"--roles {','.join(pairs)}"


def _speaker_list(speakers: Counter) -> str:
    """The speakers in the order they first speak, with their turns."""
    shown = [f"{name} ({n} turn{'s' if n != 1 else ''})" for name, n in list(speakers.items())[:6]]
    if len(speakers) > 6:
        shown.append(f"{len(speakers) - 6} more")
    return ", ".join(shown)


def sample_speakers(records: Iterable[Any], columns: Mapping[str, str] | None = None) -> Counter:
    """Turns per speaker in sampled records of either shape."""
    speakers: Counter = Counter()
    for record in records:
        keys = row_keys(record, columns)
        if keys is not None:
            speakers[str(record[keys[0]]).strip()] += 1
            continue
        text = _text_of(record, columns)
        if text is not None:
            speakers.update(str(turn.speaker) for turn in text_turns(text)[0])
    return speakers


def require_roles(records: list[Any], columns: Mapping[str, str] | None, roles: Mapping[str, str] | None) -> None:
    """Raise DataError when no speaker of the sampled records has a role: the whole source
    would be refused record by record, so it is said once, with the mapping to give."""
    speakers = sample_speakers(records, columns)
    if not speakers or any(role_for(name, roles) for name in speakers):
        return
    hint = roles_hint(speakers)
    mapping = "{" + ", ".join(part.replace("=", ": ") for part in hint.removeprefix("--roles ").split(",")) + "}"
    given = f" (data.roles maps {', '.join(roles)}, none of them)" if roles else ""
    raise DataError(
        f"transcript speakers have no role{given}: {_speaker_list(speakers)}; map them, e.g. {hint} "
        f"(data.roles: {mapping}); roles are user, assistant or system"
    )


def text_transcript(records: list[Any], columns: Mapping[str, str] | None = None) -> Counter | None:
    """Turns per speaker when most sampled records hold ``Name: text`` lines in their text
    (:func:`line_speakers`), else None."""
    texts = [_text_of(record, columns) for record in records]
    texts = [t for t in texts if t is not None]
    if not texts:
        return None
    shaped = [line_speakers(t.splitlines()) for t in texts]
    found = [s for s in shaped if s]
    if len(found) < SNIFF_SHARE * len(texts):
        return None
    return sum(found, Counter())


def looks_like_note(source: str, speakers: Counter) -> str:
    """What the readers say of a text source that reads as a transcript but was not asked
    to be one (no data.roles): it is trained as text."""
    hint = roles_hint(speakers)
    return (f"{source}: the text looks like a transcript (speakers {_speaker_list(speakers)}) and is trained as "
            f"plain text; to train it as conversations, map the speakers, e.g. {hint} (data.roles)")


def _text_of(record: Any, columns: Mapping[str, str] | None) -> str | None:
    if not isinstance(record, dict):
        return None
    _, value = _field(record, columns or {}, "text", ("transcript",), ("transcript", "dialogue", "content"))
    return value if isinstance(value, str) else None


# ------------------------------------------------------------------------ conversion


Dropped = list  # [(Turn, message)]: what a conversion left out, each where it was


def conversation(turns: list[Turn], roles: Mapping[str, str] | None, *, system: str | None = None,
                 where: str = "transcript", dropped: Dropped | None = None) -> Conversation:
    """The conversation of a transcript's turns. Raises TurnError for a speaker without a
    role (naming every such speaker) or a system turn after the start; RecordError when no
    turn is an assistant's. Empty utterances are dropped, each noted in ``repairs`` (and,
    with its turn, in ``dropped``)."""
    if not turns:
        raise RecordError(where, "no turns")
    unmapped: dict[str, Turn] = {}
    for turn in turns:
        if not isinstance(turn.speaker, (str, int)) or isinstance(turn.speaker, bool) or not str(turn.speaker).strip():
            raise TurnError(turn, "speaker", f"expected a speaker name, got {_type_name(turn.speaker)}")
        if role_for(turn.speaker, roles) is None:
            unmapped.setdefault(str(turn.speaker).strip(), turn)
    if unmapped:
        names = list(unmapped)
        quoted = ", ".join(repr(name) for name in names)
        one = len(names) == 1
        example = ",".join(f"{name}=user" for name in names)
        raise TurnError(
            next(iter(unmapped.values())), "speaker",
            f"speaker{'' if one else 's'} {quoted} {'has' if one else 'have'} no role: add "
            f"{'it' if one else 'them'} to --roles (data.roles), e.g. {example}; a role is user, assistant or system",
        )
    messages: list[Message] = []
    system_parts = [system] if system else []
    repairs: list[tuple[str, str]] = []
    for turn in turns:
        text = turn.text
        if isinstance(text, (int, float)) and not isinstance(text, bool):
            text = str(text)
        if text is not None and not isinstance(text, str):
            raise TurnError(turn, turn.field, f"expected text, got {_type_name(text)}")
        role = role_for(turn.speaker, roles)
        if not text or not text.strip():
            message = f"empty turn dropped ({turn.speaker})"
            repairs.append((locate(turn), message))
            if dropped is not None:
                dropped.append((turn, message))
            continue
        if role == "system":
            if messages:
                raise TurnError(turn, "speaker", f"{turn.speaker} (system) speaks after the conversation started: "
                                "map the speaker to user or assistant")
            system_parts.append(text.strip())
            continue
        if messages and messages[-1].role == role:
            messages[-1].content = f"{messages[-1].content}\n{text.strip()}"
        else:
            messages.append(Message(role, text.strip()))
    if not any(m.role == "assistant" for m in messages):
        speakers = ", ".join(dict.fromkeys(str(t.speaker).strip() for t in turns))
        raise RecordError(where, f"no assistant turn: none of its speakers ({speakers}) is mapped to assistant")
    return Conversation(messages=messages, system="\n\n".join(system_parts) or None, repairs=repairs)


def locate(turn: Turn) -> str:
    """The field a turn's problem is in: its key, and its line within a text record when
    the record's own line does not say where it is."""
    return f"{turn.field} line {turn.offset}" if turn.offset and turn.line is None else turn.field


def from_rows(rows: list, columns: Mapping[str, str] | None, roles: Mapping[str, str] | None,
              used: list[set[str]] | None = None) -> tuple[Conversation, Dropped]:
    """The conversation of a group of RawRecords (rows of one conversation id), and what
    it dropped, by turn (each turn carries its row's line). ``used`` receives each row's
    keys read."""
    columns = columns or {}
    turns: list[Turn] = []
    system = None
    for record in rows:
        keys = row_keys(record.data, columns)
        if keys is None:
            raise TurnError(Turn(None, None, record.line, record.row), None,
                            "not a transcript row (a speaker and its text) among the rows of its conversation")
        skey, tkey, ikey = keys
        turns.append(Turn(record.data[skey], record.data.get(tkey), record.line, record.row, field=tkey))
        read = {skey, tkey} | ({ikey} if ikey else set())
        if system is None:
            sk, value = _field(record.data, columns, "system", (), SYSTEM_COLUMNS[1:])
            if isinstance(value, str) and value.strip():
                system = value
            if value is not _MISSING:
                read.add(sk)
        if used is not None:
            used.append(read)
    dropped: Dropped = []
    conv = conversation(turns, roles, system=system, where=turns[0].field if turns else "transcript", dropped=dropped)
    return conv, dropped


def from_text(record: Mapping[str, Any], columns: Mapping[str, str] | None, roles: Mapping[str, str] | None,
              first_line: int | None = None) -> tuple[Conversation, Dropped]:
    """The conversation of one record whose text holds ``Name: text`` lines, and what it
    dropped, by turn. ``first_line``: the file line the text starts on (a .txt block), so
    that each turn knows its own. Text before the first label (a title, ``[music]``) is
    dropped, noted in ``repairs``."""
    columns = columns or {}
    key, value = _field(record, columns, "text", ("transcript",), ("transcript", "dialogue", "content"))
    if value is _MISSING or value is None:
        raise RecordError(key, "missing field")
    if not isinstance(value, str):
        raise RecordError(key, f"expected text, got {_type_name(value)}")
    turns, leading = text_turns(value, key)
    if first_line is not None:
        for turn in turns:
            turn.line = first_line + turn.offset - 1
    if not turns:
        raise RecordError(key, "no 'Name: text' lines (a transcript's turns)")
    dropped: Dropped = []
    conv = conversation(turns, roles, system=None, where=key, dropped=dropped)
    if leading:
        lines = f"line {leading[0]}" if len(leading) == 1 else f"lines {leading[0]}-{leading[-1]}"
        message = f"text before the first speaker label dropped ({lines} of the text)"
        where = Turn(None, None, first_line + leading[0] - 1 if first_line is not None else None, offset=leading[0],
                     field=key)
        conv.repairs.insert(0, (key, message))
        dropped.insert(0, (where, message))
    return conv, dropped
