"""Which ``accelerate`` backend runs which unlearning run, and who combines the gradients.

=======================================  =====================  ==================================
``accelerator.distributed_type``         unmasked methods       masked methods (MMUnlearner, SalUn)
=======================================  =====================  ==================================
NO, MULTI_CPU, MULTI_GPU, MULTI_* (DDP)  yes, exact             yes, exact (bit-identical freezing)
FSDP (1 and 2)                           yes, not tested here   refused
DEEPSPEED (ZeRO-1/2/3)                   yes, not tested here   refused
XLA, MEGATRON_LM                         refused                refused
=======================================  =====================  ==================================

Masked methods need each process to hold whole parameters: the mask multiplies full gradient and
update tensors. FSDP and ZeRO shard parameters, gradients and optimizer state (ZeRO-2 already
shards gradients and Adam state) and run their own optimizer step, so a mask would have to be
sharded the same way inside each engine; forgetlab refuses rather than pretend. LoRA is refused
under FSDP/DeepSpeed too (merging adapters needs the full weights on one process).
"""

from __future__ import annotations

from accelerate.utils import DistributedType

#: one whole model per process; forgetlab sums gradients itself (:mod:`forgetlab.dist.grads`)
DATA_PARALLEL: frozenset[str] = frozenset(
    {"NO", "MULTI_CPU", "MULTI_GPU", "MULTI_NPU", "MULTI_MLU", "MULTI_SDAA", "MULTI_MUSA", "MULTI_XPU",
     "MULTI_HPU", "MULTI_NEURON"}
)  # fmt: skip
#: the engine shards the model and averages gradients itself
ENGINES: frozenset[str] = frozenset({"FSDP", "DEEPSPEED"})


class BackendError(ValueError):
    """An unlearning run that the current ``accelerate`` backend cannot run correctly."""


def _name(distributed_type: DistributedType | str) -> str:
    return DistributedType(distributed_type).value


def engine_managed(distributed_type: DistributedType | str) -> bool:
    """True for FSDP and DeepSpeed: the engine, not forgetlab, reduces gradients and steps."""
    return _name(distributed_type) in ENGINES


def check_backend(distributed_type: DistributedType | str, method: str, *, masked: bool, lora: bool) -> None:
    """Raise :class:`BackendError` naming the supported backends when this run cannot be done right."""
    name = _name(distributed_type)
    ddp = "NO (one process) or DDP (MULTI_CPU, MULTI_GPU, other MULTI_* types)"
    if name not in DATA_PARALLEL | ENGINES:
        raise BackendError(f"accelerate backend {name} is not supported; use {ddp}, FSDP or DEEPSPEED")
    if name in ENGINES and masked:
        raise BackendError(
            f"method {method!r} restricts updates to a parameter mask, which needs whole parameters on every "
            f"process; accelerate backend {name} shards them. Masked methods run on {ddp}: launch with "
            "configs/accelerate/ddp.yaml (see docs/multi-gpu.md)"
        )
    if name in ENGINES and lora:
        raise BackendError(f"lora is not supported under accelerate backend {name}; use {ddp}")
