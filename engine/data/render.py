"""Conversation -> rendered text, token ids and labels (-100 where not trained).

Heavy module (a tokenizer is passed in; transformers is not imported here at module
level, but callers hold one). The dataset browser, ``finetui data inspect`` and the trainer
all call :func:`render`, so what the user sees highlighted is exactly what is trained.

Every template is rendered by ``tokenizer.apply_chat_template(..., chat_template=...)``;
finetui's own templates are Jinja strings in :mod:`engine.data.templates`.

Which tokens are trained (``train_on="assistant"``): every assistant turn's reply *and the
token(s) that close it* (``<|im_end|>``, ``<|eot_id|>``, ``<end_of_turn>``, ``<|end|>``,
``<｜end▁of▁sentence｜>``, gpt-oss's ``<|end|>``/``<|return|>``/``<|call|>``, Cohere's
``<|END_RESPONSE|><|END_OF_TURN_TOKEN|>``, eos), nothing else: not the role header, not the
next turn's header, not the newline the template writes after the end token. The closing
tokens are found by rendering probe conversations (:func:`detect_end_token`). An assistant
turn whose Message has ``train=False`` (``loss_weight: 0``) is context only: rendered, none
of its tokens trained.

- Templates with ``{% generation %}`` markers: ``return_assistant_tokens_mask=True``, then
  whitespace after the end token inside the markers is untrained (Qwen 3's training
  template puts ``<|im_end|>\\n`` inside).
- Templates without markers (the real Llama 3, Qwen 2.5/3, Gemma, Phi, DeepSeek-V3,
  gpt-oss, Cohere, GLM ones): prefixes rendered and compared, on token boundaries, as TRL
  and Axolotl do. Assistant turn *i* starts at the first token the full text does not share
  with ``messages[:i]`` rendered with the generation prompt (a generation prompt the text
  lacks, DeepSeek's ``<think>\\n``, is allowed); it runs as far as the rendering of
  ``messages[:i+1]`` shares the text's tokens, then through the closing tokens the text has
  there (gpt-oss closes an earlier reply with ``<|end|>`` where the reply rendered last ends
  with ``<|return|>``; comparing characters cut it at their shared ``<|``). Templates that
  render earlier turns differently from the last one (Qwen 3's original template drops
  earlier reasoning) are not prefix-preserving: there the turn is found in the full text as
  rendered in context, and the example carries a note saying so.

Tool-call arguments go in the form each template takes (:func:`_render_messages`): a
mapping, or JSON text for templates that concatenate them as strings (DeepSeek-V3's).
"""

from __future__ import annotations

import bisect
import copy
import json
import re
from dataclasses import asdict, dataclass, field
from itertools import compress
from pathlib import Path
from typing import Any, Iterable

from finetui.engine.data import skeleton
from finetui.engine.data import templates as builtin
from finetui.engine.data.conversation import Conversation

IGNORE = -100
TEMPLATE_NAMES = ("auto", "tokenizer", "chatml", "qa", "alpaca", "plain")
_GENERATION_RE = re.compile(r"\{%-?\s*generation\s*-?%\}")
PAD_CANDIDATES = ("<|pad|>", "<pad>", "[PAD]", "<|finetune_right_pad_id|>")


class RenderError(ValueError):
    """A conversation this template cannot render (the message says why)."""


class TemplateError(ValueError):
    """A template name or file that cannot be used."""


@dataclass
class Template:
    name: str  # what the user asked for resolved: tokenizer | chatml | qa | alpaca | plain | file path
    source: str  # the Jinja string
    origin: str  # "tokenizer" | "builtin" | "file"
    has_generation: bool = False
    required_tokens: tuple[str, ...] = ()
    end_token: str | None = None  # closes an assistant turn; filled by detect_end_token
    # Every token that closes an assistant reply: gpt-oss closes the last reply with
    # <|return|> and earlier ones with <|end|>; Cohere writes <|END_RESPONSE|><|END_OF_TURN_TOKEN|>.
    end_tokens: tuple[str, ...] = ()
    _end_detected: bool = field(default=False, repr=False)
    _probe_error: str | None = field(default=None, repr=False)  # why the probe conversation failed
    _token_cache: Any = field(default=None, repr=False)  # (tokenizer key, _MarkerTest, end ids)
    # How this template takes tool-call arguments: "mapping" (parsed JSON, what ``| tojson``
    # and ``.items()`` need) or "json" (a JSON string, for templates that concatenate them
    # as text, like DeepSeek-V3's). Learnt from the rows: the form that last rendered.
    tool_arguments: str = field(default="mapping", repr=False)
    _skeletons: Any = field(default=None, repr=False)  # skeleton.Cache: texts by conversation shape

    @property
    def label(self) -> str:
        return self.name if self.origin != "file" else Path(self.name).name


@dataclass
class Example:
    input_ids: list[int]
    labels: list[int]
    text: str  # the full rendered string (also when the ids were truncated)
    trained_spans: list[tuple[int, int]]  # character spans of ``text`` whose tokens are trained
    n_tokens: int
    n_trained: int
    truncated: bool
    kept_chars: int = 0  # characters of ``text`` covered by the kept (untruncated) tokens
    full_tokens: int = 0  # tokens before truncation
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["trained_spans"] = [list(s) for s in self.trained_spans]
        return d

    def trained_text(self) -> str:
        return "".join(self.text[a:b] for a, b in self.trained_spans)


# ------------------------------------------------------------------------ templates


def resolve_template(tokenizer, name: str) -> Template:
    """Turn ``data.template`` into a :class:`Template`.

    auto: the tokenizer's own chat template if it has one, else chatml. tokenizer: its own
    (error if none). chatml/qa/alpaca/plain: finetui's. Anything else: a .jinja file.
    """
    name = (name or "auto").strip()
    key = name.lower()
    if key in ("auto", "tokenizer"):
        own = _own_template(tokenizer)
        if own is not None:
            # its literal tokens too: a tokenizer can carry a template written for another
            # vocabulary (Llama 3.1's on a base model without <|eot_id|>)
            return _make("tokenizer", own, "tokenizer", literal_special_tokens(own))
        if key == "tokenizer":
            raise TemplateError(
                "data.template: tokenizer has no chat template of its own; "
                f"use one of {', '.join(TEMPLATE_NAMES[2:])} or a .jinja file"
            )
        key = "chatml"
    if key in builtin.BUILTIN:
        return _make(key, builtin.BUILTIN[key], "builtin", builtin.REQUIRED_TOKENS.get(key, ()))
    path = Path(name).expanduser()
    if path.is_file():
        try:
            source = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise TemplateError(f"data.template: cannot read {path}: {exc}") from None
        return _make(str(path), source, "file", literal_special_tokens(source))
    if name.endswith((".jinja", ".j2", ".jinja2")) or "/" in name:
        raise TemplateError(f"data.template: no such template file: {name}")
    raise TemplateError(
        f"data.template: unknown template {name!r} (choose {', '.join(TEMPLATE_NAMES)} or a .jinja file)"
    )


