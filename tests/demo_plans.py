"""The toy demo shared by the in-process demo tests and the kill-and-resume subprocess: the packaged demo
study (configs/demo.yaml) with a handful of ``--set`` overrides that make it run in about a minute."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

from forgetlab.study.config import DEMO_STUDY, _set_dotted

#: ``forgetlab demo --set KEY=VALUE`` overrides (values as JSON) that turn the demo into the toy demo
TOY: dict[str, object] = {
    "benchmark.people": 20,
    "benchmark.train_views": 4,  # half the default: the toy run is about the pipeline, not the numbers
    "model.source": "finetune",
    "model.finetune": {
        "epochs": 1,
        "perception_epochs": 0,
        "pretrain_epochs": 0,
        "vision_pretrain_steps": 5,
        "warmup_steps": 5,
        "batch_size": 16,
    },  # fmt: skip
    "runs": [
        {"method": "ga", "lrs": [1e-3], "arms": ["forget-only"]},
        {"method": "mmunlearner", "lrs": [1e-3], "arms": ["retain"], "args": {"groups": "language"}},
    ],
    "selection.seeds": 2,  # the chosen setting again at a second seed: intervals over people and seeds
    "verify.relearn.lr": 1e-3,
    "verify.relearn.max_epochs": 1,  # the decisive attack's epoch loop is tests/verify/test_decisive.py's
    "verify.probe.per_group": 4,
    "verify.twins": True,  # the demo skips verifying the -nomask twins for time; the toy checks that path
    "verify.regime_seeds": 2,  # each regime again at a second seed, pooled (regimes_over_seeds)
    "verify.regimes": [
        {"name": "single", "title": "one request", "expected": "reversible", "lr": 1e-4},
        {"name": "continual", "title": "two requests", "expected": "irreversible", "lr": 1e-3, "requests": 2},
    ],
    "log_with": "tensorboard",  # the runs' training curves as event files too
    "eval.compare": [],  # the generate protocol is checked by tests/test_study.py on a smaller benchmark
}


def set_args() -> list[str]:
    """``--set`` arguments of :data:`TOY` for ``forgetlab demo``."""
    return [a for k, v in TOY.items() for a in ("--set", f"{k}={json.dumps(v)}")]


def write_toy_study(path: Path) -> Path:
    """The toy demo as a study file of its own (for ``forgetlab run``)."""
    data = yaml.safe_load(DEMO_STUDY.read_text())
    for key, value in TOY.items():
        _set_dotted(data, key, value)
    path.write_text(yaml.safe_dump(data))
    return path


if __name__ == "__main__":  # the subprocess of tests/test_demo.py::resumed: `forgetlab run TOY --out RUN`
    import torch

    from forgetlab.cli import app

    torch.set_num_threads(1)  # as tests/conftest.py: the same kernels give the same bits
    study = write_toy_study(Path(sys.argv[1]).parent / "toy.yaml")
    app(["run", str(study), "--out", sys.argv[1]])
