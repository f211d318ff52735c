"""The toy demo plan shared by the in-process demo tests and the kill-and-resume subprocess."""

from __future__ import annotations

import sys
from pathlib import Path

from forgetlab.demo import DemoPlan
from forgetlab.sweep import MethodSweep
from forgetlab.train.finetune import FinetuneConfig
from forgetlab.verify.assess import AssessSettings
from forgetlab.verify.regimes import Regime

TOY = DemoPlan(
    people=20,
    train_views=4,  # half the default: the toy run is about the pipeline, not the numbers
    finetune=FinetuneConfig(
        epochs=1, perception_epochs=0, pretrain_epochs=0, vision_pretrain_steps=5, warmup_steps=5, batch_size=16
    ),
    sweep=(
        MethodSweep("ga", (1e-3,)),
        MethodSweep("mmunlearner", (1e-3,), {"pairing": "interleave", "retain_weight": 1.0}),
    ),
    regimes=(
        Regime("single", "one request", "reversible", "ga", 1e-4),
        Regime("continual", "two requests", "irreversible", "ga", 1e-3, requests=2),
    ),
    assess=AssessSettings(relearn_lr=1e-3, probe_per_group=4),
    log_with="tensorboard",  # the sweep's training curves as event files too
)


if __name__ == "__main__":  # the subprocess of tests/test_demo.py::resumed
    import torch
    from rich.console import Console

    from forgetlab.demo import run_demo

    torch.set_num_threads(1)  # as tests/conftest.py: the same kernels give the same bits
    run_demo(Path(sys.argv[1]), TOY, console=Console(quiet=True))
