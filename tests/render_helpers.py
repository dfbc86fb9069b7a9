"""What a rendered example trains, as text: shared by the masking, data-fidelity,
transcript and real-model tests."""

from __future__ import annotations

IGNORE = -100


def trained_runs(tokenizer, ex) -> list[str]:
    """Decoded text of each contiguous run of trained tokens (labels != -100)."""
    runs, current = [], []
    for tid, label in zip(ex.input_ids, ex.labels):
        if label != IGNORE:
            assert label == tid, "a trained label must be the token itself"
            current.append(tid)
        elif current:
            runs.append(current)
            current = []
    if current:
        runs.append(current)
    return [tokenizer.decode(run, skip_special_tokens=False) for run in runs]
