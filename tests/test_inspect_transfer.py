"""`finetui data inspect` rendering in worker processes reports what one process does on a
realistic file: bad lines and invalid records inside the batches the workers render keep
their counts and their file:line, and lengths, truncation and trained tokens are the same."""

from __future__ import annotations

import json

from finetui.engine.data import inspection


def test_a_file_with_bad_lines_inside_a_workers_share_reports_as_one_process_does(tmp_path, tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    lines = []
    for i in range(3000):  # 12 batches of 256: the first two here, the rest in workers
        if i in (900, 1777):
            lines.append('{"instruction": "cut off", "output": ')  # not JSON
        elif i in (1000, 2500):
            lines.append(json.dumps({"instruction": f"no reply {i}", "output": ""}))  # invalid record
        elif i % 97 == 0:
            lines.append(json.dumps({"conversations": [{"from": "human", "value": f"q {i}"},
                                                       {"from": "gpt", "value": "a " * (i % 600)}],
                                     "system": "short"}))
        else:
            lines.append(json.dumps({"instruction": f"task {i}", "input": "x" * (i % 7),
                                     "output": "word " * (i % 300), "extra": i}))
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join(lines) + "\n")
    one = inspection.inspect(str(path), tokenizer=tok, num_proc=1, progress=False, max_length=256, example=2222)
    two = inspection.inspect(str(path), tokenizer=tok, num_proc=2, progress=False, max_length=256, example=2222)
    assert one == two
    assert one["counts"]["records"] == 3000 and one["counts"]["invalid"] >= 4
    issues = "\n".join(one["issues"])
    for line in (901, 1778, 1001, 2501):
        assert f"mixed.jsonl:{line}" in issues, issues
    assert one["counts"]["truncated"] > 0
