"""Config schema: validation messages name the key, file:line and the allowed values."""

import pytest

from finetui.engine import config as cfg


def write(tmp_path, text):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def test_defaults_validate_and_round_trip(tmp_path):
    c = cfg.Config()
    path = cfg.save(c, tmp_path / "out.yaml")
    assert cfg.load(path) == c


def test_errors_name_key_line_and_choices(tmp_path):
    p = write(tmp_path, "model:\n  name_or_path: tiny\ntrain:\n  batchsize: 4\n  learning_rate: -1\nmethod:\n  type: lorra\n")
    with pytest.raises(cfg.ConfigError) as err:
        cfg.load(p)
    problems = err.value.problems
    assert f"{p}:4: train.batchsize: unknown key (did you mean train.batch_size?)" in problems
    assert any(m.startswith(f"{p}:5: train.learning_rate:") and "greater than 0" in m for m in problems)
    assert any(m.startswith(f"{p}:7: method.type:") and "'full', 'lora' or 'qlora'" in m for m in problems)


def test_invalid_yaml_names_line(tmp_path):
    p = write(tmp_path, "train:\n  batch_size: [1, 2\n")
    with pytest.raises(cfg.ConfigError) as err:
        cfg.load(p)
    assert str(err.value).startswith(f"{p}:") and "invalid YAML" in str(err.value)


def test_overrides_parse_yaml_scalars(tmp_path):
    p = write(tmp_path, "train:\n  batch_size: 8\n")
    c = cfg.load(p, ["train.batch_size=2", "train.learning_rate=1e-3", "method.type=qlora", "data.columns={question: q}"])
    assert c.train.batch_size == 2 and c.train.learning_rate == 1e-3
    assert c.method.type == "qlora" and c.model.quantization == "4bit"  # QLoRA implies a 4-bit base
    assert c.data.columns == {"question": "q"}
    with pytest.raises(cfg.ConfigError, match="expected key=value"):
        cfg.load(p, ["train.batch_size"])


def test_full_finetune_of_quantised_weights_is_refused():
    with pytest.raises(cfg.ConfigError, match="method.type: full"):
        cfg.validate({"method": {"type": "full"}, "model": {"quantization": "4bit"}})


def test_set_value_validates_whole_config():
    c = cfg.Config()
    assert cfg.set_value(c, "train.batch_size", 3).train.batch_size == 3
    with pytest.raises(cfg.ConfigError, match="train.batch_size"):
        cfg.set_value(c, "train.batch_size", 0)


def test_field_specs_cover_every_field():
    specs = {s["key"]: s for s in cfg.field_specs()}
    assert specs["method.type"]["choices"] == ["full", "lora", "qlora"]
    assert specs["train.batch_size"]["kind"] == "int" and specs["train.batch_size"]["bounds"]["ge"] == 1
    n_fields = sum(len(cfg.Config.model_fields[s].annotation.model_fields) for s in cfg.SECTIONS)
    assert len(specs) == n_fields


def test_yaml_words_no_yes_stay_words_on_the_command_line():
    c = cfg.validate(cfg.apply_overrides({}, ["train.save_strategy=no", "data.packing=true"]))
    assert c.train.save_strategy == "no" and c.data.packing is True
