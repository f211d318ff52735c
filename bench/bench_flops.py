"""Unlearning step throughput and FLOP utilisation against this machine's measured matmul peak.

Run: ``.venv/bin/python bench/bench_flops.py [--people 20] [--steps 20] [--threads 1] [--sizes 1024 2048]
[--quick]`` (``--quick``: 10 steps; ``--rows-json PATH``: the table rows for ``bench/run_all.py``).
A script, not a test. In one process, at one torch thread count (``--threads``, the unlearning
bench's default of 1):

1. the matmul peak: fp32 ``torch.mm`` of square ``N x N`` matrices for each ``--sizes`` N, best of
   ``--reps``, measured before and again after the unlearning steps (the best of all counts: a
   shared machine only ever slows a run down);
2. GA unlearning steps through the real recipe (:class:`forgetlab.train.unlearn.UnlearnRecipe`,
   the step code ``bench_unlearn.py`` times: batch 8, MaskedAdamW, no mask) on the tiny LLaVA of
   the embedded benchmark: 2 warm-up steps, then ``--steps`` timed steps;
3. the FLOPs of those same steps (same batches, so the same shapes), forward + backward, counted by
   ``torch.utils.flop_counter.FlopCounterMode`` in a separate untimed pass (matmuls, convolutions,
   attention; the optimizer's element-wise update is not counted).

4. the step's own matrix products (every ``mm`` / ``addmm`` / ``bmm`` it dispatches, with its shapes), each
   timed alone with ``torch.mm`` / ``torch.bmm``: the rate those shapes reach on this machine, an upper
   bound on the step's utilisation at this model size (small matrices run below the large-N peak).

Reported: examples/s, tokens/s (real tokens, padding excluded; image placeholder tokens included),
achieved GFLOP/s = counted FLOPs / timed seconds, utilisation = achieved / peak, and the shape bound.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from _common import add_common_args, row, run_main, table_rows
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

QUICK = {"steps": 10}


def matmul_gflops(sizes: list[int], reps: int) -> dict[int, float]:
    """Best-of-``reps`` fp32 ``torch.mm`` GFLOP/s (2 N^3 FLOPs) for each size."""
    out = {}
    gen = torch.Generator().manual_seed(0)
    for n in sizes:
        a = torch.randn(n, n, generator=gen)
        b = torch.randn(n, n, generator=gen)
        torch.mm(a, b)  # warm-up
        best = float("inf")
        for _ in range(reps):
            t0 = time.perf_counter()
            torch.mm(a, b)
            best = min(best, time.perf_counter() - t0)
        out[n] = 2 * n**3 / best / 1e9
    return out


class MatmulShapes(TorchDispatchMode):
    """Records every matrix product a step dispatches (``mm``, ``addmm``, ``bmm``, ``baddbmm``) with its shapes."""

    OPS = ("mm", "addmm", "bmm", "baddbmm")

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, tuple[int, ...]]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name in self.OPS:
            a, b = (args[1], args[2]) if name in ("addmm", "baddbmm") else (args[0], args[1])
            dims = (1, *a.shape, b.shape[-1]) if a.dim() == 2 else (a.shape[0], a.shape[1], a.shape[2], b.shape[-1])
            self.calls.append((name, tuple(int(d) for d in dims)))  # (batch, M, K, N)
        return func(*args, **(kwargs or {}))


def shape_bound(calls: list[tuple[str, tuple[int, ...]]], reps: int) -> dict:
    """The step's own matrix products timed alone (best of ``reps`` each, fp32): their FLOPs, their seconds
    and the GFLOP/s those shapes reach. A step cannot run its products faster than they run alone, so this
    rate bounds the step's achievable utilisation at this model size."""
    gen = torch.Generator().manual_seed(0)
    counts: dict[tuple[int, ...], int] = {}
    for _, dims in calls:
        counts[dims] = counts.get(dims, 0) + 1
    seconds = flops = 0.0
    for (batch, m, k, n), count in counts.items():
        a, b = torch.randn(batch, m, k, generator=gen), torch.randn(batch, k, n, generator=gen)
        run = (lambda a=a, b=b: torch.mm(a[0], b[0])) if batch == 1 else (lambda a=a, b=b: torch.bmm(a, b))
        run()
        best = float("inf")
        for _ in range(reps):
            t0 = time.perf_counter()
            run()
            best = min(best, time.perf_counter() - t0)
        seconds += best * count
        flops += 2.0 * batch * m * k * n * count
    batch, m, k, n = max(counts, key=lambda d: counts[d] * d[0] * d[1] * d[2] * d[3])  # the most FLOPs
    return {"flops": flops, "seconds": seconds, "gflops": flops / seconds / 1e9, "distinct_shapes": len(counts),
            "products": len(calls), "main_shape": f"{batch}x{m}x{k}x{n}" if batch > 1 else f"{m}x{k}x{n}"}  # fmt: skip


