"""Hardware probe: NVML absent is said plainly; the fake backend drives readings."""

import json

from finetui.engine import hardware


def test_without_nvml_or_gpu_there_is_a_plain_problem(monkeypatch):
    monkeypatch.delenv("FINETUI_FAKE_GPUS", raising=False)
    backend = hardware.gpu_backend()
    readings = backend.read()
    if not readings:  # this CI machine has no GPU
        assert backend.problem and ("NVML" in backend.problem or "GPU" in backend.problem)


def test_fake_backend_two_gpus_one_without_power(monkeypatch):
    monkeypatch.setenv("FINETUI_FAKE_GPUS", json.dumps([
        {"name": "NVIDIA H100", "util_percent": 87, "memory_used_bytes": 40e9, "memory_total_bytes": 80e9,
         "temperature_c": 61, "power_w": 420.5, "power_limit_w": 700},
        {"name": "NVIDIA A10", "util_percent": 3, "memory_used_bytes": 1e9, "memory_total_bytes": 24e9},
    ]))
    readings = hardware.gpu_backend().read()
    assert [r.index for r in readings] == [0, 1]
    assert readings[0].power_w == 420.5 and readings[1].power_w is None


def test_cuda_visible_devices_order(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,0")
    assert hardware._visible(4, ["GPU-a", "GPU-b", "GPU-c", "GPU-d"]) == [2, 0]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-d,9")
    assert hardware._visible(4, ["GPU-a", "GPU-b", "GPU-c", "GPU-d"]) == [3]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert hardware._visible(4, ["a", "b", "c", "d"]) == []


def test_host_reading_includes_process_rss():
    import os
    host = hardware.read_host(os.getpid())
    assert host.ram_total_bytes > host.ram_used_bytes > 0
    assert host.process_rss_bytes and host.process_rss_bytes > 1_000_000
