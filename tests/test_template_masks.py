"""The masking rule, on every chat template the repository has: every assistant reply and
the token(s) that close it are trained, nothing else: not the role header before it, not the
next turn's header, not a piece of a marker, not the system, user or tool text.

Templates: every file in ``tests/data/chat_templates/`` (real models' templates, see
``tests/data/SOURCES.md``) and every template finetui ships (``engine.data.templates``).
Conversations: several turns, a system prompt, and a tool call with its result. A case a
template cannot express is found by rendering it, and its test id says so:

- ``raises``: the template refuses the conversation (Gemma's raises on a system turn or a
  tool turn); finetui must report the row as an error, never train it partly;
- ``ignores-calls``: the template renders the conversation but leaves the tool calls out
  (Llama 3's, Phi's); finetui must say so in the example's notes.

The expected mask is built independently of finetui's masking code: a reply starts after
the assistant header (the template's generation prompt) as the text has it before the
reply's content (without a header: where the template's prompt for the reply parts from
the text); it runs through its content (found by text) and any tool-call syntax up to the
first marker token, and through the consecutive closing markers
there (``<|eot_id|>``, ``<|im_end|>``, ``<｜end▁of▁sentence｜>``, ``<|end|>``,
``<end_of_turn>``, gpt-oss's ``<|return|>``/``<|call|>``, Cohere's
``<|END_RESPONSE|><|END_OF_TURN_TOKEN|>``). A template without a closing marker (GLM's,
whose next role token ends a reply) trains the reply alone, and the pre-flight warns that
nothing closes it.

The tokenizer is the tiny model's byte-level BPE; ``prepare_tokenizer`` adds each template's
literal special tokens, as it does for a user's model.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest

from finetui.engine.data import render
from finetui.engine.data import templates as builtin
from finetui.engine.data.conversation import Conversation, Message

TEMPLATES = Path(__file__).resolve().parent / "data" / "chat_templates"
FILES = sorted(p.stem for p in TEMPLATES.glob("*.jinja"))
BUILTINS = sorted(builtin.BUILTIN)
BOS = "<s>"

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
CALL = [{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]

# Replies hold none of the role words, so a header trained by mistake shows.
ROLE_WORDS = re.compile(r"user|assistant|system|model|chatbot|developer|ipython", re.I)
CASES = {
    "multi-turn": Conversation(messages=[
        Message("user", "Hi there"), Message("assistant", "Hello friend"),
        Message("user", "What is 2+2?"), Message("assistant", "It is 4.\nFour, in words."),
        Message("user", "Capital of France?"), Message("assistant", "Paris."),
    ]),
    "system": Conversation(system="You are terse.", messages=[
        Message("user", "Hi there"), Message("assistant", "Hello friend"),
        Message("user", "What is 2+2?"), Message("assistant", "It is 4."),
    ]),
    "tool-call": Conversation(tools=[WEATHER_TOOL], messages=[
        Message("user", "Weather in Paris?"), Message("assistant", "", tool_calls=CALL),
        Message("tool", '{"temp": 21}'), Message("assistant", "It is 21 degrees."),
        Message("user", "Thanks!"), Message("assistant", "You are welcome."),
    ]),
}
PROMPT_TEXTS = ["Hi there", "What is 2+2?", "Capital of France?", "You are terse.", "Weather in Paris?",
                "Thanks!", '"temp": 21', "Weather for a city"]
# A marker that closes a reply (by its name); the walk after a reply stops at any other.
CLOSING = re.compile(r"end|eot|return|^<\|call\|>$|^</s>$|^<eos>$", re.I)


def source_of(name: str) -> str:
    return builtin.BUILTIN[name] if name in builtin.BUILTIN else (TEMPLATES / f"{name}.jinja").read_text()


def _render_plain(source: str, conv: Conversation, **changes) -> str:
    """The template's text for a conversation, straight from Jinja (no tokenizer)."""
    from transformers.utils.chat_template_utils import render_jinja_template

    messages = conv.to_messages()
    if changes.get("bare"):
        messages = [{k: v for k, v in m.items() if k != "tool_calls"} for m in messages]
    last_error = None
    for form in render.ARGUMENT_FORMS:
        try:
            msgs = copy.deepcopy(messages)
            for m in msgs:
                for call in m.get("tool_calls") or ():
                    if form == "json":
                        call["function"]["arguments"] = json.dumps(call["function"]["arguments"])
            out, _ = render_jinja_template([msgs], tools=conv.tools, chat_template=source,
                                           bos_token=BOS, eos_token="<|im_end|>")
            return out[0]
        except Exception as exc:  # a template's raise_exception, a TypeError on odd data
            last_error = exc
    raise last_error


