"""finetui.engine.units: the one way sizes and durations are written (CLI, messages, screens)."""

from __future__ import annotations

import pytest

from finetui.engine.units import format_bytes, format_bytes_pair, format_duration


@pytest.mark.parametrize("n,iec,si", [
    (0, "0 B", "0 B"),
    (900, "900 B", "900 B"),
    (1000, "1000 B", "1.0 kB"),
    (1536, "1.5 KiB", "1.5 kB"),
    (50_000, "48.8 KiB", "50.0 kB"),
    (999_999, "977 KiB", "1.0 MB"),            # 999.999 kB would read as "1000 kB"
    (1023.96 * 2 ** 20, "1.0 GiB", "1.1 GB"),  # likewise "1024.0 MiB"
    (92_871_040, "88.6 MiB", "92.9 MB"),
    (12 << 30, "12.0 GiB", "12.9 GB"),
    (300 * 2 ** 30, "300 GiB", "322 GB"),
    (5 * 2 ** 50, "5120 TiB", "5629 TB"),      # past the last unit: more of it
    (-2048, "-2.0 KiB", "-2.0 kB"),
])
def test_bytes(n, iec, si):
    assert format_bytes(n) == iec
    assert format_bytes(n, si=True) == si


@pytest.mark.parametrize("value", [None, "12", float("nan"), True])
def test_bytes_missing(value):
    assert format_bytes(value) == "-"
    assert format_bytes(value, missing="N/A") == "N/A"


def test_bytes_pair_in_the_totals_unit():
    gib, mib = 2 ** 30, 2 ** 20
    assert format_bytes_pair(40 * gib, 80 * gib) == "40.0/80.0 GiB"
    assert format_bytes_pair(512 * mib, 981 * mib) == "512/981 MiB"
    assert format_bytes_pair(300 * mib, 141 * gib) == "0.3/141 GiB"
    assert format_bytes_pair(3 * gib, None) == "3.0 GiB"
    assert format_bytes_pair(None, 80 * gib, missing="N/A") == "N/A"


@pytest.mark.parametrize("seconds,text", [
    (0, "0:00"), (7.9, "0:07"), (245, "4:05"), (3600, "1:00:00"), (3723.5, "1:02:03"), (360_000, "100:00:00"),
])
def test_duration(seconds, text):
    assert format_duration(seconds) == text


@pytest.mark.parametrize("value", [None, -1, float("inf"), float("nan"), "5"])
def test_duration_missing(value):
    assert format_duration(value) == "-"
    assert format_duration(value, missing="N/A") == "N/A"