def measure(args: argparse.Namespace) -> dict:
    from bench_unlearn import prepare

    from forgetlab.data.mllmu import load_training
    from forgetlab.models.load import load
    from forgetlab.train.unlearn import UnlearnConfig, UnlearnRecipe

    peak_before = matmul_gflops(args.sizes, args.reps)
    print("matmul GFLOP/s before: " + ", ".join(f"N={n}: {g:.1f}" for n, g in peak_before.items()), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        data, model_dir = prepare(Path(tmp), args.people)
        model, processor = load(model_dir)
        params = sum(p.numel() for p in model.parameters())
        forget, retain = load_training(data, "forget_10"), load_training(data, "retain_90")
        recipe = UnlearnRecipe(UnlearnConfig(method="ga", epochs=50, max_steps=args.steps + 2, batch_size=8))
        recipe.setup(model, processor, forget, retain)
        timed = list(range(2, args.steps + 2))
        examples = tokens = padded = 0
        for i in timed:  # the batches of the timed steps (cached encodings: what run_step will use)
            step = recipe.steps[i]
            assert step.kind == "forget" and not recipe.method.needs_retain
            batch = recipe._batch("forget", step.forget)
            examples += batch["input_ids"].shape[0]
            tokens += int(batch["attention_mask"].sum())
            padded += batch["input_ids"].numel()
        for i in range(2):
            recipe.run_step(i, recipe.steps[i])
        t0 = time.perf_counter()
        for i in timed:
            recipe.run_step(i, recipe.steps[i])
        seconds = time.perf_counter() - t0
        by_op: dict[str, int] = {}
        flops = 0
        for i in timed:  # untimed: the counter's dispatch overhead must not be in the step time
            with FlopCounterMode(display=False) as counter:
                recipe.run_step(i, recipe.steps[i])
            flops += counter.get_total_flops()
            for op, n in counter.get_flop_counts()["Global"].items():
                by_op[str(op).split(".")[-1]] = by_op.get(str(op).split(".")[-1], 0) + n
        with MatmulShapes() as shapes:  # one more untimed step: the shapes of its matrix products
            recipe.run_step(timed[0], recipe.steps[timed[0]])
        bound = shape_bound(shapes.calls, args.reps)
    peak_after = matmul_gflops(args.sizes, args.reps)
    print("matmul GFLOP/s after:  " + ", ".join(f"N={n}: {g:.1f}" for n, g in peak_after.items()), flush=True)
    peak = {n: max(peak_before[n], peak_after[n]) for n in args.sizes}
    return {
        "params": params,
        "peak_by_size": peak,
        "peak_before": peak_before,
        "peak_after": peak_after,
        "peak_gflops": max(peak.values()),
        "peak_size": max(peak, key=peak.get),
        "steps": len(timed),
        "seconds": seconds,
        "examples": examples,
        "tokens": tokens,
        "padded_tokens": padded,
        "flops": flops,
        "flops_by_op": by_op,
        "shape_bound": bound,
    }


def derived(res: dict) -> dict:
    step_s = res["seconds"] / res["steps"]
    achieved = res["flops"] / res["seconds"] / 1e9
    return {
        "step_s": step_s,
        "examples_per_s": res["examples"] / res["seconds"],
        "tokens_per_s": res["tokens"] / res["seconds"],
        "gflop_per_step": res["flops"] / res["steps"] / 1e9,
        "achieved_gflops": achieved,
        "utilisation": achieved / res["peak_gflops"],
        "shape_utilisation": res["shape_bound"]["gflops"] / res["peak_gflops"],
        "of_shape_bound": achieved / res["shape_bound"]["gflops"],
    }


def report(res: dict, args: argparse.Namespace) -> None:
    d = derived(res)
    print(f"tiny LLaVA {res['params'] / 1e6:.2f} M params, GA, batch 8, {res['steps']} timed steps, "
          f"{args.threads} thread(s), torch {torch.__version__}")  # fmt: skip
    print(f"matmul peak       {res['peak_gflops']:8.1f} GFLOP/s  (fp32 torch.mm, N={res['peak_size']})")
    print(f"step time         {d['step_s'] * 1e3:8.1f} ms")
    print(f"throughput        {d['examples_per_s']:8.1f} examples/s  {d['tokens_per_s']:8.0f} tokens/s "
          f"({res['tokens'] / res['padded_tokens']:.0%} of batch positions are real tokens)")  # fmt: skip
    print(f"FLOPs per step    {d['gflop_per_step']:8.2f} GFLOP (forward + backward)")
    print(f"achieved          {d['achieved_gflops']:8.1f} GFLOP/s = {d['utilisation']:.1%} of the matmul peak")
    total = sum(res["flops_by_op"].values())
    print("FLOPs by op: " + ", ".join(f"{k} {v / total:.1%}" for k, v in sorted(res["flops_by_op"].items())))
    b = res["shape_bound"]
    print(f"the step's own {b['products']} matrix products ({b['distinct_shapes']} shapes), timed alone: "
          f"{b['gflops']:.1f} GFLOP/s = {d['shape_utilisation']:.1%} of the peak; the step reaches "
          f"{d['of_shape_bound']:.1%} of that")  # fmt: skip


def to_rows(res: dict, args: argparse.Namespace) -> list[dict]:
    d = derived(res)
    name = "GA step FLOP utilisation"
    total = sum(res["flops_by_op"].values())
    ops = ", ".join(f"{k} {v / total:.0%}" for k, v in sorted(res["flops_by_op"].items(), key=lambda kv: -kv[1]))
    sizes = ", ".join(f"N={n} {g:.1f}" for n, g in res["peak_by_size"].items())
    return [
        row(name, "matmul peak (fp32 torch.mm)", f"{res['peak_gflops']:.1f} GFLOP/s", note=(
            f"best of {args.reps} reps before and after the steps, {args.threads} thread(s): {sizes}"),
            gflops=res["peak_gflops"], by_size=res["peak_by_size"], before=res["peak_before"],
            after=res["peak_after"], threads=args.threads),
        row(name, "GA unlearning step throughput", f"{d['examples_per_s']:.1f} ex/s", note=(
            f"{d['tokens_per_s']:.0f} tokens/s (non-pad), {d['step_s'] * 1e3:.1f} ms/step, batch 8, "
            f"{res['steps']} steps, tiny LLaVA {res['params'] / 1e6:.2f} M params, UnlearnRecipe.run_step"),
            examples_per_s=d["examples_per_s"], tokens_per_s=d["tokens_per_s"], step_s=d["step_s"]),
        row(name, "achieved GFLOP/s (fwd+bwd FLOPs / step time)", f"{d['achieved_gflops']:.1f} GFLOP/s", note=(
            f"{d['gflop_per_step']:.2f} GFLOP/step by FlopCounterMode ({ops})"),
            achieved_gflops=d["achieved_gflops"], gflop_per_step=d["gflop_per_step"], flops_by_op=res["flops_by_op"]),
        row(name, "FLOP utilisation = achieved / matmul peak", f"{d['utilisation']:.1%}", goal=">= 60% or why not",
            ok=d["utilisation"] >= 0.6 or None,
            note="same process, same thread count; optimizer update and data collation are in the step time "
            "but not in the FLOPs", utilisation=d["utilisation"]),
        row(name, "the step's matrix products timed alone / matmul peak", f"{d['shape_utilisation']:.1%}", note=(
            f"{res['shape_bound']['products']} products per step in {res['shape_bound']['distinct_shapes']} shapes "
            f"(most FLOPs in {res['shape_bound']['main_shape']}, M x K x N), {res['shape_bound']['gflops']:.1f} "
            "GFLOP/s: the rate these shapes reach alone; "
            f"the step reaches {d['of_shape_bound']:.0%} of it"), **res["shape_bound"]),
    ]  # fmt: skip


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--people", type=int, default=20)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048])
    ap.add_argument("--reps", type=int, default=3)
    add_common_args(ap, threads=1)
    return ap


def rows(quick: bool = True, threads: int = 1) -> list[dict]:
    """Table rows for ``bench/run_all.py`` (``quick``: the ``--quick`` sizes)."""
    return table_rows(parser, QUICK, measure, to_rows, quick, threads)


def main(argv: list[str] | None = None) -> None:
    run_main(parser, QUICK, measure, report, to_rows, argv)


if __name__ == "__main__":
    main()
