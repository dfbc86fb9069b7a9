"""Shared pytest fixtures.

Real datasets and chat templates copied from public repositories live in ``tests/data/``
(``datasets/`` and ``chat_templates/``; ``tests/data/SOURCES.md`` says where each came from
and under which licence), so a clone of the repository runs every test on its own.
"""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TEST_DATA = REPO / "tests" / "data"


@pytest.fixture(scope="session")
def shared() -> Path:
    """The real-data folder in the repository (``tests/data``: ``datasets/`` and
    ``chat_templates/``); a missing copy is a broken checkout, so it fails, never skips."""
    assert (TEST_DATA / "datasets").is_dir() and (TEST_DATA / "chat_templates").is_dir(), (
        f"{TEST_DATA}: the in-repository test data is missing"
    )
    return TEST_DATA


@pytest.fixture(scope="session")
def shared_datasets(shared: Path) -> Path:
    return shared / "datasets"


@pytest.fixture(scope="session")
def tiny_model_dir(finetui_cache_dir: Path) -> Path:
    """The built-in tiny model's folder (engine.tiny) in the session's cache, so tests that
    point FINETUI_CACHE at a tmp dir do not rebuild it."""
    from finetui.engine import tiny

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FINETUI_CACHE", str(finetui_cache_dir))
        return tiny.path()


@pytest.fixture(scope="session")
def finetui_cache_dir(tmp_path_factory) -> Path:
    """A FINETUI_CACHE folder for the session with the tiny model already built in it, for
    tests that start worker processes (they inherit or are given this folder)."""
    import os

    from finetui.engine import tiny

    cache = tmp_path_factory.mktemp("finetui-cache")
    previous = os.environ.get("FINETUI_CACHE")
    os.environ["FINETUI_CACHE"] = str(cache)
    try:
        tiny.path()
    finally:
        if previous is None:
            os.environ.pop("FINETUI_CACHE", None)
        else:
            os.environ["FINETUI_CACHE"] = previous
    return cache


@pytest.fixture
def finetui_cache(finetui_cache_dir: Path, monkeypatch) -> Path:
    """FINETUI_CACHE pointed at the session's cache for one test (and its subprocesses)."""
    monkeypatch.setenv("FINETUI_CACHE", str(finetui_cache_dir))
    return finetui_cache_dir


@pytest.fixture(scope="session")
def mixed_length_batch(tiny_model_dir: Path, tmp_path_factory):
    """(config, tokenizer, four tokenised sample_data records of different lengths) for
    comparing collators on the tiny model: a padded batch of them really pads."""
    from transformers import AutoTokenizer

    from finetui.engine.config import Config
    from finetui.engine.data import dataset

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FINETUI_CACHE", str(tmp_path_factory.mktemp("mixed-length-cache")))
        tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
        config = Config()
        config.data.test_size = 0
        built = dataset.build(config, tokenizer)
    rows = sorted((built.train[i] for i in range(40)), key=lambda r: r["length"])
    batch = [rows[0], rows[-1], rows[len(rows) // 2], rows[1]]
    assert len({r["length"] for r in batch}) > 1
    return config, tokenizer, batch


@pytest.fixture(autouse=True)
def _signals_as_they_were():
    """Code run in the test process (engine.train.main ignores SIGHUP and SIGXFSZ) must not
    leave its signal dispositions behind: an ignored signal is inherited by every process a
    later test starts, and a CLI that ignores SIGHUP or SIGINT cannot be tested."""
    import signal

    names = ("SIGINT", "SIGHUP", "SIGTERM", "SIGXFSZ", "SIGPIPE")
    saved = {name: signal.getsignal(getattr(signal, name)) for name in names}
    yield
    for name, handler in saved.items():
        if handler is not None and signal.getsignal(getattr(signal, name)) != handler:
            signal.signal(getattr(signal, name), handler)
