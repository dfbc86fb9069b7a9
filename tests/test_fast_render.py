"""The fast rendering path gives exactly what the full path gives.

Fast: a template's text from the skeleton of the conversation's shape
(``engine.data.skeleton``, built once per shape from Jinja's own output), the tokens from the
fast tokenizer's Rust ``encode_batch`` read directly, and, for ``finetui data inspect``,
counts instead of examples (``render.count_many``, ``chunking.count_records``). Full: Jinja
for every conversation, ``tokenizer(texts, return_offsets_mapping=True)``, whole Examples.

Every real template in ``tests/data/chat_templates`` and every template finetui ships, on
records of every format in ``tests/data`` (LLaMA-Factory alpaca/sharegpt/tool calls/DPO/KTO,
OpenAI messages, Axolotl, torchtune, OpenOrca, transcripts, raw text): the same text, token
ids, labels and trained spans, and the same counts. Llama 3's template trims contents, so a
skeleton would be wrong there: its shapes must fall back to Jinja (and a skeleton taken
without the probes is shown to differ, so the comparison can tell).
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest

from finetui.engine.data import chunking, readers, render, skeleton
from finetui.engine.data import templates as builtin
from finetui.engine.data.conversation import Conversation, Message

DATA = Path(__file__).resolve().parent / "data"
TEMPLATES = DATA / "chat_templates"
NAMES = sorted(builtin.BUILTIN) + sorted(p.stem for p in TEMPLATES.glob("*.jinja"))
PER_FILE = 6  # records of each file
ROLES = {"Host": "user", "Guest": "assistant", "Interviewer": "user", "Dr. Okafor": "assistant"}
SOURCES = [
    *sorted((DATA / "datasets").glob("*/*.json*")),
    *sorted(p for p in (DATA / "fidelity").iterdir() if p.is_file()),
    DATA / "fidelity" / "llamafactory_kto" / "kto_demo.json",
]
EDGE = [  # shapes the files may lack: whitespace around contents, empty replies, system only
    Conversation(messages=[Message("user", "  padded question \n"), Message("assistant", "\n\nreply with </think> inside ")]),
    Conversation(messages=[Message("user", "Hi"), Message("assistant", ""), Message("user", "Again?"),
                           Message("assistant", "Yes.")], system="Be brief."),
    Conversation(messages=[Message("user", "context"), Message("assistant", "not trained", train=False),
                           Message("user", "go on"), Message("assistant", "trained")]),
    Conversation(messages=[Message("user", "   "), Message("assistant", "whitespace-only prompt")]),
    Conversation(kind="text", text="Plain pretraining text " * 40),
]


def _conversations() -> list[Conversation]:
    out: list[Conversation] = []
    for path in SOURCES:
        if path.name == "dataset_info.json":
            continue
        try:
            loaded = readers.load_records(str(path), max_samples=PER_FILE, roles=ROLES)
        except readers.DataError:
            continue
        out.extend(conv for _, conv in loaded.conversations)
    return out + EDGE


@pytest.fixture(scope="module")
def conversations() -> list[Conversation]:
    convs = _conversations()
    assert len(convs) > 60 and {c.kind for c in convs} >= {"chat", "text", "preference"}
    assert any(m.tool_calls for c in convs for m in c.messages) and any(c.system for c in convs)
    return convs


@pytest.fixture(scope="module")
def base_tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    tok.add_special_tokens({"bos_token": "<s>"})  # templates that write bos_token
    return tok


def _setup(base, name: str):
    tok = copy.deepcopy(base)
    template = render.resolve_template(tok, name if name in builtin.BUILTIN else str(TEMPLATES / f"{name}.jinja"))
    render.prepare_tokenizer(tok, template)
    return tok, template


def _full_path(monkeypatch, tok, name, fn):
    """``fn(tok, template)`` on the full path: Jinja for every text, transformers' call."""
    with monkeypatch.context() as m:
        m.setattr(skeleton, "ENABLED", False)
        m.setattr(render, "_backend", lambda tokenizer: None)
        _, template = _setup(tok, name)
        return fn(tok, template)