# Special-token spellings written literally in chat templates: <|im_start|>, <|eot_id|>,
# <|start_header_id|> (ChatML, Llama 3, Phi, Qwen), DeepSeek's full-width <｜User｜>, and
# Gemma's <start_of_turn>/<end_of_turn>.
_LITERAL_TOKEN_RE = re.compile(r"<\|[A-Za-z0-9_./-]{1,48}\|>|<｜[^｜<>\s]{1,48}｜>|<(?:start|end)_of_turn>")


def literal_special_tokens(source: str) -> tuple[str, ...]:
    """The special tokens a template file writes as literal text, in order of first use.
    Those the tokenizer lacks are added (prepare_tokenizer), or the model would see each as
    a handful of ordinary pieces and could never emit its end-of-turn token as one."""
    found: list[str] = []
    for match in _LITERAL_TOKEN_RE.finditer(source):
        if match.group(0) not in found:
            found.append(match.group(0))
    return tuple(found)


def _own_template(tokenizer) -> str | None:
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):  # named templates: the default one
        template = template.get("default") or next(iter(template.values()), None)
    return template or None


def _make(name: str, source: str, origin: str, required: tuple[str, ...] = ()) -> Template:
    return Template(
        name=name,
        source=source,
        origin=origin,
        has_generation=bool(_GENERATION_RE.search(source)),
        required_tokens=tuple(required),
    )


def _has_token(tokenizer, token: str) -> bool:
    ids = tokenizer.encode(token, add_special_tokens=False)
    return len(ids) == 1 and tokenizer.convert_ids_to_tokens(ids[0]) == token


def prepare_tokenizer(tokenizer, template: Template) -> list[str]:
    """Make ``tokenizer`` able to render ``template`` and to stop. Returns added tokens.

    - tokens the template writes literally and the tokenizer lacks (ChatML's
      ``<|im_start|>``/``<|im_end|>`` on a base model) are added as special tokens;
    - for ChatML, ``<|im_end|>`` becomes ``tokenizer.eos_token`` (the trainer then sets
      ``model.generation_config.eos_token_id`` from :func:`generation_eos_ids`);
    - an eos is added when the template ends turns with eos and there is none;
    - a missing pad token is set to an existing pad-like token, else ``<|pad|>`` is added
      (never eos: a collator that masks pad would then hide the stop token).

    When the returned list is not empty the caller must resize the embeddings (and, for
    LoRA, train and save ``embed_tokens``/``lm_head``).
    """
    added: list[str] = []

    def add(token: str) -> None:
        from tokenizers import AddedToken

        tokenizer.add_tokens([AddedToken(token, special=True, normalized=False)], special_tokens=True)
        added.append(token)

    for token in template.required_tokens:
        if not _has_token(tokenizer, token):
            add(token)
    wanted_end = builtin.END_TOKENS.get(template.name) if template.origin == "builtin" else None
    if wanted_end and tokenizer.eos_token != wanted_end:
        tokenizer.eos_token = wanted_end
    if tokenizer.eos_token is None:
        add("<|endoftext|>")
        tokenizer.eos_token = "<|endoftext|>"
    if tokenizer.pad_token is None:
        for candidate in PAD_CANDIDATES:
            if candidate != tokenizer.eos_token and _has_token(tokenizer, candidate):
                tokenizer.pad_token = candidate
                break
        else:
            add("<|pad|>")
            tokenizer.pad_token = "<|pad|>"
    template._end_detected = False  # the vocabulary may have changed
    detect_end_token(tokenizer, template)
    return added


def generation_eos_ids(tokenizer, template: Template) -> list[int]:
    """Token ids generation must stop at: the tokens that close the template's assistant
    turns, and eos."""
    ids: list[int] = []
    detect_end_token(tokenizer, template)
    for token in (template.end_token, *template.end_tokens, tokenizer.eos_token):
        if token is not None and _has_token(tokenizer, token):
            tid = tokenizer.convert_tokens_to_ids(token)
            if tid not in ids:
                ids.append(tid)
    return ids


_PROBE = "OK"


def detect_end_token(tokenizer, template: Template) -> str | None:
    """The token that closes an assistant turn in this template (``template.end_token``),
    and all such tokens (``template.end_tokens``), found by rendering probe conversations.

    The closing run is the special tokens right after the reply (whitespace before them
    allowed). A reply rendered last gives the run's length and tokens (``<|eot_id|>``;
    gpt-oss's ``<|return|>``; Cohere's ``<|END_RESPONSE|><|END_OF_TURN_TOKEN|>``); the
    same reply followed by a user turn gives the tokens that close it in context (gpt-oss's
    ``<|end|>``), as many as the last run has, so the next turn's header never counts.
    The primary one is eos when eos closes the reply, else the run's last token."""
    if template._end_detected:
        return template.end_token
    last_run: list[str] = []
    context_run: list[str] = []
    template._probe_error = None
    user = {"role": "user", "content": "Hi"}
    reply = {"role": "assistant", "content": _PROBE}
    try:
        prompt = _apply(tokenizer, template, [user], None, True)
        last_run = _closing_run(tokenizer, _apply(tokenizer, template, [user, reply], None, False), prompt)
        if last_run:
            try:
                header = _header_markers(tokenizer, template, [user], prompt)
                followed = _apply(tokenizer, template, [user, reply, {"role": "user", "content": "And?"}], None, False)
                for token in _closing_run(tokenizer, followed, prompt)[: len(last_run)]:
                    if token in header:  # the next turn's header (ChatML's <|im_start|>)
                        break
                    context_run.append(token)
            except RenderError:
                pass
    except RenderError as exc:
        template._probe_error = str(exc)
    eos = tokenizer.eos_token
    template.end_tokens = tuple(dict.fromkeys(last_run + context_run))
    template.end_token = (eos if eos in last_run else last_run[-1]) if last_run else None
    template._end_detected = True
    return template.end_token


def _closing_run(tokenizer, full: str, prompt: str) -> list[str]:
    """The special tokens right after the probe reply in ``full`` (whitespace before the
    first one skipped; the run stops at anything else)."""
    at = full.find(_PROBE, _common_prefix_len(full, prompt))
    if at < 0:
        return []
    tail = full[at + len(_PROBE):]
    run: list[str] = []
    markers = _MarkerTest(tokenizer)
    for tid in tokenizer.encode(tail, add_special_tokens=False):
        piece = markers.piece(tid)
        if markers(tid):
            run.append(piece)
        elif run or piece.strip():
            break
    return run


