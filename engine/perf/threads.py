"""CPU threads for training: every core while the box is otherwise idle, one core fewer
while something else wants the CPU.

Heavy module (torch, transformers): the trainer process only.

Measured on 2 cores (tiny Llama, packed, cutoff 256; benchmarks/):

- idle box: 2 threads take 55 ms a step, 1 thread 82 ms (1.5x; ~1.8x on a 20M model);
- one busy neighbour (another process at 100% of a core): 2 threads take 165 ms, 1 thread
  83 ms. OpenMP threads spin at every barrier while their partner is descheduled, so
  sharing a core costs far more than the core itself. OMP_WAIT_POLICY=passive trades
  that for wake-up latency (106 ms idle, 99 ms busy): worse than either choice here.

So the trainer measures, every few seconds at the end of a step, how much CPU the rest of
the system took (all busy time, steal included, minus this process's): above half a core
it drops to cores - 1 threads, below a fifth of a core it goes back to every core. The
first choice is made from what the others took while the trainer was starting.
``OMP_NUM_THREADS`` (torchrun sets it to 1 per process) turns all of this off.
"""

from __future__ import annotations

import os
import sys
import time

BUSY_ABOVE = 0.5  # cores used by other processes: leave them one
IDLE_BELOW = 0.2  # ... and take it back when they use less than this
INTERVAL_S = 5.0


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _busy_s() -> float:
    """Seconds of CPU the whole system has spent busy (steal counts: a vCPU the host
    took away stalls spinning threads just the same)."""
    import psutil

    t = psutil.cpu_times()
    return sum(t) - t.idle - getattr(t, "iowait", 0.0) - getattr(t, "guest", 0.0) - getattr(t, "guest_nice", 0.0)


def _own_s() -> float:
    import psutil

    t = psutil.Process().cpu_times()
    return t.user + t.system + t.children_user + t.children_system


class CpuThreads:
    """Owns ``torch.set_num_threads`` for a training process (see the module docstring)."""

    def __init__(self, n_cores: int | None = None, interval_s: float = INTERVAL_S):
        self.cores = n_cores or cores()
        self.interval_s = interval_s
        self.threads = 0
        self._mark()

    def _mark(self) -> None:
        self._t, self._busy, self._own = time.monotonic(), _busy_s(), _own_s()

    def others(self) -> float | None:
        """Cores the rest of the system used since the last mark (None: too short a window)."""
        wall = time.monotonic() - self._t
        if wall < 0.5:
            return None
        return max(0.0, (_busy_s() - self._busy) - (_own_s() - self._own)) / wall

    def start(self) -> int:
        """Pick the first thread count from the window since construction (the start-up)."""
        others = self.others()
        self._set(self.cores if others is not None and others < IDLE_BELOW else max(1, self.cores - 1), others)
        self._mark()
        return self.threads

    def tick(self) -> None:
        """Call between steps; re-decides at most every ``interval_s``."""
        if time.monotonic() - self._t < self.interval_s:
            return
        others = self.others()
        if others is None:
            return
        if self.threads == self.cores and others > BUSY_ABOVE and self.cores > 1:
            self._set(self.cores - 1, others)
        elif self.threads < self.cores and others < IDLE_BELOW:
            self._set(self.cores, others)
        self._mark()

    def _set(self, n: int, others: float | None) -> None:
        import torch

        if n != self.threads:
            torch.set_num_threads(n)
            used = "?" if others is None else f"{others:.2f}"
            print(f"finetui trainer: {n} CPU thread(s) (other processes used {used} of {self.cores} cores)",
                  file=sys.stderr, flush=True)
            self.threads = n


def callback(threads: CpuThreads):
    """A TrainerCallback that re-decides the thread count between steps."""
    from transformers import TrainerCallback

    class AdaptiveThreads(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            threads.tick()

    return AdaptiveThreads()
