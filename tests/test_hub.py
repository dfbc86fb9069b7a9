"""engine/hub.py: whether a hub id is cached, reachable, or the user said offline."""

from __future__ import annotations

import socket

import pytest

from finetui.engine import hub


@pytest.mark.parametrize("name, expected", [
    ("gpt2", True), ("org/model-1.5", True), ("./folder", False), ("~/m", False),
    ("a/b/c", False), ("org/..", False), ("/abs/path", False), ("", False),
])
def test_is_hub_id(name, expected):
    assert hub.is_hub_id(name) is expected


@pytest.mark.parametrize("value, expected", [("1", True), ("ON", True), (" yes ", True), ("0", False), ("", False)])
def test_env_offline(monkeypatch, value, expected):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", value)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    assert hub.env_offline("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE") is expected
    assert hub.env_offline("HF_HUB_OFFLINE") is False


def test_offline_reads_transformers_offline(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    assert hub.offline() is True


def test_endpoint(monkeypatch):
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    assert hub.endpoint() == ("huggingface.co", 443)
    monkeypatch.setenv("HF_ENDPOINT", "http://mirror.local:8080")
    assert hub.endpoint() == ("mirror.local", 8080)
    monkeypatch.setenv("HF_ENDPOINT", "http://mirror.local")
    assert hub.endpoint() == ("mirror.local", 80)


def test_reachable_is_one_connect(monkeypatch):
    seen = []

    class Conn:
        def close(self):
            seen.append("closed")

    def connect(address, timeout):
        seen.append((address, timeout))
        return Conn()

    monkeypatch.setenv("HF_ENDPOINT", "https://hub.example:9443")
    monkeypatch.setattr(socket, "create_connection", connect)
    assert hub.reachable(0.5) is True
    assert seen == [(("hub.example", 9443), 0.5), "closed"]

    def refuse(address, timeout):
        raise ConnectionRefusedError(address)

    monkeypatch.setattr(socket, "create_connection", refuse)
    assert hub.reachable(0.5) is False


def _cache(monkeypatch, tmp_path):
    """A HF cache holding org/model's config.json, as huggingface_hub lays it out."""
    snapshot = tmp_path / "models--org--model" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}", encoding="utf-8")
    (tmp_path / "models--org--model" / "refs").mkdir()
    (tmp_path / "models--org--model" / "refs" / "main").write_text("abc123", encoding="utf-8")
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    return snapshot


def test_cached_file_and_snapshot(monkeypatch, tmp_path):
    snapshot = _cache(monkeypatch, tmp_path)
    assert hub.cached_file("org/model", "config.json") == snapshot / "config.json"
    assert hub.cached_snapshot("org/model") == snapshot
    assert hub.cached_file("org/model", "README.md") is None
    assert hub.cached_snapshot("org/other") is None
    assert hub.cached_file("bad--id", "config.json") is None  # malformed: not cached, no exception


def test_probe(monkeypatch, tmp_path):
    _cache(monkeypatch, tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub, "reachable", lambda timeout=0: pytest.fail("a cached id needs no network"))
    assert hub.probe("org/model") == "cached"
    monkeypatch.setattr(hub, "reachable", lambda timeout=0: True)
    assert hub.probe("org/other") == "offline"
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(hub, "offline", lambda: False)
    assert hub.probe("org/other") == "download"
    monkeypatch.setattr(hub, "reachable", lambda timeout=0: False)
    assert hub.probe("org/other") == "offline"
