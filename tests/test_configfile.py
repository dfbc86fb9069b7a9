"""engine/configfile.py: the one YAML/TOML reader, and its FILE:LINE messages."""

from __future__ import annotations

import re

import pytest

from finetui.engine import configfile
from finetui.engine.configfile import ConfigFileError


def test_yaml_mapping_and_empty_file(tmp_path):
    path = tmp_path / "a.yaml"
    path.write_text("model:\n  name_or_path: tiny\n", encoding="utf-8")
    assert configfile.load(path) == {"model": {"name_or_path": "tiny"}}
    path.write_text("# nothing here\n", encoding="utf-8")
    assert configfile.load(path) is None


def test_yaml_error_names_file_and_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("a: 1\nb: [1, 2\nc: 3\n", encoding="utf-8")
    with pytest.raises(ConfigFileError) as info:
        configfile.load(path)
    message = str(info.value)
    assert message.startswith(f"{path}:3: invalid YAML: ")
    assert "expected ',' or ']'" in message


def test_yaml_is_safe(tmp_path):
    with pytest.raises(ConfigFileError, match=r"<s>:1: invalid YAML: "):
        configfile.parse("x: !!python/object/apply:os.system ['true']\n", "<s>")


def test_toml_by_suffix_or_flag(tmp_path):
    path = tmp_path / "t.toml"
    path.write_text('theme = "nord"\n[keys]\nquit = "q"\n', encoding="utf-8")
    assert configfile.load(path) == {"theme": "nord", "keys": {"quit": "q"}}
    assert configfile.parse("a = 1", "inline", toml=True) == {"a": 1}
    assert configfile.parse("a: 1", path, toml=False) == {"a": 1}
    with pytest.raises(ConfigFileError, match=r"t\.toml: invalid TOML: .*line 1"):
        configfile.parse("a = = 1", path)


def test_missing_and_unreadable(tmp_path):
    missing = tmp_path / "none.yaml"
    with pytest.raises(ConfigFileError, match=r"none\.yaml: no such file$"):
        configfile.read(missing)
    with pytest.raises(ConfigFileError, match=r"none\.yaml: no such config file$"):
        configfile.read(missing, missing="no such config file")
    with pytest.raises(ConfigFileError, match=r"none\.yaml: cannot read: "):
        configfile.read(missing, missing=None)
    binary = tmp_path / "b.yaml"
    binary.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(ConfigFileError, match=r"b\.yaml: cannot read: "):
        configfile.read(binary)


def test_error_is_a_value_error():
    assert issubclass(ConfigFileError, ValueError)


def test_json_object_names_the_file_and_line(tmp_path):
    from finetui.engine.configfile import ConfigFileError, json_object

    good = tmp_path / "config.json"
    good.write_text('{"hidden_size": 64}')
    assert json_object(good) == {"hidden_size": 64}
    bad = tmp_path / "bad.json"
    bad.write_text('{\n  "a": 1,\n  "b": \n}')
    with pytest.raises(ConfigFileError, match=rf"^{re.escape(str(bad))}:4: invalid JSON: "):
        json_object(bad)
    bad.write_text("[1, 2]")
    with pytest.raises(ConfigFileError, match=rf"^{re.escape(str(bad))}: expected entries$"):
        json_object(bad, expected="expected entries")
    with pytest.raises(ConfigFileError, match=r"nope.json: no such file$"):
        json_object(tmp_path / "nope.json")
    with pytest.raises(ConfigFileError, match=r"nope.json: cannot read: "):
        json_object(tmp_path / "nope.json", missing=None)