def _header_markers(tokenizer, template: Template, messages, prompt: str) -> set[str]:
    """The special tokens of the generation prompt (the assistant header)."""
    try:
        base = _apply(tokenizer, template, messages, None, False)
    except RenderError:
        return set()
    header = prompt[_common_prefix_len(prompt, base):]
    markers = _MarkerTest(tokenizer)
    return {markers.piece(t) for t in tokenizer.encode(header, add_special_tokens=False) if markers(t)}


class _MarkerTest:
    """Whether a token id is a marker: a special or added token, or a vocabulary entry
    spelled like one (``<|eot_id|>``, ``<｜end▁of▁sentence｜>``, ``<end_of_turn>``) that a
    tokenizer keeps as an ordinary token. ``added``: the added tokens, which the tokenizer
    splits off before anything else."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.added = set(getattr(tokenizer, "added_tokens_decoder", {}).keys())
        self.special = set(tokenizer.all_special_ids) | self.added
        self.pieces: dict[int, str] = {}

    def piece(self, tid: int) -> str:
        if tid not in self.pieces:
            self.pieces[tid] = self.tokenizer.decode([tid], skip_special_tokens=False)
        return self.pieces[tid]

    def __call__(self, tid: int) -> bool:
        return tid in self.special or bool(_LITERAL_TOKEN_RE.fullmatch(self.piece(tid)))


def _token_facts(tokenizer, template: Template) -> tuple["_MarkerTest", set[int]]:
    """(marker test, ids of the tokens that close a reply), kept on the template for as
    long as the tokenizer is the same and unchanged."""
    detect_end_token(tokenizer, template)
    key = (id(tokenizer), len(tokenizer), tuple(tokenizer.all_special_tokens), template.end_tokens, template.end_token)
    cached = template._token_cache
    if cached is None or cached[0] != key:
        ids = set()
        for token in template.end_tokens or ((template.end_token,) if template.end_token else ()):
            encoded = tokenizer.encode(token, add_special_tokens=False)
            if len(encoded) == 1:
                ids.add(encoded[0])
        cached = template._token_cache = (key, _MarkerTest(tokenizer), ids)
    return cached[1], cached[2]


def _end_ids(tokenizer, template: Template) -> set[int]:
    return _token_facts(tokenizer, template)[1]


def _special_ids(tokenizer) -> set[int]:
    ids = set(tokenizer.all_special_ids)
    ids.update(getattr(tokenizer, "added_tokens_decoder", {}).keys())
    return ids


# ------------------------------------------------------------------------ rendering


def template_kwargs(tokenizer, template: Template) -> dict[str, Any]:
    """Extra variables to pass to ``apply_chat_template`` with this template (the chat
    worker renders prompts with them, exactly as training does)."""
    if template.origin == "tokenizer" or template.origin == "file":
        return {}
    return {"finetui_bos": _bos_prefix(tokenizer)}


_template_kwargs = template_kwargs


def _bos_prefix(tokenizer) -> str:
    """The BOS string when this tokenizer puts one in front of plain text, else "" (asked
    once per tokenizer state: it is read for every record)."""
    bos_id = tokenizer.bos_token_id
    if bos_id is None:
        return ""
    key = (len(tokenizer), bos_id, tokenizer.bos_token)
    cached = _BOS_CACHE.get(id(tokenizer))
    if cached is not None and cached[0] == key:
        return cached[1]
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    prefix = tokenizer.bos_token if ids and ids[0] == bos_id else ""
    _BOS_CACHE[id(tokenizer)] = (key, prefix)
    return prefix


_BOS_CACHE: dict[int, tuple[Any, str]] = {}


def _skeletons(tokenizer, template: Template):
    """(the template's skeleton cache, the tokenizer state its texts depend on)."""
    if template._skeletons is None or template._skeletons.source != template.source:
        template._skeletons = skeleton.Cache(template.source)
    return template._skeletons, (id(tokenizer), len(tokenizer), str(tokenizer.special_tokens_map),
                                 _template_kwargs(tokenizer, template).get("finetui_bos"))


def _apply(tokenizer, template: Template, messages, tools, add_generation_prompt: bool) -> str:
    """The template's text of ``messages``: from the shape's skeleton where one renders it
    (engine.data.skeleton: Jinja's own output for that shape), else by Jinja."""
    if tools is None and skeleton.ENABLED:
        cache, env = _skeletons(tokenizer, template)
        fast = cache.render(env, messages, ("apply", add_generation_prompt),
                            lambda probe: (_apply_jinja(tokenizer, template, probe, None, add_generation_prompt), None))
        if fast is not None:
            return fast[0]
    return _apply_jinja(tokenizer, template, messages, tools, add_generation_prompt)


def _apply_jinja(tokenizer, template: Template, messages, tools, add_generation_prompt: bool) -> str:
    try:
        return tokenizer.apply_chat_template(
            messages,
            tools=tools,
            chat_template=template.source,
            add_generation_prompt=add_generation_prompt,
            tokenize=False,
            **_template_kwargs(tokenizer, template),
        )
    except Exception as exc:  # jinja raise_exception, TemplateError, TypeError on odd data
        raise RenderError(f"template {template.label}: {_exc_text(exc)}") from None


def _exc_text(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _tools(tools: Any) -> list[dict[str, Any]] | None:
    if not tools:
        return None
    if isinstance(tools, str):
        try:
            tools = json.loads(tools)
        except (json.JSONDecodeError, RecursionError):  # RecursionError: nested too deeply
            raise RenderError("tools: not valid JSON") from None
    if isinstance(tools, dict):
        tools = [tools]
    return list(tools) or None


def _context_turns(conv: Conversation) -> set[int]:
    """Indices in ``conv.to_messages()`` of the assistant turns not to train (``train=False``)."""
    offset = 1 if conv.system else 0
    return {offset + i for i, m in enumerate(conv.messages) if m.role == "assistant" and not m.train}


ARGUMENT_FORMS = ("mapping", "json")


def _messages(conv: Conversation, arguments: str = "mapping") -> list[dict[str, Any]]:
    """The conversation as template messages, tool-call arguments in the given form:
    "mapping" parses JSON text (templates that index them: Llama's ``| tojson``, GLM's
    ``.items()``); "json" writes mappings as JSON text (templates that concatenate them as
    strings: DeepSeek-V3's ``'\\n' + tool['function']['arguments']``). Free text that is
    not JSON stays as it is in both."""
    out = conv.to_messages()
    if not any(m.tool_calls for m in conv.messages):
        return out
    out = copy.deepcopy(out)  # arguments are rewritten in place below
    for message in out:
        for call in message.get("tool_calls") or ():
            fn = call.get("function") if isinstance(call, dict) else None
            if not isinstance(fn, dict):
                continue
            args = fn.get("arguments")
            if isinstance(args, str):
                try:
                    args = json.loads(args)
                except (json.JSONDecodeError, RecursionError):  # RecursionError: nested too deeply
                    continue
            if arguments == "json" and isinstance(args, (dict, list)):
                fn["arguments"] = json.dumps(args, ensure_ascii=False)
            elif arguments == "mapping":
                fn["arguments"] = args
    return out


def _has_structured_arguments(conv: Conversation) -> bool:
    for message in conv.messages:
        for call in message.tool_calls or ():
            fn = call.get("function") if isinstance(call, dict) else None
            if isinstance(fn, dict) and fn.get("arguments") is not None:
                return True
    return False


def _shows_repr(messages: list[dict[str, Any]], text: str) -> bool:
    """Whether ``text`` prints a tool call's arguments as a Python dict (``{'city': 'Paris'}``):
    the template wrote the mapping with ``{{ }}`` where it expected JSON text."""
    for message in messages:
        for call in message.get("tool_calls") or ():
            fn = call.get("function") if isinstance(call, dict) else None
            args = fn.get("arguments") if isinstance(fn, dict) else None
            if isinstance(args, (dict, list)) and args and str(args) != json.dumps(args, ensure_ascii=False):
                if str(args) in text:
                    return True
    return False


def _render_messages(tokenizer, template: Template, conv: Conversation, tools) -> tuple[list[dict[str, Any]], str]:
    """(messages, full text) of a conversation. Tool-call arguments go in the form this
    template takes: the one that rendered last first, then the other when the template
    fails on it (a mapping concatenated to a string) or prints it as a Python dict, so no
    row is dropped that either form can express."""
    if not _has_structured_arguments(conv):
        messages = _messages(conv)
        return messages, _apply(tokenizer, template, messages, tools, False)
    forms = (template.tool_arguments,) + tuple(f for f in ARGUMENT_FORMS if f != template.tool_arguments)
    first_error: RenderError | None = None
    fallback: tuple[list[dict[str, Any]], str] | None = None
    for form in forms:
        messages = _messages(conv, form)
        try:
            text = _apply(tokenizer, template, messages, tools, False)
        except RenderError as exc:
            first_error = first_error or exc
            continue
        if form == "mapping" and _shows_repr(messages, text):
            fallback = fallback or (messages, text)
            continue
        template.tool_arguments = form
        return messages, text
    if fallback is not None:
        return fallback
    assert first_error is not None
    raise first_error


def render(
    conv: Conversation,
    tokenizer,
    template: Template,
    *,
    train_on: str = "assistant",
    max_length: int = 512,
) -> Example:
    """Render one conversation; labels are -100 everywhere but trained tokens."""
    steps = _render_steps(conv, tokenizer, template, train_on, max_length)
    text = next(steps)
    return _resume(steps, _Encoded(_encode(tokenizer, [text]), 0))


def render_many(
    convs: list[Conversation],
    tokenizer,
    template: Template,
    *,
    train_on: str = "assistant",
    max_length: int = 512,
) -> list[Example | RenderError]:
    """:func:`render` of each conversation (its Example, or the RenderError it raises), the
    full texts tokenised in one call: the same examples, at about half the cost of a call
    per conversation (``finetui data inspect`` on a million records)."""
    return _batched([_render_steps(conv, tokenizer, template, train_on, max_length) for conv in convs],
                    tokenizer)


def _batched(all_steps: list, tokenizer) -> list:
    """Run each conversation's render steps up to its full text, tokenise those texts in
    one call, and finish each with its encoding: what each step generator returns, or the
    RenderError it raised."""
    results: list[Any] = [None] * len(all_steps)
    waiting: list[tuple[int, Any, str]] = []
    for i, steps in enumerate(all_steps):
        if type(steps) is _Plain:  # its text is known; finished without a generator
            waiting.append((i, steps, steps.text))
            continue
        try:
            waiting.append((i, steps, next(steps)))
        except RenderError as exc:
            results[i] = exc
    if waiting and (table := _byte_spans(tokenizer)) is not None:
        waiting = _count_plain_by_bytes(waiting, results, *table)
    if waiting:
        batch = _encode(tokenizer, [text for _, _, text in waiting])
        for k, (i, steps, _) in enumerate(waiting):
            try:
                if type(steps) is _Plain:
                    results[i] = steps.finish(_Encoded(batch, k))
                else:
                    results[i] = _resume(steps, _Encoded(batch, k))
            except RenderError as exc:
                results[i] = exc
    return results


def _count_plain_by_bytes(waiting: list, results: list, backend, table) -> list:
    """Count the plain conversations among ``waiting`` from ids without offsets (cheaper
    for the tokenizer: engine.data.bytespans); return the rest, and any plain one whose
    spans the ids cannot place, for the encoding with offsets."""
    plain = [w for w in waiting if type(w[1]) is _Plain]
    if not plain:
        return waiting
    rest = [w for w in waiting if type(w[1]) is not _Plain]
    encodings = backend.encode_batch_fast([text for _, _, text in plain], add_special_tokens=False,
                                                       is_pretokenized=False)
    for (i, steps, text), enc in zip(plain, encodings):
        ids = enc.ids
        found = table.locate(text, ids, steps.generation)
        counts = steps.counted(ids, found) if found is not None else None
        if counts is None:
            rest.append((i, steps, text))
        else:
            results[i] = counts
    return rest


_BYTE_SPANS: list = [None, None]  # [the Rust tokenizer's key, its ByteSpans or None]


def _byte_spans(tokenizer):
    """(the Rust tokenizer as :func:`_backend` sets it up, its byte-length table:
    engine.data.bytespans), or None where its tokens are not the text's bytes or it is not
    asked directly."""
    from finetui.engine.data import bytespans

    if not bytespans.ENABLED:
        return None
    backend = _backend(tokenizer)
    if backend is None:
        return None
    key = (id(backend), backend.get_vocab_size(with_added_tokens=True))
    if _BYTE_SPANS[0] != key:
        _BYTE_SPANS[:] = [key, bytespans.ByteSpans.of(backend)]
    return None if _BYTE_SPANS[1] is None else (backend, _BYTE_SPANS[1])


@dataclass
class Counts:
    """What :func:`render` makes of a conversation, counted: its Example's n_tokens,
    n_trained, truncated, full_tokens and notes, and whether a given token is trained."""

    n_tokens: int
    n_trained: int
    truncated: bool
    full_tokens: int
    notes: list[str]
    trains_end: bool


def _counts(ids, trained: list[bool], max_length: int, notes: list[str], end_id: int | None) -> Counts:
    full = len(ids)
    if full > max_length:
        ids, trained = ids[:max_length], trained[:max_length]
    return Counts(n_tokens=len(ids), n_trained=sum(trained), truncated=full > max_length, full_tokens=full,
                  notes=notes, trains_end=end_id is not None and end_id in compress(ids, trained))


def count_many(
    convs: list[Conversation],
    tokenizer,
    template: Template,
    *,
    train_on: str = "assistant",
    max_length: int = 512,
    end_id: int | None = None,
) -> list[Counts | RenderError]:
    """:func:`render_many` counted (its Counts, or the RenderError): the same rendering,
    tokens and mask, without the Examples (``finetui data inspect`` keeps only counts).

    A plain conversation (no tools, no tool calls, every reply trained) under a template
    with generation markers whose shape a skeleton renders takes :class:`_Plain`: the
    same text, spans, mask and counts as :func:`_render_steps` gives it (the same
    functions), without the per-record work that cannot apply to it."""
    plain = _PlainCounts.of(tokenizer, template, train_on, max_length, end_id)
    all_steps = []
    for conv in convs:
        fast = plain.start(conv) if plain is not None else None
        all_steps.append(fast if fast is not None else _render_steps(conv, tokenizer, template, train_on, max_length,
                                                                     counts_only=True, end_id=end_id))
    return _batched(all_steps, tokenizer)


class _PlainCounts:
    """What counting a batch of plain conversations reads once: the template's skeleton
    cache and the tokenizer state it depends on, the ids that close a reply."""

    __slots__ = ("tokenizer", "cache", "env", "jinja", "end_ids", "max_length", "end_id")

    @classmethod
    def of(cls, tokenizer, template: Template, train_on: str, max_length: int,
           end_id: int | None) -> "_PlainCounts | None":
        """None where :func:`_render_steps` takes another path for every conversation (no
        generation markers, ``train_on="all"``, skeletons off)."""
        if train_on != "assistant" or not template.has_generation or not skeleton.ENABLED:
            return None
        detect_end_token(tokenizer, template)
        self = cls()
        self.tokenizer, self.max_length, self.end_id = tokenizer, max_length, end_id
        self.cache, self.env = _skeletons(tokenizer, template)
        self.jinja = lambda probe: _generation_jinja(tokenizer, template, probe, None)
        self.end_ids = _end_ids(tokenizer, template)
        return self

    def start(self, conv: Conversation) -> "_Plain | None":
        """The conversation's text and generation spans from its shape's skeleton; None
        when it is not plain or no skeleton renders it (then _render_steps does)."""
        if conv.kind == "text" or conv.tools or not conv.messages:
            return None
        chat = [{"role": "system", "content": conv.system}] if conv.system else []
        for m in conv.messages:
            if m.tool_calls or not m.train:
                return None
            chat.append({"role": m.role, "content": m.content})
        fast = self.cache.render(self.env, chat, ("generation",), self.jinja)
        if fast is None:
            return None
        return _Plain(self, fast[0], fast[1])


class _Plain:
    """A plain conversation's text and generation spans, counted once tokenised as
    :func:`_render_steps` counts it (generation markers, train_on="assistant", no
    context turns, no notes)."""

    __slots__ = ("job", "text", "generation")

    def __init__(self, job: _PlainCounts, text: str, generation):
        self.job, self.text, self.generation = job, text, generation

    def finish(self, enc: "_Encoded") -> Counts:
        job = self.job
        ids = enc["input_ids"]
        found = []
        for start_char, end_char in self.generation:
            start = enc.char_to_token(start_char)
            if start is None:
                break
            found.append((start, enc.char_to_token(end_char - 1)))
        counts = self.counted(ids, found)
        if counts is not None:
            return counts
        trained = _assistant_masks(enc, len(ids), self.generation)
        trained = _untrain_after_end(job.tokenizer, ids, lambda: enc["offset_mapping"], self.text, trained,
                                     job.end_ids)
        return _counts(ids, trained, job.max_length, [], job.end_id)

    def counted(self, ids, found: list[tuple[int, int | None]]) -> Counts | None:
        """The counts from the tokens holding each span's first and last character (as
        _assistant_masks reads them), when every trained run ends with an end token: then
        _untrain_after_end has nothing to untrain and _counts' numbers are the runs' (cut
        at max_length). None otherwise (finish() masks token by token)."""
        job = self.job
        n = len(ids)
        runs = []  # _assistant_masks' runs of trained tokens, as [start, stop) pairs
        for start, end in found:
            stop = min(end + 1 if end else n, n)
            if stop > start:
                runs.append((start, stop))
        runs.sort()
        merged: list[tuple[int, int]] = []
        for a, b in runs:
            if merged and a <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(merged[-1][1], b))
            else:
                merged.append((a, b))
        if job.end_ids and not all(ids[b - 1] in job.end_ids for _, b in merged):
            return None
        cap, end_id = job.max_length, job.end_id
        kept = [(a, min(b, cap)) for a, b in merged if a < cap]
        return Counts(n_tokens=min(n, cap), n_trained=sum(b - a for a, b in kept), truncated=n > cap,
                      full_tokens=n, notes=[],
                      trains_end=end_id is not None and any(end_id in ids[a:b] for a, b in kept))


def _encode(tokenizer, texts: list[str]):
    """The encodings of ``texts`` (no special tokens added, offsets kept): what
    ``tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)`` computes.
    A fast tokenizer that does not change transformers' way of encoding is asked directly
    (its Rust ``encode_batch``, as transformers asks it, configured as transformers
    configures it), without converting every token to Python objects first: that
    conversion cost ~40 us a record. Others go through ``tokenizer(...)``."""
    backend = _backend(tokenizer)
    if backend is not None:
        return backend.encode_batch(texts, add_special_tokens=False, is_pretokenized=False)
    return tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True, verbose=False,
                     return_attention_mask=False, return_token_type_ids=False)


