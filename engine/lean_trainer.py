"""The Trainer a run uses: transformers' ``Trainer`` (``RunTrainer``), and with
``train.kernels: auto`` the same without its per-step walks over every module
(``LeanTrainer``: engine/perf/lean_trainer.py).

Heavy module (transformers, torch): the trainer process only.
"""

from __future__ import annotations

import os

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

    # ---- resuming on another number of processes (engine/checkpoint_kind.py)

    _loaded_before_sharding = False

    def train(self, resume_from_checkpoint=None, *args, **kwargs):
        from finetui.engine import checkpoint_kind

        if (resume_from_checkpoint and self.is_fsdp_enabled
                and checkpoint_kind.kind(resume_from_checkpoint) == checkpoint_kind.PLAIN):
            # Saved by one process or DDP: the Trainer's own one-process loading (full weights
            # or the adapter) into the model as it is now, before accelerate shards it
            self.is_fsdp_enabled = False
            try:
                with self._quiet("loading the checkpoint"):
                    super()._load_from_checkpoint(resume_from_checkpoint)
            finally:
                self.is_fsdp_enabled = True
            self._loaded_before_sharding = True
        return super().train(resume_from_checkpoint, *args, **kwargs)

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        from finetui.engine import checkpoint_kind

        if self._loaded_before_sharding:
            return None
        saved = checkpoint_kind.kind(resume_from_checkpoint)
        if saved in checkpoint_kind.FSDP_KINDS and not self.is_fsdp_enabled:
            return _fsdp_weights_into_plain(self.model, resume_from_checkpoint, saved)
        return super()._load_from_checkpoint(resume_from_checkpoint, model)

    def _load_optimizer_and_scheduler(self, checkpoint):
        from finetui.engine import checkpoint_kind

        saved = checkpoint_kind.kind(checkpoint) if checkpoint else None
        if saved in checkpoint_kind.FSDP_KINDS and not self.is_fsdp_enabled:
            _fsdp_optimizer_into_plain(self.model, self.optimizer, checkpoint)
        elif saved == checkpoint_kind.PLAIN and self.is_fsdp_enabled:
            _plain_optimizer_into_fsdp(self.model, self.optimizer, checkpoint)
        else:
            return super()._load_optimizer_and_scheduler(checkpoint)
        import torch

        self.lr_scheduler.load_state_dict(torch.load(os.path.join(checkpoint, "scheduler.pt"), weights_only=True))
        return None

    def save_model(self, output_dir=None, _internal_call=False):
        """The adapter or model a run hands over is whole under a sharded FSDP state dict too
        (the Trainer saves nothing there: each checkpoint's DCP folders hold the shards)."""
        sharded = self.is_fsdp_enabled and "SHARDED" in str(self.accelerator.state.fsdp_plugin.state_dict_type)
        if not sharded or _internal_call:
            return super().save_model(output_dir, _internal_call)
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        state = get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        self._save(output_dir or self.args.output_dir, state_dict=state)  # every rank: _save gathers on the CPU
        return None

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


# --------------------------------------------------------------------------- across world sizes
# torch.distributed.checkpoint's state-dict API (get/set_model_state_dict,
# get/set_optimizer_state_dict) turns full tensors keyed by parameter name into whatever the
# model has now (FSDP2 shards or plain tensors), and DCP's load reshards a sharded checkpoint
# into the state dict it is given, whatever world size saved it.


def _fsdp_weights_into_plain(model, checkpoint: str, saved: str):
    """An FSDP checkpoint's weights into a model that is not sharded (one process or DDP)."""
    import torch
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    if saved == "fsdp-full":  # full tensors keyed by name, the trainable ones for an adapter
        state = torch.load(os.path.join(checkpoint, "pytorch_model_fsdp.bin"), weights_only=True)
        result = set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True, strict=False))
        if result.unexpected_keys:
            raise ValueError(f"{checkpoint}: weights the model does not have: {result.unexpected_keys[:3]}")
        return result
    import torch.distributed.checkpoint as dcp

    # sharded: accelerate saved {"model": state} (peft's adapter keys for an adapter); DCP
    # reads every shard into the full tensors of this template
    folder = os.path.join(checkpoint, "pytorch_model_fsdp_0")
    if hasattr(model, "peft_config"):
        from peft import get_peft_model_state_dict, set_peft_model_state_dict

        state = {"model": get_peft_model_state_dict(model, adapter_name=model.active_adapter)}
        dcp.load(state, checkpoint_id=folder)
        return set_peft_model_state_dict(model, state["model"], adapter_name=model.active_adapter)
    state = {"model": model.state_dict()}
    dcp.load(state, checkpoint_id=folder)
    return model.load_state_dict(state["model"])


def _fsdp_optimizer_into_plain(model, optimizer, checkpoint: str) -> None:
    """An FSDP checkpoint's optimizer state (keyed by parameter name) into the optimizer of
    a model that is not sharded."""
    import torch
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_optimizer_state_dict,
                                                         set_optimizer_state_dict)

    full = StateDictOptions(full_state_dict=True)
    if os.path.isfile(os.path.join(checkpoint, "optimizer.bin")):
        state = torch.load(os.path.join(checkpoint, "optimizer.bin"), weights_only=True)
    else:
        import torch.distributed.checkpoint as dcp

        holder = {"optimizer": get_optimizer_state_dict(model, optimizer, options=full)}
        dcp.load(holder, checkpoint_id=os.path.join(checkpoint, "optimizer_0"))
        state = holder["optimizer"]
    set_optimizer_state_dict(model, optimizer, state, options=full)


def _plain_optimizer_into_fsdp(model, optimizer, checkpoint: str) -> None:
    """A one-process or DDP optimizer.pt into the optimizer of an FSDP2 model. Its state is
    keyed by each parameter's place in the optimizer's groups, as torch's
    Optimizer.load_state_dict matches it; keyed by name instead, set_optimizer_state_dict
    keeps each rank's shard of it."""
    import torch
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    state = torch.load(os.path.join(checkpoint, "optimizer.pt"), map_location="cpu", weights_only=True)
    names = {id(p): name for name, p in model.named_parameters()}
    order = [names[id(p)] for group in optimizer.param_groups for p in group["params"]]
    saved = [i for group in state["param_groups"] for i in group["params"]]
    if len(saved) != len(order):
        raise ValueError(f"{checkpoint}: optimizer.pt holds {len(saved)} parameters, this model trains {len(order)}")
    by_name = {"state": {order[i]: value for i, value in state["state"].items()},
               "param_groups": [{**group, "params": [order[i] for i in group["params"]]}
                                for group in state["param_groups"]]}
    set_optimizer_state_dict(model, optimizer, by_name, options=StateDictOptions(full_state_dict=True))


def trainer_class(lean: bool) -> type:
    """The Trainer class for a run: ``LeanTrainer`` when the kernels plan says so."""
    return LeanTrainer if lean else RunTrainer
