"""Transcripts become conversations with a role per speaker (``format: transcript``).

Realistic files in ``tests/data/fidelity``:

- ``podcast_transcript.jsonl``: a diarised podcast export, one utterance a row
  (``episode_id``, ``segment``, ``start``, ``speaker``, ``text``), two episodes; a host's
  intro split over two rows, one empty utterance, a producer's aside in episode 2;
- ``interview_transcript.txt``: ``Name: text`` lines, two sessions separated by ``---``, a
  ``[Recording starts]`` line before the first label and a reply that runs over two lines.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from cli_helpers import inspect_runner

from finetui.engine.data import render
from finetui.engine.data.formats import DataError, detect
from finetui.engine.data.inspection import inspect, print_report
from finetui.engine.data.readers import iter_records, load_records
from render_helpers import trained_runs

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "tests" / "data" / "fidelity"
PODCAST = DATA / "podcast_transcript.jsonl"
INTERVIEW = DATA / "interview_transcript.txt"
PODCAST_ROLES = {"Host": "user", "Guest": "assistant"}
INTERVIEW_ROLES = {"Interviewer": "user", "Dr. Okafor": "assistant"}


@pytest.fixture
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)




def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


# ------------------------------------------------------------------ rows of utterances


def test_podcast_rows_become_one_conversation_per_episode():
    result = load_records(PODCAST, roles={**PODCAST_ROLES, "Producer": "user"})
    assert result.format == "transcript"
    assert result.counts == {"ok": 2, "invalid": 0, "repaired": 1}
    (first, one), (second, two) = result.conversations
    # each conversation is placed where its episode starts
    assert (first.line, second.line) == (1, 12)
    data = rows(PODCAST)
    # consecutive turns of one role merge: the host's two intro rows are one user turn
    assert [m.role for m in one.messages] == ["user", "assistant"] * 4
    assert one.messages[0].content == data[0]["text"] + "\n" + data[1]["text"]
    assert one.messages[5].content == data[7]["text"] + "\n" + data[8]["text"]
    # the producer (mapped to user) and the host speak in a row: one user turn
    assert [m.role for m in two.messages] == ["user", "assistant", "user", "assistant", "user", "assistant"]
    assert two.messages[2].content == data[13]["text"] + "\n" + data[14]["text"]
    # the empty utterance is dropped and counted where it is
    assert [str(i) for i in result.repairs] == [f"{PODCAST}:6: field 'text': empty turn dropped (Guest)"]
    # segment and start are said to be unused, not silently lost
    assert any(note.startswith("2 columns not trained: segment") and "start" in note for note in result.notes())


def test_a_speaker_not_in_the_mapping_is_named_with_how_to_map_it():
    result = load_records(PODCAST, roles=PODCAST_ROLES)
    assert result.counts == {"ok": 1, "invalid": 1, "repaired": 1}
    line = next(i for i, row in enumerate(rows(PODCAST), 1) if row["speaker"] == "Producer")
    assert [str(i) for i in result.issues] == [
        f"{PODCAST}:{line}: field 'speaker': speaker 'Producer' has no role: add it to --roles (data.roles), "
        "e.g. Producer=user; a role is user, assistant or system"
    ]
    # strict stops at the first problem: here the empty utterance of episode 1
    with pytest.raises(DataError, match=r"podcast_transcript.jsonl:6: field 'text': empty turn dropped \(Guest\) "
                       r"\(on_error strict refuses a record it would repair\)"):
        load_records(PODCAST, roles=PODCAST_ROLES, on_error="strict")


def test_without_roles_the_speakers_are_listed_with_a_mapping_to_give():
    with pytest.raises(DataError) as err:
        load_records(PODCAST)
    assert str(err.value) == (
        f"{PODCAST}: transcript speakers have no role: Host (8 turns), Guest (9 turns), Producer (1 turn); map "
        "them, e.g. --roles Host=user,Guest=assistant,Producer=user (data.roles: {Host: user, Guest: assistant, "
        "Producer: user}); roles are user, assistant or system"
    )
    with pytest.raises(DataError, match="data.roles: Host=bot: a role is one of user, assistant, system"):
        load_records(PODCAST, roles={"Host": "bot"})


def test_speakers_named_like_roles_need_no_mapping(tmp_path):
    path = tmp_path / "support_chats.jsonl"
    lines = [
        {"conversation_id": 7, "role": "user", "content": "My order arrived damaged."},
        {"conversation_id": 7, "role": "assistant", "content": "Sorry to hear that. Could you send a photo?"},
        {"conversation_id": 8, "role": "user", "content": "How do I reset my password?"},
        {"conversation_id": 7, "role": "user", "content": "Sent, the box was crushed."},
        {"conversation_id": 8, "role": "assistant", "content": "Use the 'Forgot password' link on the sign-in page."},
        {"conversation_id": 7, "role": "assistant", "content": "Thanks. A replacement is on its way."},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    result = load_records(path)
    assert result.format == "transcript" and result.counts == {"ok": 2, "invalid": 0}
    (first, seven), (_, eight) = result.conversations
    # grouped by id in the order each id first appears, rows in file order
    assert first.line == 1
    assert [m.content for m in seven.messages] == [lines[i]["content"] for i in (0, 1, 3, 5)]
    assert [m.content for m in eight.messages] == [lines[i]["content"] for i in (2, 4)]


def test_transcript_renders_and_trains_the_assistant_speaker(tokenizer):
    result = inspect(str(PODCAST), tokenizer=tokenizer, template="chatml", roles=PODCAST_ROLES)
    assert result["format"] == "transcript"
    assert (result["counts"]["ok"], result["counts"]["invalid"], result["counts"]["repaired"]) == (1, 1, 1)
    data = rows(PODCAST)
    guest = [row["text"] for row in data[:11] if row["speaker"] == "Guest" and row["text"]]
    assert result["example"]["trained_text"] == "".join([
        guest[0] + "<|im_end|>", guest[1] + "<|im_end|>", guest[2] + "\n" + guest[3] + "<|im_end|>",
        guest[4] + "<|im_end|>",
    ])
    out = io.StringIO()
    print_report(result, file=out)
    assert "speaker 'Producer' has no role: add it to --roles" in out.getvalue()


# ------------------------------------------------------------------ Name: text lines


def test_name_text_file_becomes_conversations_split_at_dashes(tokenizer):
    result = load_records(INTERVIEW, roles=INTERVIEW_ROLES)
    assert result.format == "transcript"
    assert result.counts == {"ok": 2, "invalid": 0, "repaired": 1}
    (first, one), (second, two) = result.conversations
    assert (first.line, second.line) == (1, 10)
    assert [m.role for m in one.messages] == ["user", "assistant"] * 3
    # a line without a label continues the turn before it
    assert one.messages[3].content == (
        "Years ahead, for the astronomical part. The Moon and the Sun move like clockwork.\n"
        "What we can't predict that far out is the weather: a storm surge can add a metre on top of the forecast."
    )
    assert [m.role for m in two.messages] == ["user", "assistant"] * 2
    assert [str(i) for i in result.repairs] == [
        f"{INTERVIEW}:1: field 'text': text before the first speaker label dropped (line 1 of the text)"
    ]
    template = render.resolve_template(tokenizer, "chatml")
    render.prepare_tokenizer(tokenizer, template)
    ex = render.render(two, tokenizer, template, max_length=4096)
    assert trained_runs(tokenizer, ex) == [
        "We run a surge model four times a day from the national weather forecast and compare it with what the "
        "gauges measure.<|im_end|>",
        "Then the gauges win, and the duty forecaster calls the harbour masters directly.<|im_end|>",
    ]


def test_a_speaker_of_a_text_file_without_a_role_is_reported_at_its_line():
    result = load_records(INTERVIEW, roles={"Interviewer": "user"})
    assert result.counts == {"ok": 0, "invalid": 2}
    assert [str(i) for i in result.issues] == [
        f"{INTERVIEW}:3: field 'speaker': speaker 'Dr. Okafor' has no role: add it to --roles (data.roles), "
        "e.g. Dr. Okafor=user; a role is user, assistant or system",
        f"{INTERVIEW}:11: field 'speaker': speaker 'Dr. Okafor' has no role: add it to --roles (data.roles), "
        "e.g. Dr. Okafor=user; a role is user, assistant or system",
    ]


def test_a_name_text_file_without_roles_stays_text_and_says_how_to_map_it():
    result = load_records(INTERVIEW)
    assert result.format == "text" and result.counts == {"ok": 2, "invalid": 0}
    assert result.notes()[0] == (
        f"{INTERVIEW}: the text looks like a transcript (speakers Interviewer (5 turns), Dr. Okafor (5 turns)) and "
        "is trained as plain text; to train it as conversations, map the speakers, e.g. "
        "--roles Interviewer=user,Dr. Okafor=assistant (data.roles)"
    )


def test_blank_lines_between_single_turns_do_not_split_a_conversation(tmp_path):
    path = tmp_path / "call.txt"
    path.write_text(
        "Caller: Hi, my heating stopped working this morning.\n\n"
        "Agent: I'm sorry to hear that. Is the display on the boiler showing a code?\n\n"
        "Caller: It says F28.\n\n"
        "Agent: That usually means no ignition. Please check that the gas supply valve is open.\n"
        "---\n"
        "Caller: Do you service heat pumps too?\n\n"
        "Agent: Yes, we service air-source and ground-source heat pumps.\n"
    )
    result = load_records(path, roles={"Caller": "user", "Agent": "assistant"})
    assert result.counts == {"ok": 2, "invalid": 0}
    assert [len(conv.messages) for _, conv in result.conversations] == [4, 2]
    assert [record.line for record, _ in result.conversations] == [1, 9]


def test_text_records_holding_transcripts_need_roles(tmp_path):
    path = tmp_path / "dialogues.jsonl"
    texts = [
        "Ana: Did you book the train tickets?\nBen: Yes, the 9:40 to Leeds.\nAna: Perfect, thanks!",
        "Ana: Are we still on for dinner?\nBen: Running late, start without me.\nAna: Okay, see you soon.",
    ]
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    plain = load_records(path)
    assert plain.format == "text" and "looks like a transcript" in plain.notes()[0]
    chats = load_records(path, roles={"Ana": "user", "Ben": "assistant"})
    assert chats.format == "transcript"
    assert [m.content for m in chats.conversations[0][1].messages] == [
        "Did you book the train tickets?", "Yes, the 9:40 to Leeds.", "Perfect, thanks!"
    ]
    # a speaker without a role: the line within the text is named
    partial = load_records(path, roles={"Ana": "user"})
    assert str(partial.issues[0]) == (
        f"{path}:1: field 'text line 2': speaker 'Ben' has no role: add it to --roles (data.roles), e.g. Ben=user; "
        "a role is user, assistant or system"
    )


# ------------------------------------------------------------------ never hijacked


def test_no_other_dataset_is_read_as_a_transcript():
    """Every dataset the repository ships (tests/data, sample_data) keeps the format it had,
    and none is said to look like a transcript."""
    mine = {PODCAST.name, INTERVIEW.name}
    files = [p for p in sorted((REPO / "tests" / "data").rglob("*"))
             if p.suffix in (".json", ".jsonl", ".txt", ".csv") and p.name not in mine
             and p.name != "dataset_info.json" and "chat_templates" not in p.parts]
    files += [p for p in sorted((REPO / "sample_data").iterdir()) if p.suffix in (".json", ".jsonl", ".txt")]
    assert len(files) > 15
    for path in files:
        sample = []
        for record in iter_records(path, report=lambda issue: None):
            sample.append(record.data)
            if len(sample) >= 50:
                break
        try:
            found = detect(sample)
        except DataError:
            continue
        assert found != "transcript", path
        if found == "text":
            assert not any("transcript" in note for note in load_records(path).notes()), path
    # a pretraining text of question/answer lines stays text
    assert detect([{"text": "Question: What is 2+2?\nAnswer: 4"}] * 3) == "text"
    # a row with a name and a text but no conversation id is no transcript
    assert detect([{"name": "Widget", "text": "A widget is a small gadget."}] * 3) == "text"


# ------------------------------------------------------------------ settings and CLI


def test_data_roles_reach_training(tokenizer, tmp_path, monkeypatch):
    from finetui.engine.config import TRANSCRIPT_ROLES, ConfigError, validate
    from finetui.engine.data import dataset, transcripts

    assert TRANSCRIPT_ROLES == transcripts.ROLES
    with pytest.raises(ConfigError, match=r"data.roles.Host: Input should be 'user', 'assistant' or 'system'"):
        validate({"data": {"roles": {"Host": "bot"}}})
    monkeypatch.setenv("FINETUI_CACHE", str(tmp_path / "cache"))
    config = validate({"data": {"path": str(PODCAST), "roles": {**PODCAST_ROLES, "Producer": "user"},
                                "test_size": 0, "template": "chatml"}})
    built = dataset.build(config, tokenizer)
    assert built.report.format == "transcript"
    assert (built.report.counts["records"], built.report.counts["ok"], len(built.train)) == (2, 2, 2)


def test_inspect_command_line_takes_roles(tiny_model_dir):
    run = inspect_runner(tiny_model_dir)
    shown = run(str(PODCAST), "--roles", "Host=user,Guest=assistant", "--roles", "Producer=user", "--json")
    assert shown.returncode == 0, shown.stderr
    result = json.loads(shown.stdout)
    assert result["format"] == "transcript" and result["counts"]["ok"] == 2
    txt = run(str(INTERVIEW), "--roles", "Interviewer=user,Dr. Okafor=assistant")
    assert txt.returncode == 0 and "format    transcript (detected)" in txt.stdout
    bad = run(str(PODCAST), "--roles", "Host")
    assert bad.returncode != 0 and "--roles Host: expected SPEAKER=ROLE" in bad.stderr + bad.stdout


def test_a_mapping_reaches_every_transcript_field(tmp_path):
    """speaker, text, conversation_id and system under a file's own column names, mapped
    with data.columns (--column FIELD=NAME): the same conversations, no column unused."""
    from finetui.engine.data.formats import FIELDS

    plain = tmp_path / "plain.jsonl"
    renamed = tmp_path / "renamed.jsonl"
    data = [
        {"conversation_id": "a", "speaker": "Host", "text": "What is basalt?", "system": "Answer like a geologist."},
        {"conversation_id": "a", "speaker": "Guest", "text": "A volcanic rock."},
        {"conversation_id": "b", "speaker": "Host", "text": "And granite?"},
        {"conversation_id": "b", "speaker": "Guest", "text": "Its slow-cooled cousin."},
    ]
    assert set(data[0]) == set(FIELDS["transcript"])
    plain.write_text("".join(json.dumps(r) + "\n" for r in data))
    renamed.write_text("".join(json.dumps({f"my_{k}": v for k, v in r.items()}) + "\n" for r in data))
    expected = load_records(plain, roles=PODCAST_ROLES)
    got = load_records(renamed, roles=PODCAST_ROLES, columns={k: f"my_{k}" for k in FIELDS["transcript"]})
    assert got.format == "transcript" and got.counts == {"ok": 2, "invalid": 0}
    assert [c.to_dict() for _, c in got.conversations] == [c.to_dict() for _, c in expected.conversations]
    assert got.conversations[0][1].system == "Answer like a geologist."
    assert got.notes() == []
