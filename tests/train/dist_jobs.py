"""The runs that test_distributed.py compares: N processes under ``accelerate launch`` vs one process.

Shared by the launched script (dist_script.py) and the test, so both run exactly the same configs.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch

from forgetlab.data.mllmu import load_training
from forgetlab.dist.shard import Shard
from forgetlab.eval.runner import EvalConfig, evaluate
from forgetlab.models.load import load
from forgetlab.train.finetune import FinetuneConfig
from forgetlab.train.masking import group_importance
from forgetlab.train.unlearn import UnlearnConfig, UnlearnRecipe

# 10 forget VQA, batch 3: global batches of 3, 3, 3, 1 -> parts of 1/2 examples and, in the last
# step, a stand-in on process 1. Methods with a retain term pair each step with 3 retain examples of
# both modalities, so a process can hold text-only retain data (vision tower unused in that pass).
# The other methods (FORGETLAB_DIST_ALL=1, about 20 s more) add the reference model, KL, per-sequence
# means and the stand-in's attended positions (RMU).
_RUN = {"lr": 1e-4, "batch_size": 3, "max_steps": 4}
JOBS: dict[str, dict] = {
    "ga": {"method": "ga", **_RUN},
    "ga_diff": {"method": "ga_diff", **_RUN},
    "mmunlearner": {"method": "mmunlearner", **_RUN, "method_args": {"importance_batch_size": 4}},
    "salun": {"method": "salun", **_RUN},
}
if os.environ.get("FORGETLAB_DIST_ALL") == "1":
    JOBS |= {
        "npo": {"method": "npo", **_RUN, "method_args": {"retain_loss": "kl"}},  # reference model twice
        "simnpo": {"method": "simnpo", **_RUN},
        "rlabel": {"method": "rlabel", **_RUN},
        "rmu": {"method": "rmu", **_RUN, "method_args": {"layer": 2}},  # the small LLaVA has 2 blocks
        "kl_min": {"method": "kl_min", **_RUN},
        "mmunlearner_packed": {
            "method": "mmunlearner",
            **_RUN,
            "optimizer_state": "packed",
            "method_args": {"importance_batch_size": 4},
        },
    }
#: weight tolerance where a gradient is zero in exact arithmetic for a whole step: KL(π_ref ‖ π) at the
#: first step (π = π_ref), so AdamW turns round-off into steps of random sign on retain-only embedding rows
ATOL = {"npo": 1e-5, "kl_min": 1e-5}
IMPORTANCE = {"groups": "both", "batch_size": 4}
#: knowledge injection: batches of 5 (parts of 2 and 3 examples, each run as length micro-batches),
#: a few vision pre-training steps (batches of 32 split 16/16)
FINETUNE = FinetuneConfig(
    epochs=1,
    perception_epochs=1,
    pretrain_epochs=1,
    batch_size=5,
    warmup_steps=2,
    vision_pretrain_steps=3,
    views_per_epoch=1,
)
#: MCQ (log-likelihood) and generation on the forget and test sets, small batches: several per process
EVAL = EvalConfig(sets=("forget", "test"), max_new_tokens=4, batch_size=4)


def splits(data: Path) -> tuple[list, list]:
    return load_training(data, "forget_10"), load_training(data, "retain_90")


def importance(model_dir: Path, data: Path, shard: Shard) -> dict[str, torch.Tensor]:
    """I_f and I_p (keys ``forget/<name>``, ``preserve/<name>``) of the saved model."""
    model, processor = load(model_dir)
    imp = group_importance(model, processor, *splits(data), shard=shard, **IMPORTANCE)  # type: ignore[arg-type]
    return {f"forget/{n}": t for n, t in imp.forget.items()} | {f"preserve/{n}": t for n, t in imp.preserve.items()}


def evaluation(model_dir: Path, data: Path, shard: Shard) -> dict:
    """Metrics and per-question rows of the saved model (gathered on every process)."""
    model, processor = load(model_dir)
    result = evaluate(model, processor, data, EVAL, shard=shard)
    return {"metrics": result.metrics, "rows": result.rows}


def run(model_dir: Path, data: Path, job: str) -> UnlearnRecipe:
    """Set up and train one job on a fresh copy of the saved model (in this process's launch context)."""
    model, processor = load(model_dir)
    recipe = UnlearnRecipe(UnlearnConfig(**JOBS[job]))
    recipe.setup(model, processor, *splits(data))
    recipe.train()
    return recipe


def digest(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 of the tensors' bytes, in name order."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        h.update(name.encode())
        h.update(tensors[name].detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
