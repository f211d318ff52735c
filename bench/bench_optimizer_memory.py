"""Optimizer state per parameter: plain AdamW vs MaskedAdamW vs PackedMaskedAdamW, measured.

Run: ``.venv/bin/python bench/bench_optimizer_memory.py [--people 20] [--threads 1] [--json]``
(``--rows-json PATH``: the table rows for ``bench/run_all.py``; ``--quick`` runs the same sizes).
A script, not a test. On the tiny LLaVA of the embedded benchmark and a synthetic benchmark of
``--people`` people, it computes MMUnlearner's real mask (Fisher ratio, groups=both, gamma=1; and the
same ranked to the top 10%), takes one real unlearning step with each optimizer through the recipe,
and sums the bytes of every tensor the optimizer holds (Adam moments, masks, packed positions:
:func:`forgetlab.train.packed_optim.state_bytes`), reported per model parameter. With groups=both the
mask covers every parameter, so per parameter is also per masked element.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from _common import add_common_args, emit, row, start, table_rows


def prepare(root: Path, people: int) -> tuple[Path, Path]:
    """Benchmark + a freshly initialised tiny LLaVA saved under ``root``."""
    from forgetlab.data.synth import write_benchmark
    from forgetlab.models.tiny import build_tiny_model, save_model
    from forgetlab.train.finetune import benchmark_texts

    data = write_benchmark(root / "data", people=people, celebrities=4, perception_train=2, perception_test=2)
    model, processor = build_tiny_model("llava", benchmark_texts(data), image_size=32)
    save_model(model, processor, root / "model")
    return data, root / "model"


def one_step(model_dir: Path, data: Path, **fields) -> dict:
    """Optimizer bytes after one real step of an unlearning run (``fields``: UnlearnConfig)."""
    from forgetlab.data.mllmu import load_training
    from forgetlab.models.load import load
    from forgetlab.train.packed_optim import state_bytes
    from forgetlab.train.unlearn import UnlearnConfig, UnlearnRecipe

    model, processor = load(model_dir)
    total = sum(p.numel() for p in model.parameters())
    recipe = UnlearnRecipe(UnlearnConfig(max_steps=1, batch_size=8, **fields))
    recipe.setup(model, processor, load_training(data, "forget_10"), load_training(data, "retain_90"))
    recipe.run_step(0, recipe.steps[0])
    used = state_bytes(recipe.optimizer)
    return {"bytes": used, "per_param": used / total, "params": total}


QUICK: dict = {}  # the default sizes take some 30 s


def measure(args: argparse.Namespace) -> dict[str, dict]:
    from forgetlab.models.load import load
    from forgetlab.train.masking import compute_mask

    runs: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        data, model_dir = prepare(Path(tmp), args.people)
        runs["AdamW (ga, every parameter)"] = one_step(model_dir, data, method="ga")
        for label, top_k in (("gamma=1", None), ("top 10%", 0.1)):
            model, processor = load(model_dir)
            mask = compute_mask(model, processor, data, 10, groups="both", top_k=top_k)
            path = Path(tmp) / f"mask_{top_k}.safetensors"
            mask.save(path)
            for state in ("full", "packed"):
                r = one_step(model_dir, data, method="mmunlearner", mask=path, optimizer_state=state)
                r["mask_fraction"] = round(mask.fraction, 4)
                runs[f"mmunlearner {label}, optimizer_state={state}"] = r
    return runs


def report(rows: dict[str, dict], args: argparse.Namespace) -> None:
    params = next(iter(rows.values()))["params"]
    print(f"tiny LLaVA, {params / 1e6:.2f} M parameters, {args.people} people; bytes of optimizer tensors")
    print(f"{'run':<44} {'mask':>7} {'bytes':>11} {'B/param':>8}")
    for name, r in rows.items():
        frac = f"{r['mask_fraction']:.1%}" if "mask_fraction" in r else "-"
        print(f"{name:<44} {frac:>7} {r['bytes']:>11,} {r['per_param']:>8.2f}")


def to_rows(res: dict[str, dict], args: argparse.Namespace) -> list[dict]:
    out = []
    for name, r in res.items():
        mask = f"mask selects {r['mask_fraction']:.1%}; " if "mask_fraction" in r else ""
        out.append(row(
            "optimizer state memory", name, f"{r['per_param']:.2f} B/param",
            note=f"{mask}{r['bytes']:,} bytes after one real step, {r['params'] / 1e6:.2f} M params",
            bytes=r["bytes"], per_param=r["per_param"], params=r["params"], mask_fraction=r.get("mask_fraction"),
        ))  # fmt: skip
    return out


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--people", type=int, default=20)
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    add_common_args(ap, threads=1)
    return ap


def rows(quick: bool = True, threads: int = 1) -> list[dict]:
    """Table rows for ``bench/run_all.py`` (``quick``: the ``--quick`` sizes)."""
    return table_rows(parser, QUICK, measure, to_rows, quick, threads)


def main(argv: list[str] | None = None) -> None:
    args = start(parser, QUICK, argv)
    res = measure(args)
    if args.json:
        print(json.dumps(res, indent=1))
    else:
        report(res, args)
    emit(args, to_rows(res, args))


if __name__ == "__main__":
    main()
