"""The Hugging Face Trainer's per-step walks over every module, done once or over the
trained parameters only (``train.kernels: auto``; engine.lean_trainer.LeanTrainer mixes it in).

Heavy module (transformers, torch): the trainer process only.

After every step the Trainer calls ``model.train()``, ``model.zero_grad()``, clips the
gradients of ``model.parameters()`` and counts the parameters for its FLOs total; each of
those walks the whole module tree, which peft makes several times deeper (every LoRA linear
adds ~10 modules: 59 -> 341 on the tiny model). Doing without them made a tiny-model step
1.02-1.05x faster (``benchmarks/step_levers.py``). Here each is done once or over the
trained parameters only:

- the parameter count is taken once (it does not change during a run);
- gradients are clipped over the parameters that train (the others have no gradient, which
  ``clip_grad_norm_`` skips anyway);
- ``model.zero_grad()`` clears the trained parameters' gradients (the only ones set);
- ``model.train()`` / ``model.eval()`` read every module's ``training`` flag from a flat
  list (~20 us on the tiny model under LoRA) and walk the tree to set them only when one
  differs (~1 ms). The flags themselves are read, not a note of the last switch: code
  that switches part of the model on its own (``model.get_base_model().eval()`` in a
  callback, say) must not leave that part's dropout off for the next steps. The list is
  taken again at each switch, so modules added since (another adapter) count from then.

Distributed setups whose clipping is special (FSDP, DeepSpeed, XLA, mixed meshes) keep the
Trainer's own code.
"""

from __future__ import annotations

from accelerate.utils import DistributedType

PLAIN_CLIPPING = (DistributedType.NO, DistributedType.MULTI_CPU, DistributedType.MULTI_GPU)


class LeanSteps:
    """A mixin for a ``transformers.Trainer`` subclass (put it first among the bases)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._trained = [p for p in self.model.parameters() if p.requires_grad]
        self._parameter_count: int | None = None
        quick_mode_and_grads(self.model, self._trained)

    def floating_point_ops(self, inputs) -> int:
        name = getattr(self.model, "main_input_name", "input_ids")
        if name not in inputs or not hasattr(self.model, "num_parameters"):
            return 0
        if self._parameter_count is None:
            self._parameter_count = self.model.num_parameters(exclude_embeddings=True)
        return 6 * inputs[name].numel() * self._parameter_count

    def _clip_grad_norm(self, model):
        if (self.accelerator.distributed_type not in PLAIN_CLIPPING or self._has_mixed_mesh_grads(model)
                or self.is_fsdp_enabled or self.is_deepspeed_enabled):
            return super()._clip_grad_norm(model)
        return self.accelerator.clip_grad_norm_(self._trained, self.args.max_grad_norm)


def quick_mode_and_grads(model, trained: list) -> None:
    """Instance-level ``train`` and ``zero_grad`` for the model the Trainer steps."""
    module_train = model.train
    modules = list(model.modules())

    def train(mode: bool = True):
        for module in modules:
            if module.training is not mode:
                break
        else:
            return model
        module_train(mode)
        modules[:] = model.modules()
        return model

    def zero_grad(set_to_none: bool = True) -> None:
        for p in trained:
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad.detach_().zero_()

    model.train = train
    model.zero_grad = zero_grad