def _backend(tokenizer):
    """The tokenizer's Rust tokenizer, set up as ``tokenizer(texts)`` sets it up (no
    padding, no truncation, special tokens as the tokenizer splits them); None when the
    tokenizer is not a plain fast one (it overrides how text is encoded, or switches
    between input and target modes)."""
    backend = getattr(tokenizer, "_tokenizer", None)
    if backend is None or not hasattr(backend, "encode_batch"):
        return None
    try:
        from transformers.tokenization_utils_base import PaddingStrategy, PreTrainedTokenizerBase, TruncationStrategy
        from transformers.tokenization_utils_tokenizers import TokenizersBackend
    except ImportError:
        return None
    kind = type(tokenizer)
    if (not isinstance(tokenizer, TokenizersBackend) or kind._encode_plus is not TokenizersBackend._encode_plus
            or kind.__call__ is not PreTrainedTokenizerBase.__call__ or hasattr(tokenizer, "_switch_to_input_mode")):
        return None
    tokenizer.set_truncation_and_padding(padding_strategy=PaddingStrategy.DO_NOT_PAD,
                                         truncation_strategy=TruncationStrategy.DO_NOT_TRUNCATE, max_length=None,
                                         stride=0, pad_to_multiple_of=None, padding_side=None)
    split = bool(tokenizer.split_special_tokens)
    if backend.encode_special_tokens != split:
        backend.encode_special_tokens = split
    return backend


