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


class LeanTrainer(LeanSteps, RunTrainer):
    """``RunTrainer`` without its per-step module walks (engine/perf/lean_trainer.py)."""


def trainer_class(lean: bool) -> type:
    """The Trainer class for a run: ``LeanTrainer`` when the kernels plan says so."""
    return LeanTrainer if lean else RunTrainer
