"""The Trainer a run uses: transformers' ``Trainer`` (``RunTrainer``), and with
``train.kernels: auto`` the same without its per-step walks over every module
(``LeanTrainer``: engine/perf/lean_trainer.py).

Heavy module (transformers, torch): the trainer process only.
"""

from __future__ import annotations

import transformers

from finetui.engine.perf.lean_trainer import LeanSteps


class RunTrainer(transformers.Trainer):
    """transformers.Trainer as a run uses it (``train.kernels: reference`` runs it as it is)."""

    heartbeat = None  # engine.heartbeat.Heartbeat (rank 0): saving and loading are quiet phases

    def create_accelerator_and_postprocess(self):
        """The Trainer's accelerator, and FSDP on CPU processes too: accelerate turns its
        FSDP plugin on for GPU process groups only (MULTI_GPU ...), while PyTorch's FSDP2
        runs on the CPU with gloo. There the same plugin is set on the accelerator's state,
        so the model is sharded by accelerate's own FSDP2 code (fsdp2_prepare_model), as on GPUs."""
        super().create_accelerator_and_postprocess()
        from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

        state = self.accelerator.state
        plugin_args = getattr(self.args, "fsdp_plugin_args", None)
        if plugin_args is not None and getattr(state, "fsdp_plugin", None) is None and state.distributed_type == DistributedType.MULTI_CPU:
            state.fsdp_plugin = FullyShardedDataParallelPlugin(**plugin_args)
            state.distributed_type = DistributedType.FSDP
            self.is_fsdp_enabled = True

    def _save(self, output_dir=None, state_dict=None):
        if state_dict is not None and self.is_fsdp_enabled and self.args.use_cpu:
            # FSDP2's full state dict on CPU processes: torch hands back the shards
            # (DTensors; its gathering is for GPU tensors), so every rank gathers them here
            # in the same order, and rank 0 writes the full tensors
            from torch.distributed.tensor import DTensor

            state_dict = {k: v.full_tensor() if isinstance(v, DTensor) else v for k, v in state_dict.items()}
        return super()._save(output_dir, state_dict=state_dict)

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