class _Encoded:
    """Text ``i`` of a batch's encodings, read as the encoding of that text alone (the
    Rust encodings of :func:`_encode`, or transformers' BatchEncoding)."""

    def __init__(self, batch, i: int):
        self.batch, self.i = batch, i
        self.raw = batch[i] if isinstance(batch, list) else None

    def __getitem__(self, key: str):
        if self.raw is None:
            return self.batch[key][self.i]
        if key == "input_ids":
            return self.raw.ids
        if key == "offset_mapping":
            return self.raw.offsets
        raise KeyError(key)

    def __len__(self) -> int:
        return len(self.raw) if self.raw is not None else len(self.batch["input_ids"][self.i])

    def char_to_token(self, char: int) -> int | None:
        if self.raw is None:
            return self.batch.char_to_token(self.i, char)
        return self.raw.char_to_token(char, 0)


def _resume(steps, enc: _Encoded) -> Example:
    try:
        steps.send(enc)
    except StopIteration as done:
        return done.value
    raise RuntimeError("render: the text was tokenised twice")  # pragma: no cover


def _render_steps(conv: Conversation, tokenizer, template: Template, train_on: str, max_length: int,
                  counts_only: bool = False, end_id: int | None = None):
    """render() as a generator: it yields the full text once and is sent back its encoding
    (what ``tokenizer(text, return_offsets_mapping=True)`` gives), so that render_many can
    tokenise many texts in one call; it returns the Example, or with ``counts_only`` its
    :class:`Counts` (whether token ``end_id`` is trained among them), the same mask counted
    without building the example."""
    if train_on not in ("assistant", "all"):
        raise ValueError(f"train_on: expected assistant or all, got {train_on!r}")
    detect_end_token(tokenizer, template)
    notes: list[str] = []
    if conv.kind == "text":
        eos = tokenizer.eos_token or ""
        text = _bos_prefix(tokenizer) + (conv.text or "") + eos
        enc = yield text
        ids = enc["input_ids"]
        trained = [True] * len(ids)
    else:
        if not conv.messages and not conv.system:  # conv.to_messages() is empty
            raise RenderError("conversation has no messages")
        tools = _tools(conv.tools)
        generation = None
        if template.has_generation and train_on != "all" and not _has_structured_arguments(conv):
            # one rendering gives the text and the spans inside the generation markers
            messages = _messages(conv)
            text, generation = _generation_spans(tokenizer, template, messages, tools)
        else:
            messages, text = _render_messages(tokenizer, template, conv, tools)
        notes.extend(_ignored_parts(tokenizer, template, messages, tools, text))
        if train_on == "all":
            enc = yield text
            ids = enc["input_ids"]
            trained = [True] * len(ids)
        elif template.has_generation:
            if generation is None:
                text, generation = _generation_spans(tokenizer, template, messages, tools)
            enc = yield text
            ids = enc["input_ids"]
            trained = _assistant_masks(enc, len(ids), generation)
            trained = _untrain_after_end(tokenizer, ids, lambda: enc["offset_mapping"], text, trained,
                                         _end_ids(tokenizer, template))
            context = _context_turns(conv)
            if context:  # turns marked not trained: find them as the markerless path does
                offsets = enc["offset_mapping"]
                spans = _incremental_spans(tokenizer, template, messages, tools, text, ids, offsets, [],
                                           keep=context.__contains__)
                inside = _tokens_in_spans(offsets, spans)
                trained = [t and not c for t, c in zip(trained, inside)]
        else:
            context = _context_turns(conv)
            enc = yield text
            ids, offsets = enc["input_ids"], enc["offset_mapping"]
            spans = _incremental_spans(tokenizer, template, messages, tools, text, ids, offsets, notes,
                                       keep=lambda i: i not in context)
            trained = _tokens_in_spans(offsets, spans)

    if counts_only:
        return _counts(ids, trained, max_length, notes, end_id)
    ids = list(ids)
    offsets = enc["offset_mapping"]
    full_tokens = len(ids)
    truncated = len(ids) > max_length
    if truncated:
        ids, offsets, trained = ids[:max_length], offsets[:max_length], trained[:max_length]
    labels = [tid if t else IGNORE for tid, t in zip(ids, trained)]
    kept_chars = max((int(e) for _, e in offsets), default=0) if truncated else len(text)
    return Example(
        input_ids=ids,
        labels=labels,
        text=text,
        trained_spans=_spans_of(offsets, trained),
        n_tokens=len(ids),
        n_trained=sum(trained),
        truncated=truncated,
        kept_chars=kept_chars,
        full_tokens=full_tokens,
        notes=notes,
    )