def what_it_expresses(name: str, case: str) -> str:
    """How a template takes a case: "ok", "raises" or "ignores-calls" (found by rendering)."""
    source, conv = source_of(name), CASES[case]
    try:
        text = _render_plain(source, conv)
    except Exception:
        return "raises"
    if case == "tool-call":
        try:
            if _render_plain(source, conv, bare=True) == text:
                return "ignores-calls"
        except Exception:  # the template needs the calls (gpt-oss's names the tool turn by them)
            pass
    return "ok"


PARAMS = [
    pytest.param(name, case, kind, id=f"{name}-{case}" + ("" if kind == "ok" else f"-{kind}"))
    for name in BUILTINS + FILES
    for case in CASES
    for kind in [what_it_expresses(name, case)]
]


@pytest.fixture(scope="module")
def base_tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    tok.add_special_tokens({"bos_token": BOS})
    return tok


def setup(base, name: str):
    tok = copy.deepcopy(base)
    spec = name if name in builtin.BUILTIN else str(TEMPLATES / f"{name}.jinja")
    template = render.resolve_template(tok, spec)
    render.prepare_tokenizer(tok, template)
    return tok, template


class Expected:
    """The expected mask of one rendered example (see the module docstring)."""

    def __init__(self, tok, template, conv: Conversation, text: str):
        enc = tok(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
        self.tok, self.text = tok, text
        self.ids, self.offsets = enc["input_ids"], enc["offset_mapping"]
        self.special = set(tok.all_special_ids) | set(tok.added_tokens_decoder)
        self.trained = [False] * len(self.ids)
        self.dont_care = [False] * len(self.ids)
        self.closers: list[tuple[bool, list[int]]] = []  # per reply: (a tool call?, its closing markers)
        self.reply_end = 0
        messages = render._messages(conv, template.tool_arguments)
        tools = render._tools(conv.tools)
        for i, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            prompt = render._apply(tok, template, messages[:i], tools, True)
            before = render._apply(tok, template, messages[:i], tools, False)
            anchors = [message["content"].strip()] if message["content"].strip() else []
            for call in message.get("tool_calls") or ():
                anchors += [call["function"]["name"], "Paris"]
            start = self.reply_start(prompt, before, anchors[0] if anchors else None)
            a = self.token_at(start)
            pos = start
            for anchor in anchors:
                at = text.find(anchor, pos)
                if at < 0:  # a call the template leaves out
                    anchors = None
                    break
                pos = at + len(anchor)
            b = self.turn_end(self.token_at(pos - 1) + 1 if anchors else a, bool(message.get("tool_calls")))
            self.reply_end = self.offsets[b - 1][1] if b > a else start
            if anchors is None:
                self.dont_care[a:b] = [True] * (b - a)
                continue
            self.trained[a:b] = [True] * (b - a)

    def reply_start(self, prompt: str, before: str, anchor: str | None) -> int:
        """Where a reply starts: after the assistant header (the generation prompt) as the
        text has it before the reply's content, or after the longest part of it that ends
        in whitespace or a marker (Qwen 3.5's ``<think>\\n`` is in the generation prompt
        only); without a header (qa, alpaca, after DeepSeek's tool outputs), where the
        prompt parts from the text."""
        header = prompt[render._common_prefix_len(prompt, before):]
        markers = [t for t in self.tok.added_tokens_encoder if header.find(t) >= 0]
        cut = [j for j in range(len(header), 0, -1)
               if j == len(header) or header[j - 1].isspace() or any(header[:j].endswith(t) for t in markers)]
        lo = max(self.reply_end, render._common_prefix_len(self.text, before))
        limit = self.text.find(anchor, lo) if anchor else -1
        for j in cut if limit >= 0 else ():
            at = self.text.rfind(header[:j], self.reply_end, limit)
            if at >= 0:
                return at + j
        return render._common_prefix_len(self.text, prompt)

    def token_at(self, pos: int) -> int:
        """Index of the token holding character ``pos`` (the first one ending after it)."""
        return next(k for k, (_, e) in enumerate(self.offsets) if e > pos)

    def marker(self, k: int) -> bool:
        return self.ids[k] in self.special

    def piece(self, k: int) -> str:
        return self.tok.decode([self.ids[k]], skip_special_tokens=False)

    def turn_end(self, k: int, call: bool) -> int:
        """From the token after a reply's content: through tool-call syntax up to the first
        marker, then through the consecutive closing markers there."""
        n = len(self.ids)
        j = k
        while j < n and not self.marker(j):
            j += 1
        if j < n and CLOSING.search(self.piece(j)):
            first = j
            while j < n and self.marker(j) and CLOSING.search(self.piece(j)):
                j += 1
            self.closers.append((call, self.ids[first:j]))
            return j
        self.closers.append((call, []))
        while j > k and not self.text[self.offsets[j - 1][0]:self.offsets[j - 1][1]].strip():
            j -= 1
        return j


def runs(tok, ids, mask) -> list[str]:
    out, current = [], []
    for tid, m in zip(ids, mask):
        if m:
            current.append(tid)
        elif current:
            out.append(tok.decode(current, skip_special_tokens=False))
            current = []
    if current:
        out.append(tok.decode(current, skip_special_tokens=False))
    return out


@pytest.mark.parametrize("name, case, kind", PARAMS)
def test_every_reply_and_its_closing_tokens_trained_nothing_else(base_tokenizer, name, case, kind):
    tok, template = setup(base_tokenizer, name)
    conv = CASES[case]
    if kind == "raises":
        with pytest.raises(render.RenderError):
            render.render(conv, tok, template, max_length=8192)
        return
    ex = render.render(conv, tok, template, max_length=8192)
    want = Expected(tok, template, conv, ex.text)
    assert ex.input_ids == want.ids
    got = [label != render.IGNORE for label in ex.labels]
    care = [not d for d in want.dont_care]
    got_cared = [g and c for g, c in zip(got, care)]
    want_cared = [w and c for w, c in zip(want.trained, care)]
    assert runs(tok, ex.input_ids, got_cared) == runs(tok, ex.input_ids, want_cared)
    assert got_cared == want_cared
    trained = ex.trained_text()
    for reply in (m.content.strip() for m in conv.messages if m.role == "assistant" and m.content):
        assert reply in trained
    for text in PROMPT_TEXTS:
        assert text not in trained
    assert not ROLE_WORDS.search(tok.decode([t for t, m in zip(ex.input_ids, got_cared) if m])), runs(
        tok, ex.input_ids, got_cared)
    assert not any("not trained" in note for note in ex.notes)
    if kind == "ignores-calls":
        assert any("ignores tool calls" in note for note in ex.notes)
    # the pre-flight warns that nothing closes a reply exactly when nothing does
    replies = [ids for call, ids in want.closers if not call]
    warned = any("no special token closes" in w for w in render.preflight(tok, template, []))
    assert warned == (not all(replies))
    # generation stops at every token that closes a reply (gpt-oss: <|end|> and <|return|>)
    stops = set(render.generation_eos_ids(tok, template))
    for ids in replies:
        assert set(ids) <= stops, (tok.decode(ids), [tok.decode([t]) for t in stops])


def test_gpt_oss_closes_an_earlier_reply_with_end_and_the_last_with_return(base_tokenizer):
    """gpt-oss renders a reply alone with <|return|> and in context with <|end|>: the earlier
    turn was cut at their shared ``<|`` (a stray piece trained, its end token lost)."""
    tok, template = setup(base_tokenizer, "gpt_oss")
    conv = Conversation(messages=[Message("user", "Hi"), Message("assistant", "Hello friend"),
                                  Message("user", "And?"), Message("assistant", "Bye")])
    ex = render.render(conv, tok, template)
    got = runs(tok, ex.input_ids, [label != render.IGNORE for label in ex.labels])
    assert got == ["<|channel|>final<|message|>Hello friend<|end|>", "<|channel|>final<|message|>Bye<|return|>"]
    assert template.end_token == "<|return|>" and set(template.end_tokens) == {"<|return|>", "<|end|>"}
    stops = render.generation_eos_ids(tok, template)
    assert {tok.convert_tokens_to_ids("<|return|>"), tok.convert_tokens_to_ids("<|end|>")} <= set(stops)


@pytest.mark.parametrize("name, end", [
    ("llama3_1", "<|eot_id|>"), ("deepseek_v3", "<｜end▁of▁sentence｜>"), ("phi3_5", "<|end|>"),
    ("gemma3", "<end_of_turn>"),
])
def test_own_template_closing_token_is_found_no_false_warning(base_tokenizer, name, end):
    """A tokenizer whose own chat template writes tokens its vocabulary lacks (a base model
    given an instruct model's template): they are added like a template file's, the end
    token is found, and the pre-flight does not claim that nothing closes the reply."""
    tok = copy.deepcopy(base_tokenizer)
    tok.chat_template = source_of(name)
    template = render.resolve_template(tok, "auto")
    assert template.origin == "tokenizer"
    added = render.prepare_tokenizer(tok, template)
    assert end in added
    assert template.end_token == end
    assert not any("no special token closes" in w for w in render.preflight(tok, template, []))
    ex = render.render(CASES["multi-turn"], tok, template)
    assert ex.trained_text().endswith("Paris." + end)
    assert tok.convert_tokens_to_ids(end) in ex.labels


def test_closing_token_kept_as_an_ordinary_vocabulary_entry():
    """A tokenizer that has <|eot_id|> in its vocabulary but not as an added/special token
    (converted or hand-made tokenizers): the token still closes the reply."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["[UNK]", "<s>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "user", "assistant",
             "\n\n", "Hi", "OK", "there", "Hello", "friend", " "]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"<\|[a-z_]+\|>|\s+|[^\s<]+|<"), behavior="isolated")
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", unk_token="[UNK]")
    fast.chat_template = source_of("llama3")
    template = render.resolve_template(fast, "auto")
    assert render.detect_end_token(fast, template) == "<|eot_id|>"
    assert not any("no special token closes" in w for w in render.preflight(fast, template, []))


def test_a_template_that_cannot_render_says_so(base_tokenizer):
    """Llama 3's template adds bos_token to a string: on a tokenizer without one it fails
    on every row; the pre-flight says that, not that nothing closes the reply."""
    tok = copy.deepcopy(base_tokenizer)
    tok.bos_token = None
    template = render.resolve_template(tok, str(TEMPLATES / "llama3.jinja"))
    render.prepare_tokenizer(tok, template)
    warnings = render.preflight(tok, template, [])
    assert any("cannot render a one-turn conversation ('bos_token' is undefined)" in w for w in warnings)
    assert not any("no special token closes" in w for w in warnings)