def _parts(rendered, end_id):
    if isinstance(rendered, render.RenderError):
        return str(rendered)
    n = len(rendered.examples)
    return ([(ex.n_trained, ex.n_tokens, ex.truncated, tuple(ex.notes), k + 1 < n or end_id in ex.labels)
             for k, ex in enumerate(rendered.examples)], rendered.full_tokens, rendered.kept_tokens)


@pytest.mark.parametrize("name", NAMES)
def test_fast_path_renders_and_counts_what_the_full_path_does(base_tokenizer, conversations, monkeypatch, name):
    tok, template = _setup(base_tokenizer, name)
    end_id = tok.convert_tokens_to_ids(template.end_token) if template.end_token else None
    convs = [c for c in conversations]
    for max_length, train_on in ((512, "assistant"), (48, "assistant"), (512, "all")):
        kw = dict(train_on=train_on, max_length=max_length)
        fast = render.render_many(convs, tok, template, **kw)
        one = [_or_error(render.render, c, tok, template, **kw) for c in convs]  # the dataset builder's way
        full = _full_path(monkeypatch, tok, name, lambda t, tp: render.render_many(convs, t, tp, **kw))
        for conv, a, b, c in zip(convs, fast, one, full):
            assert _same(a, c) and _same(b, c), (name, kw, conv)
        counted = chunking.count_records(convs, tok, template, long_text="chunk", end_id=end_id, **kw)
        whole = _full_path(monkeypatch, tok, name, lambda t, tp: chunking.render_records(
            convs, t, tp, long_text="chunk", **kw))
        for conv, c, r in zip(convs, counted, whole):
            got = str(c) if isinstance(c, render.RenderError) else (c.parts, c.full_tokens, c.kept_tokens)
            assert got == _parts(r, end_id), (name, kw, conv)
    built = [s for s in (template._skeletons.shapes.values() if template._skeletons else ()) if s is not None]
    if name in ("chatml", "qa", "alpaca", "plain", "qwen2_5", "qwen3_training"):
        assert built, f"{name}: no skeleton was used, the fast path went untested"
    if name.startswith("llama3"):
        assert not built, f"{name} trims contents: a skeleton must not render it"


def _or_error(fn, *args, **kw):
    try:
        return fn(*args, **kw)
    except render.RenderError as exc:
        return exc


def _same(a, b) -> bool:
    if isinstance(a, render.RenderError) or isinstance(b, render.RenderError):
        return str(a) == str(b) and type(a) is type(b)
    return a == b


def test_a_skeleton_taken_without_its_probes_would_be_wrong(base_tokenizer, monkeypatch):
    """Llama 3's template trims every content: its sentinel rendering alone looks like a
    skeleton, but filled with a padded content it differs from Jinja. The probes refuse it,
    and the comparison above would catch it."""
    tok, template = _setup(base_tokenizer, "llama3")
    messages = [{"role": "user", "content": " padded \n"}, {"role": "assistant", "content": "ok"}]
    jinja = lambda probe: (render._apply_jinja(tok, template, probe, None, False), None)  # noqa: E731
    values = ["\ue0000\ue001", "\ue0001\ue001"]
    text, _ = jinja([{"role": m["role"], "content": v} for m, v in zip(messages, values)])
    unprobed = skeleton._locate(text, None, values, (0, 1))
    assert unprobed is not None
    assert unprobed.fill([m["content"] for m in messages])[0] != jinja(messages)[0]
    assert skeleton.build(messages, jinja, skeleton.template_literals(template.source)) is None
    assert render._apply(tok, template, messages, None, False) == jinja(messages)[0]


def test_a_template_that_looks_into_contents_falls_back(base_tokenizer):
    """Qwen 3's template splits reasoning out of replies ('</think>' in content): no skeleton
    for a shape with a reply, and its text is Jinja's."""
    tok, template = _setup(base_tokenizer, "qwen3")
    conv = Conversation(messages=[Message("user", "Why?"), Message("assistant", "<think>\nhm\n</think>\n\nBecause.")])
    messages = render._messages(conv)
    assert render._apply(tok, template, messages, None, False) == render._apply_jinja(tok, template, messages, None, False)
    built = [form for (_, form), s in template._skeletons.shapes.items() if s is not None]
    assert built and not [form for form in built if ("assistant", True) in form]


