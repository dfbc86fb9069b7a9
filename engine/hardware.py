"""GPU and host readings for the dashboard: NVML (nvidia-ml-py, as nvitop does) and psutil.

Light module: no torch. NVML is loaded lazily; without the library, without a driver or
without GPUs, :func:`gpu_backend` returns a backend whose ``problem`` says so plainly and
whose readings are empty, so callers show "N/A" rather than crash.

``CUDA_VISIBLE_DEVICES`` is honoured: only the GPUs the trainer can see are listed, in
the order CUDA numbers them (by index or by UUID, as the variable may hold either).

Tests (and anyone curious) can set ``FINETUI_FAKE_GPUS`` to a JSON list of readings to
drive the panel without a GPU; see :class:`FakeBackend`.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from typing import Any


@dataclass
class GpuReading:
    index: int                     # CUDA index as the trainer sees it
    name: str
    util_percent: float | None = None
    memory_used_bytes: int | None = None
    memory_total_bytes: int | None = None
    temperature_c: float | None = None
    power_w: float | None = None
    power_limit_w: float | None = None
    uuid: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class HostReading:
    cpu_percent: float
    ram_used_bytes: int
    ram_total_bytes: int
    process_rss_bytes: int | None = None  # the watched process (the trainer), with children


def _visible(count: int, uuids: list[str], env: dict[str, str] | None = None) -> list[int]:
    """NVML indices of the devices CUDA_VISIBLE_DEVICES (of ``env``, default ours) exposes,
    in CUDA order."""
    spec = (os.environ if env is None else env).get("CUDA_VISIBLE_DEVICES")
    if spec is None:
        return list(range(count))
    out: list[int] = []
    for item in (s.strip() for s in spec.split(",")):
        if not item:
            continue
        if item.isdigit():
            if int(item) < count:
                out.append(int(item))
            else:
                break  # CUDA stops at the first invalid entry
        else:
            match = [i for i, u in enumerate(uuids) if u and u.startswith(item)]
            if not match:
                break
            out.append(match[0])
    return out


class NvmlBackend:
    def __init__(self, env: dict[str, str] | None = None) -> None:
        """``env``: the environment whose CUDA_VISIBLE_DEVICES applies (default: ours)."""
        self.problem: str | None = None
        self._handles: list[tuple[int, Any]] = []
        try:
            import pynvml

            self._nvml = pynvml
            pynvml.nvmlInit()
            count = pynvml.nvmlDeviceGetCount()
            all_handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
            uuids = []
            for h in all_handles:
                try:
                    uuids.append(_text(pynvml.nvmlDeviceGetUUID(h)))
                except pynvml.NVMLError:
                    uuids.append("")
            visible = _visible(count, uuids, env)
            self._handles = [(cuda_i, all_handles[nvml_i]) for cuda_i, nvml_i in enumerate(visible)]
            if not self._handles:
                self.problem = "no GPU visible (CUDA_VISIBLE_DEVICES hides them)" if count else "no NVIDIA GPU found"
        except ImportError:
            self.problem = "NVML not available (nvidia-ml-py not installed)"
        except Exception as exc:  # NVMLError_LibraryNotFound, DriverNotLoaded, ...
            self.problem = f"NVML not available: {_text(str(exc)) or type(exc).__name__} (no NVIDIA driver?)"

    def read(self) -> list[GpuReading]:
        out = []
        nv = getattr(self, "_nvml", None)
        for index, h in self._handles:
            r = GpuReading(index=index, name=_safe(lambda: _text(nv.nvmlDeviceGetName(h)), "GPU"))
            util = _safe(lambda: nv.nvmlDeviceGetUtilizationRates(h))
            r.util_percent = float(util.gpu) if util is not None else None
            mem = _safe(lambda: nv.nvmlDeviceGetMemoryInfo(h))
            if mem is not None:
                r.memory_used_bytes, r.memory_total_bytes = int(mem.used), int(mem.total)
            r.temperature_c = _safe(lambda: float(nv.nvmlDeviceGetTemperature(h, nv.NVML_TEMPERATURE_GPU)))
            r.power_w = _safe(lambda: nv.nvmlDeviceGetPowerUsage(h) / 1000.0)
            r.power_limit_w = _safe(lambda: nv.nvmlDeviceGetEnforcedPowerLimit(h) / 1000.0)
            r.uuid = _safe(lambda: _text(nv.nvmlDeviceGetUUID(h)))
            out.append(r)
        return out


class FakeBackend:
    """Readings from ``FINETUI_FAKE_GPUS`` (a JSON list of GpuReading fields; missing
    fields read as None, i.e. N/A), for tests and demos without a GPU."""

    def __init__(self, spec: str) -> None:
        self.problem = None
        try:
            self._items = [dict(item) for item in json.loads(spec)]
        except (ValueError, TypeError) as exc:
            self._items = []
            self.problem = f"FINETUI_FAKE_GPUS is not a JSON list of readings: {exc}"

    def read(self) -> list[GpuReading]:
        fields = set(GpuReading.__dataclass_fields__)
        return [GpuReading(**{"index": i, "name": "GPU", **{k: v for k, v in item.items() if k in fields}})
                for i, item in enumerate(self._items)]


def gpu_backend() -> NvmlBackend | FakeBackend:
    spec = os.environ.get("FINETUI_FAKE_GPUS")
    return FakeBackend(spec) if spec else NvmlBackend()


def read_host(pid: int | None = None) -> HostReading:
    import psutil

    vm = psutil.virtual_memory()
    rss = None
    if pid:
        try:
            proc = psutil.Process(pid)
            rss = proc.memory_info().rss + sum(
                c.memory_info().rss for c in proc.children(recursive=True) if c.is_running()
            )
        except (psutil.Error, OSError):
            rss = None
    return HostReading(
        cpu_percent=psutil.cpu_percent(interval=None),
        ram_used_bytes=int(vm.total - vm.available),
        ram_total_bytes=int(vm.total),
        process_rss_bytes=rss,
    )


def _safe(fn, default=None):
    try:
        return fn()
    except Exception:
        return default


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
