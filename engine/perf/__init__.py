"""Everything in finetui that exists only for speed, behind one switch: ``train.kernels``.

Light module (stdlib only): the launcher, the config and the Settings form read it; the
heavy parts are its submodules, imported by the trainer process only.

``train.kernels: auto`` (the default) picks, per run, what is known to make it faster on
its device and precision (:func:`plan`); ``train.kernels: reference`` runs plain
transformers + peft, what ``transformers.Trainer`` would run: no fused layers, loss or LoRA,
no attention of our own, the allocator and thread count torch starts with, transformers'
own import scan. The two give the same losses (tests/test_kernels_parity.py).

What ``auto`` uses, and where (docs/ARCHITECTURE.md says why):

=========================  ===============================  ================================
                           CPU                              CUDA
=========================  ===============================  ================================
fused LoRA linears         fp32, plain LoRA, no dropout     no (our code; no GPU measurement)
fused rotary + RMSNorm     fp32                             Liger Kernel, when installed
fused LM head + loss       fp32                             Liger Kernel, when installed
packed attention           ``sdpa_packed`` (ours)           flash_attention_2 (varlen) when
                                                            flash-attn is installed, bf16/fp16
trained positions' logits  yes                              when Liger is not applied
lean Trainer steps         yes                              yes
CPU threads, allocator     adaptive threads, mimalloc/heap  (not CPU training)
import-table cache         yes                              yes
=========================  ===============================  ================================

Under bf16/fp16 autocast (a GPU) none of our fused modules act: their fast paths are
float32-only. Liger Kernel (``pip install 'finetui[gpu]'``) is applied through
transformers' ``use_liger_kernel``; the run's log says what was applied.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field

KERNELS = ("auto", "reference")
# optional packages the CUDA path uses when they are installed (import names)
LIGER = "liger_kernel"
FLASH_ATTN = "flash_attn"


def installed_packages() -> frozenset[str]:
    """Which of the optional kernel packages are importable here (no import is run)."""
    found = set()
    for name in (LIGER, FLASH_ATTN):
        try:
            if importlib.util.find_spec(name) is not None:
                found.add(name)
        except (ImportError, ValueError):
            pass
    return frozenset(found)


@dataclass(frozen=True)
class Plan:
    """What a run uses for speed (all False: plain transformers + peft)."""

    kernels: str
    device: str
    fused_lora: bool = False
    fused_layers: bool = False
    fused_loss: bool = False
    packed_attention: bool = False  # engine/perf/attention.py (sdpa per example)
    trained_logits_only: bool = False  # engine.data.dataset.TrainedLogitsOnly
    lean_trainer: bool = False  # engine/perf/lean_trainer.py
    cpu_threads: bool = False  # engine/perf/threads.py
    liger: bool = False  # Liger Kernel through transformers' use_liger_kernel
    attn_implementation: str | None = None  # asked of transformers for this run (flash_attention_2)
    notes: tuple[str, ...] = field(default_factory=tuple)

    def describe(self) -> str:
        """One line for the run's log."""
        if self.kernels == "reference":
            return "kernels: reference (plain transformers + peft: no fused layers, loss or LoRA, stock attention)"
        used = [name for flag, name in (
            (self.liger, "Liger Kernel (fused linear cross-entropy, RMSNorm, SwiGLU, RoPE)"),
            (self.attn_implementation == "flash_attention_2", "flash_attention_2 (varlen for packed rows)"),
            (self.fused_lora, "fused LoRA"), (self.fused_layers, "fused rotary/RMSNorm"),
            (self.fused_loss, "fused LM head + loss"), (self.packed_attention, "sdpa per packed example"),
            (self.trained_logits_only, "logits of trained positions only"), (self.lean_trainer, "lean Trainer steps"),
            (self.cpu_threads, "adaptive CPU threads"),
        ) if flag]
        text = f"kernels: auto on {self.device}: " + (", ".join(used) if used else "nothing beyond transformers")
        return text + "".join(f"; {note}" for note in self.notes)


def plan(kernels: str, device: str, mixed_precision: bool, *, dtype: str = "float32", method: str = "lora",
         lora_dropout: float = 0.0,
         quantization: str = "none", use_dora: bool = False, packing: bool = False,
         attn_implementation: str = "auto", installed: frozenset[str] | None = None) -> Plan:
    """What a run on ``device`` ("cpu", "cuda", "mps") with weights of ``dtype`` and
    ``mixed_precision`` (bf16/fp16 autocast) uses with ``train.kernels`` = ``kernels``;
    ``installed``: the optional packages present (default: looked up). A pure function of
    its arguments. Our fused modules are float32 code: they act only on float32 weights
    without autocast."""
    if kernels not in KERNELS:
        raise ValueError(f"train.kernels must be one of {', '.join(KERNELS)}, not {kernels!r}")
    kind = "cuda" if device.startswith("cuda") else device
    if kernels == "reference":
        return Plan(kernels, kind)
    installed = installed_packages() if installed is None else installed
    if kind == "cuda":
        notes = []
        liger = LIGER in installed
        if not liger:
            notes.append("Liger Kernel not installed (pip install 'finetui[gpu]')")
        flash = attn_implementation == "auto" and mixed_precision and FLASH_ATTN in installed
        if packing and attn_implementation == "auto" and not flash:
            notes.append("packed rows use transformers' sdpa with a block-diagonal mask"
                         + ("" if FLASH_ATTN in installed else " (flash-attn not installed)"))
        return Plan(kernels, kind, liger=liger, trained_logits_only=not liger, lean_trainer=True,
                    attn_implementation="flash_attention_2" if flash else None, notes=tuple(notes))
    fp32 = not mixed_precision and dtype == "float32"
    lora_fusable = (method == "lora" and quantization == "none" and float(lora_dropout) == 0.0 and not use_dora)
    return Plan(kernels, kind, fused_lora=fp32 and lora_fusable, fused_layers=fp32, fused_loss=fp32,
                packed_attention=packing and attn_implementation == "auto", trained_logits_only=True,
                lean_trainer=True, cpu_threads=kind == "cpu")
