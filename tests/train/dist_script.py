"""Launched by test_distributed.py: ``accelerate launch ... dist_script.py MODEL DATA OUT PROCESSES``.

Computes importance and runs every job of dist_jobs.JOBS on the launched processes. The main process
writes OUT/importance.safetensors, OUT/eval.json, OUT/<job>/ (the recipe's own save), OUT/finetune/ (knowledge
injection) and OUT/ranks.json (digests of each process's mask and final weights, gathered).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from dist_jobs import FINETUNE, JOBS, digest, evaluation, importance, run
from safetensors.torch import save_file

from forgetlab.dist.shard import Shard, end_process_group
from forgetlab.models.load import load
from forgetlab.train.finetune import finetune


def main(model_dir: Path, data: Path, out: Path, processes: int) -> None:
    torch.set_num_threads(1)
    shard = Shard.current()
    if shard.world != processes:
        raise SystemExit(f"launched {shard.world} processes, expected {processes}")
    imp = importance(model_dir, data, shard)
    if shard.is_main:
        out.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in imp.items()}, str(out / "importance.safetensors"))
    result = evaluation(model_dir, data, shard)
    if shard.is_main:
        (out / "eval.json").write_text(json.dumps(result))
    ranks: dict[str, list[str]] = {}
    for job in JOBS:
        recipe = run(model_dir, data, job)
        recipe.save(out / job)
        model = recipe.accelerator.unwrap_model(recipe.model)
        mine = {"weights": digest(dict(model.named_parameters()))}
        if recipe.mask is not None:
            mine["mask"] = digest(recipe.mask.tensors)
        for key, value in mine.items():
            ranks[f"{job}/{key}"] = shard.gather([value])
    finetune(data, out / "finetune", FINETUNE, shard=shard)
    ranks["finetune/weights"] = shard.gather([digest(dict(load(out / "finetune")[0].named_parameters()))])
    if shard.is_main:
        (out / "ranks.json").write_text(json.dumps(ranks, indent=1))
    end_process_group()  # together, then destroyed: a process leaving a live gloo group can hang or abort


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4]))