def _ignored_parts(tokenizer, template: Template, messages, tools, text: str) -> list[str]:
    """Notes for tool calls / tool lists the template silently leaves out (it renders the
    same text without them), so the browser and pre-flight can say so."""
    notes = []
    if any(m.get("tool_calls") for m in messages):
        bare = [{k: v for k, v in m.items() if k != "tool_calls"} for m in messages]
        try:
            if _apply(tokenizer, template, bare, tools, False) == text:
                notes.append(f"template {template.label} ignores tool calls")
        except RenderError:
            pass
    if tools:
        try:
            if _apply(tokenizer, template, messages, None, False) == text:
                notes.append(f"template {template.label} ignores the tool list")
        except RenderError:
            pass
    return notes


def _generation_spans(tokenizer, template: Template, messages, tools) -> tuple[str, list[tuple[int, int]]]:
    """The full text and the character spans inside ``{% generation %}`` markers: what
    ``apply_chat_template(..., return_assistant_tokens_mask=True)`` renders, without its
    tokenising (render tokenises texts many at a time)."""
    # as apply_chat_template does: keys whose value is None dropped, the special tokens
    # and the template's own variables passed
    chat = [{k: v for k, v in message.items() if v is not None} for message in messages]
    if tools is None and skeleton.ENABLED:
        cache, env = _skeletons(tokenizer, template)
        fast = cache.render(env, chat, ("generation",), lambda probe: _generation_jinja(tokenizer, template, probe, None))
        if fast is not None:
            return fast
    return _generation_jinja(tokenizer, template, chat, tools)


def _generation_jinja(tokenizer, template: Template, chat, tools) -> tuple[str, list[tuple[int, int]]]:
    from transformers.utils.chat_template_utils import render_jinja_template

    try:
        texts, spans = render_jinja_template(
            conversations=[chat],
            tools=tools,
            chat_template=template.source,
            return_assistant_tokens_mask=True,
            add_generation_prompt=False,
            **{**tokenizer.special_tokens_map, **_template_kwargs(tokenizer, template)},
        )
    except Exception as exc:
        raise RenderError(f"template {template.label}: {_exc_text(exc)}") from None
    return texts[0], spans[0]


