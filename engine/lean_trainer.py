"""The Trainer a run uses: transformers' ``Trainer`` (``RunTrainer``), and with
``train.kernels: auto`` the same without its per-step walks over every module
(``LeanTrainer``: engine/perf/lean_trainer.py).

Heavy module (transformers, torch): the trainer process only.
"""

from __future__ import annotations

import transformers

from engine.perf.lean_trainer import LeanSteps


class RunTrainer(transformers.Trainer):
    """transformers.Trainer as a run uses it (``train.kernels: reference`` runs it as it is)."""

    heartbeat = None  # engine.heartbeat.Heartbeat (rank 0): saving and loading are quiet phases

    def _save_checkpoint(self, model, trial):
        with self._quiet("saving"):
            return super()._save_checkpoint(model, trial)

    def _load_best_model(self):
        with self._quiet("loading the best checkpoint"):
            return super()._load_best_model()

    def _quiet(self, phase: str):
        import contextlib

        return self.heartbeat.quiet(phase) if self.heartbeat is not None else contextlib.nullcontext()


class LeanTrainer(LeanSteps, RunTrainer):
    """``RunTrainer`` without its per-step module walks (engine/perf/lean_trainer.py)."""


def trainer_class(lean: bool) -> type:
    """The Trainer class for a run: ``LeanTrainer`` when the kernels plan says so."""
    return LeanTrainer if lean else RunTrainer