def test_inspect_in_fresh_workers_under_mimalloc_reports_what_one_process_does(tiny_model_dir, shared_datasets,
                                                                                 monkeypatch):
    """A big source renders in workers started from a fork server with mimalloc preloaded
    (they get the job pickled, not inherited): the same report as one process."""
    from transformers import AutoTokenizer

    from finetui.engine.data import inspection
    from finetui.engine.perf import allocator

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    path = str(shared_datasets / "llamafactory" / "alpaca_en_demo.json")
    one = inspection.inspect(path, tokenizer=tok, num_proc=1, progress=False, example=700)
    monkeypatch.setattr(inspection, "MIMALLOC_BYTES", 0)  # this small file counts as big
    fresh = inspection.inspect(path, tokenizer=tok, num_proc=2, progress=False, example=700)
    assert fresh == one and one["counts"]["records"] == 999
    if allocator.mimalloc_library() is not None:  # a Linux x86_64/aarch64 install has it
        job = inspection._Job(tok, render.resolve_template(tok, "auto"), "assistant", 512, "chunk", 0, None)
        server = inspection._fork_server()
        assert server is not None
        with inspection._Pipeline(job, inspection._Tally(512, False), 2, None, server=server) as pipeline:
            pipeline._start()
            assert pipeline.pool.apply(allocator.mimalloc_loaded)
            # the workers' tokenizer runs no threads of its own beside the other workers
            assert pipeline.pool.apply(os.getenv, ("TOKENIZERS_PARALLELISM",)) == "false"


REALISTIC = [
    DATA / "datasets" / "llamafactory" / "alpaca_en_demo.json",
    DATA / "datasets" / "llamafactory" / "identity.json",
    DATA / "datasets" / "llamafactory" / "glaive_toolcall_en_demo.json",
    DATA / "datasets" / "llamafactory" / "dpo_en_demo.json",
    *sorted((Path(__file__).resolve().parents[1] / "sample_data").glob("*.json*")),
]


@pytest.mark.parametrize("name", ["tokenizer", "alpaca", "qa"])
def test_plain_counting_counts_every_realistic_record_as_the_full_path(base_tokenizer, monkeypatch, name):
    """``finetui data inspect`` counts plain conversations (no tools, every reply trained)
    under a template with generation markers without the per-record render steps
    (render._PlainCounts): on every record of real alpaca, identity, tool-call and
    preference files and of sample_data, the counts are the full path's, record by record,
    and most records took that way (so the comparison tests it)."""
    convs = []
    for path in REALISTIC:
        convs.extend(conv for _, conv in readers.load_records(str(path)).conversations)
    assert len(convs) > 1500
    def setup():
        tok = copy.deepcopy(base_tokenizer)
        template = render.resolve_template(tok, name)  # the model's own (ChatML) or finetui's
        render.prepare_tokenizer(tok, template)
        return tok, template

    tok, template = setup()
    assert template.has_generation
    end_id = tok.convert_tokens_to_ids(template.end_token)
    plain = render._PlainCounts.of(tok, template, "assistant", 512, end_id)
    taken = sum(plain.start(c) is not None for c in convs)
    assert taken > 0.8 * len(convs) and taken < len(convs)  # tool-call rows take the full steps
    for max_length in (512, 40):
        counted = chunking.count_records(convs, tok, template, max_length=max_length, end_id=end_id)
        with monkeypatch.context() as m:  # the full path: Jinja for every text, transformers' call
            m.setattr(skeleton, "ENABLED", False)
            m.setattr(render, "_backend", lambda tokenizer: None)
            whole = chunking.render_records(convs, *setup(), max_length=max_length)
        for k, (conv, c, r) in enumerate(zip(convs, counted, whole)):
            got = str(c) if isinstance(c, render.RenderError) else (c.parts, c.full_tokens, c.kept_tokens)
            assert got == _parts(r, end_id), (name, max_length, k, conv)