def _assistant_masks(enc, n: int, generation: list[tuple[int, int]]) -> list[bool]:
    """apply_chat_template's assistant mask, from the encoding of the text: the tokens from
    the one holding a span's first character to the one holding its last."""
    mask = [False] * n
    for start_char, end_char in generation:
        start = enc.char_to_token(start_char)
        end = enc.char_to_token(end_char - 1)
        if start is None:  # past the end (as transformers reads it)
            break
        stop = end + 1 if end else n
        mask[start:stop] = [True] * len(range(start, stop))
    return mask


def _untrain_after_end(tokenizer, ids, offsets, text, trained, end_ids: set[int]) -> list[bool]:
    """Inside each trained run, whitespace after the run's last end token is untrained:
    the model never generates what follows its stop token. ``offsets``: the offset list,
    or a function giving it (asked only when a run has tokens after its end token)."""
    if not end_ids:
        return trained
    trained = list(trained)
    i, n = 0, len(ids)
    while i < n:
        try:
            i = trained.index(True, i)  # a run's first token
        except ValueError:
            break
        try:
            j = trained.index(False, i)  # past its last
        except ValueError:
            j = n
        last_end = next((k for k in range(j - 1, i - 1, -1) if ids[k] in end_ids), None)
        if last_end is not None and last_end + 1 < j:
            if callable(offsets):
                offsets = offsets()
            for k in range(last_end + 1, j):
                a, b = offsets[k]
                if text[a:b].strip() == "":
                    trained[k] = False
        i = j
    return trained


def _common_prefix_len(a: str, b: str) -> int:
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    lo, hi = 0, n  # binary search on the first difference
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


class _Tokens:
    """The full text's tokens, for cutting turns on token boundaries: a character
    position inside a token (the ``<|`` that ``<|end|>`` and ``<|return|>`` share) never
    splits it."""

    def __init__(self, tokenizer, template: Template, text: str, ids, offsets):
        self.text = text
        self.ids = list(ids)
        self.offsets = [(int(a), int(b)) for a, b in offsets]
        self.ends = [b for _, b in self.offsets]
        self.markers, self.end_ids = _token_facts(tokenizer, template)

    def count_within(self, pos: int) -> int:
        """Number of leading tokens wholly before ``pos``; also the index of the token
        holding ``pos``."""
        return bisect.bisect_right(self.ends, pos)

    def piece_text(self, k: int) -> str:
        a, b = self.offsets[k]
        return self.text[a:b]

    def blank(self, k: int) -> bool:
        return self.piece_text(k).strip() == ""

    def closing(self, a: int, b: int) -> int:
        """The end (exclusive token index) of a turn that starts at token ``a`` and whose
        rendering agrees with the full text up to token ``b``: the end tokens the text has
        right there are taken in (gpt-oss closes an earlier reply with <|end|> where the
        reply rendered alone ends with <|return|>); after the turn's last end token, only
        whitespace or the template's end-of-conversation tokens (Phi's eos) are dropped;
        without one, trailing whitespace is."""
        n = len(self.ids)
        while b < n and self.ids[b] in self.end_ids:
            b += 1
        last = next((k for k in range(b - 1, a - 1, -1) if self.ids[k] in self.end_ids), None)
        if last is not None and all(
            self.blank(k) or (self.markers(self.ids[k]) and self.ids[k] not in self.end_ids) for k in range(last + 1, b)
        ):
            return last + 1
        while b > a and self.blank(b - 1):
            b -= 1
        return b

    def span(self, a: int, b: int) -> tuple[int, int]:
        return self.offsets[a][0], self.offsets[b - 1][1]


def _incremental_spans(tokenizer, template, messages, tools, text, ids, offsets, notes, keep=None) -> list[tuple[int, int]]:
    """Character spans (on token boundaries) of the assistant turns (those whose index
    ``keep`` accepts, all when None), each up to and including its end token(s).

    Turn *i* starts where the prompt ``messages[:i]`` with the generation prompt parts from
    the full text, and reaches as far as the rendering of ``messages[:i+1]`` agrees with it,
    then through the end tokens (:meth:`_Tokens.closing`). A turn rendered differently in
    context (earlier reasoning dropped) is found by its text instead, with a note."""
    toks = _Tokens(tokenizer, template, text, ids, offsets)
    spans: list[tuple[int, int]] = []
    cursor = 0
    turn = 0

    def add(i: int, span: tuple[int, int]) -> None:
        if keep is None or keep(i):
            spans.append(span)

    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        turn += 1
        through = _apply(tokenizer, template, messages[: i + 1], tools, False)
        prompt = _apply(tokenizer, template, messages[:i], tools, True) if i > 0 else ""
        a = _turn_start(tokenizer, template, messages, tools, toks, prompt, i)
        if a is not None and a < len(toks.ids) and toks.offsets[a][0] >= cursor:
            agreed = _common_prefix_len(text, through)
            b = toks.count_within(agreed)  # a token reaching past the agreed text is not agreed
            whole = agreed == len(through) and (b == 0 or toks.ends[b - 1] == agreed)
            b = toks.closing(a, b)
            # accepted when the turn reaches an end token, or renders alone exactly as here
            if b > a and (not toks.end_ids or toks.ids[b - 1] in toks.end_ids or whole):
                span = toks.span(a, b)
                add(i, span)
                cursor = span[1]
                continue
        # Not prefix-preserving here: find the turn as the template renders it in context.
        if i > 0 and through.startswith(prompt):
            reply = through[len(prompt):]
        else:
            reply = _reply_in(through, message)
        found = _find_turn(toks, reply, cursor, template)
        if found is None:
            notes.append(f"assistant turn {turn} is rendered differently in context and was not trained")
            continue
        span, exact = found
        if not exact:
            notes.append(
                f"assistant turn {turn} is rendered differently in context (e.g. reasoning dropped); "
                "trained as rendered in context"
            )
        add(i, span)
        cursor = span[1]
    return spans


def _turn_start(tokenizer, template, messages, tools, toks: "_Tokens", prompt: str, i: int) -> int | None:
    """Index of the first token of assistant turn ``i``: the token holding the first
    character after the prompt (the earlier messages and the generation prompt). Only the
    generation prompt may differ from the text (DeepSeek's ends with ``<think>\\n``, which
    a rendered reply does not have); then the turn starts after the last marker or
    whitespace the two share, never inside a word they happen to begin alike (``<t`` of
    ``<think>`` and ``<tool_call>``). None: the text renders the earlier messages
    differently."""
    if i == 0:
        return None
    if toks.text.startswith(prompt):
        return toks.count_within(len(prompt))
    try:
        before = _apply(tokenizer, template, messages[:i], tools, False)
    except RenderError:
        return None
    shared = _common_prefix_len(toks.text, prompt)
    if not (prompt.startswith(before) and shared >= len(before)):
        return None
    a = toks.count_within(shared)
    while a > 0 and not toks.markers(toks.ids[a - 1]) and not toks.piece_text(a - 1)[-1:].isspace():
        a -= 1
    return a


def _find_turn(toks: _Tokens, reply: str, cursor: int, template: Template):
    """The span of a turn that renders differently in context: ``reply`` (as rendered
    alone, without its end tokens) found in the text, then through the end tokens there.
    Returns ((start, stop), exact) or None."""
    core = reply
    ends = sorted(template.end_tokens or ((template.end_token,) if template.end_token else ()), key=len, reverse=True)
    while True:
        stripped = core.rstrip()
        token = next((t for t in ends if stripped.endswith(t)), None)
        if token is None:
            break
        core = stripped[: -len(token)]
    if not core.strip():
        core = reply.rstrip()
    found = _find_reply(toks.text, core, cursor)
    if found is None:
        return None
    start, stop, exact = found
    a = toks.count_within(start)
    b = toks.closing(a, toks.count_within(stop))
    if b <= a:
        return None
    return toks.span(a, b), exact


def _reply_in(through: str, message: dict[str, Any]) -> str:
    """Fallback for a first-message reply: from its content to the end of the text."""
    content = (message.get("content") or "").strip()
    at = through.rfind(content) if content else -1
    return through[at:] if at >= 0 else ""


def _find_reply(text: str, reply: str, cursor: int) -> tuple[int, int, bool] | None:
    """Where ``reply`` occurs in ``text`` after ``cursor``: (start, stop, exact). Not
    exact: only its longest tail that starts at a line start was found."""
    if not reply.strip():
        return None
    at = text.find(reply, cursor)
    if at >= 0:
        return at, at + len(reply), True
    for line in re.finditer(r"\n", reply):
        tail = reply[line.end():]
        if not tail.strip():
            break
        if tail[0].isspace():  # would also take the header's newline
            continue
        at = text.find(tail, cursor)
        if at >= 0:
            return at, at + len(tail), False
    return None


def _tokens_in_spans(offsets, spans: list[tuple[int, int]]) -> list[bool]:
    """A token is trained when any of its characters lies in a trained span (a
    zero-width token: when its position does)."""
    spans = sorted(spans)
    starts = [s for s, _ in spans]
    trained = []
    for a, b in offsets:
        if b > a:
            k = bisect.bisect_left(starts, b) - 1  # last span starting before the token ends
            trained.append(k >= 0 and spans[k][1] > a)
        else:
            k = bisect.bisect_right(starts, a) - 1
            trained.append(k >= 0 and spans[k][1] > a)
    return trained


def _spans_of(offsets, trained: list[bool]) -> list[tuple[int, int]]:
    """Character spans covered by trained tokens, merged."""
    spans: list[tuple[int, int]] = []
    start = end = -1
    for (a, b), t in zip(offsets, trained):
        if not t or b <= a:
            continue
        if end >= 0 and a <= end:
            if b > end:
                end = b
        else:
            if end >= 0:
                spans.append((start, end))
            start, end = a, b
    if end >= 0:
        spans.append((start, end))
    return [(int(a), int(b)) for a, b in spans]


# ------------------------------------------------------------------------ pre-flight


def _get(example: Any, key: str, default: Any = None) -> Any:
    if isinstance(example, dict):
        return example.get(key, default)
    return getattr(example, key, default)


_NOTE_HINTS = {
    "ignores tool calls": " (their calls render as empty replies; use --template chatml or a template with tool support)",
    "ignores the tool list": " (the model never sees the tools; use --template chatml or a template with tool support)",
    "rendered differently in context; trained as rendered in context": (
        " (the template renders earlier assistant turns differently from the last one, e.g. it drops "
        "their reasoning; a training template with {% generation %} markers such as "
        "qwen3_training.jinja avoids this)"
    ),
    "rendered differently in context and was not trained": (
        " (a training template with {% generation %} markers avoids this)"
    ),
}


def _note_kind(note: str) -> str:
    """A note without its particulars ("assistant turn 3 is ..." -> "... "), to count alike ones."""
    note = re.sub(r"^assistant turn \d+ is ", "", note)
    return re.sub(r" \(e\.g\. [^)]*\)", "", note)


def preflight(tokenizer, template: Template, examples: Iterable[Any], *, max_length: int | None = None) -> list[str]:
    """Warnings worth reading before a run. ``examples``: :class:`Example` objects or
    mappings with n_trained / truncated (and optionally labels)."""
    warnings: list[str] = []
    eos, pad = tokenizer.eos_token, tokenizer.pad_token
    if pad is not None and pad == eos:
        warnings.append(
            f"pad token is the eos token ({eos}): a collator or tool that masks padding by id also "
            "masks the stop token, and the model may never learn to stop (finetui's labels are not "
            "affected; set a distinct pad token to be safe)"
        )
    end = detect_end_token(tokenizer, template)
    if end is None and template._probe_error:
        warnings.append(
            f"template {template.label} cannot render a one-turn conversation "
            f"({template._probe_error.removeprefix(f'template {template.label}: ')}), so its end-of-turn "
            "token is unknown"
        )
    elif end is None:
        warnings.append(
            f"template {template.label}: no special token closes the assistant reply, so the model "
            "will not learn to stop (use a template that ends turns with eos or an end-of-turn token)"
        )
    elif end != eos:
        ends = " / ".join(template.end_tokens) if end in template.end_tokens else end
        warnings.append(
            f"template {template.label} ends assistant turns with {ends} but the tokenizer's eos is "
            f"{eos}: a model that stops only at eos would never stop; generation must also stop at "
            f"{ends} (finetui sets generation_config.eos_token_id to {'both' if ends == end else 'all of them'})"
        )
    end_id = tokenizer.convert_tokens_to_ids(end) if end is not None else None
    n = no_trained = truncated = no_end = 0
    noted: dict[str, int] = {}
    for ex in examples:
        n += 1
        if not _get(ex, "n_trained", 0):
            no_trained += 1
        if _get(ex, "truncated", False):
            truncated += 1
        if end_id is not None and _get(ex, "n_trained", 0) and not _get(ex, "truncated"):
            trains_end = _get(ex, "trains_end")
            if trains_end is None and _get(ex, "labels") is not None:
                trains_end = end_id in _get(ex, "labels")
            if trains_end is False:
                no_end += 1
        for note in {_note_kind(note) for note in (_get(ex, "notes") or ())}:
            noted[note] = noted.get(note, 0) + 1
    if no_trained:
        warnings.append(f"{no_trained} of {n} records have no trained token (dropped from training)")
    if truncated:
        limit = f" {max_length}" if max_length else ""
        warnings.append(f"{truncated} of {n} records are longer than max_length{limit} tokens (truncated)")
    if no_end:
        warnings.append(
            f"{no_end} of {n} records train no {end} token: the model will not learn to stop after them"
        )
    for note, count in noted.items():
        hint = _NOTE_HINTS.get(note.split(" ", 2)[-1] if note.startswith("template ") else note, "")
        warnings.append(f"{count} of {n} records: {note}{hint}")
    return warnings
