"""Time forgetlab's linear CKA against PyPI ``ckatorch`` on the same random activations.

Run: ``.venv/bin/python bench/bench_cka.py [--n 512] [--d 1024] [--layers 20] [--device cpu] [--threads N]
[--quick]`` (``--quick``: the same sizes; ``--rows-json PATH``: the table rows for ``bench/run_all.py``).
A script, not a test. ckatorch (1.0.3) provides ``cka_base`` (full-batch CKA; biased by default,
``unbiased=True`` gives Kornblith's debiased CKA) and ``cka_batch`` (Nguyen et al. minibatch CKA,
unbiased HSIC_1). Both sides get torch float64 inputs and compute in float64; each value pair is
compared. If ckatorch is missing, install it with ``pip install --no-deps ckatorch`` (its package
``__init__`` imports seaborn only for plotting; a stub is used here when seaborn is absent).
"""

from __future__ import annotations

import argparse
import sys
import time
import types

import torch
from _common import add_common_args, emit, parse, row

from forgetlab.probe import StreamingCKA, linear_cka


def load_ckatorch():
    try:
        import ckatorch  # noqa: F401
    except ModuleNotFoundError as exc:
        if exc.name != "seaborn":
            return None, f"ckatorch not importable ({exc})"
        sys.modules["seaborn"] = types.ModuleType("seaborn")  # only used by ckatorch.plot
        try:
            import ckatorch  # noqa: F401
        except Exception as exc2:  # noqa: BLE001
            return None, f"ckatorch not importable ({exc2})"
    from ckatorch import core

    return core, None


def timed_pair(ours, theirs, pairs) -> tuple[float, list[float], float, list[float]]:
    """Time both functions layer by layer, alternating, so load from other processes on a shared
    machine hits both sides alike. ``theirs`` may be None."""
    ours(*pairs[0])  # warm-up (lazy LAPACK/BLAS initialisation)
    if theirs is not None:
        theirs(*pairs[0])
    t_ours = t_theirs = 0.0
    v_ours: list[float] = []
    v_theirs: list[float] = []
    for x, y in pairs:
        t0 = time.perf_counter()
        v_ours.append(float(ours(x, y)))
        t_ours += time.perf_counter() - t0
        if theirs is not None:
            t0 = time.perf_counter()
            v_theirs.append(float(theirs(x, y)))
            t_theirs += time.perf_counter() - t0
    return t_ours, v_ours, t_theirs, v_theirs


QUICK: dict = {}  # the default sizes take seconds at one thread
INSTALL = "pip install --no-deps ckatorch==1.0.3  (or: pip install -e '.[bench]')"


def measure(args: argparse.Namespace) -> dict:
    gen = torch.Generator().manual_seed(0)
    pairs = []
    for layer in range(args.layers):
        x = torch.randn(args.n, args.d, generator=gen, dtype=torch.float64)
        noise = torch.randn(args.n, args.d, generator=gen, dtype=torch.float64)
        w = layer / max(1, args.layers - 1)  # similarity decreasing with depth
        pairs.append((x.to(args.device), ((1 - w) * x + w * noise).to(args.device)))

    core, why = load_ckatorch()
    print(
        f"n={args.n} d={args.d} layers={args.layers} device={args.device} "
        f"torch threads={torch.get_num_threads()} dtype=float64"
    )
    if core is None:
        print(f"ckatorch unavailable: {why}; timing forgetlab only")

    b = args.batch

    def ours_mb(x, y):
        s = StreamingCKA()
        for i in range(0, x.shape[0], b):
            s.update(x[i : i + b], y[i : i + b])
        return s.compute()

    def theirs_mb(x, y):
        return core.cka_batch(x.reshape(-1, b, x.shape[1]), y.reshape(-1, b, y.shape[1]))

    estimators = [
        ("biased", lambda x, y: linear_cka(x, y, debiased=False), "cka_base(unbiased=False)",
         lambda x, y: core.cka_base(x, y, unbiased=False)),
        ("debiased", lambda x, y: linear_cka(x, y, debiased=True), "cka_base(unbiased=True)",
         lambda x, y: core.cka_base(x, y, unbiased=True)),
        (f"minibatch b={b}", ours_mb, "cka_batch (HSIC_1)", theirs_mb),
    ]  # fmt: skip
    results = []
    for name, ours, their_name, theirs in estimators:
        t_ours, v_ours, t_theirs, v_theirs = timed_pair(ours, theirs if core else None, pairs)
        entry = {"estimator": name, "theirs": their_name, "ours_s": t_ours, "theirs_s": None, "max_diff": None}
        if core is not None:
            entry["theirs_s"] = t_theirs
            entry["max_diff"] = max(abs(a - c) for a, c in zip(v_ours, v_theirs, strict=True))
        results.append(entry)
    picks = (0, args.layers // 2, args.layers - 1)
    values = {
        "debiased": [float(linear_cka(*pairs[i])) for i in picks],
        "biased": [float(linear_cka(*pairs[i], debiased=False)) for i in picks],
    }
    return {"results": results, "why": why, "values": values, "threads": torch.get_num_threads()}


def report(res: dict) -> None:
    print(f"{'estimator':<18}{'ours s':>9}{'theirs s':>10}{'ratio':>8}{'max|diff|':>12}  ckatorch function")
    for e in res["results"]:
        if e["theirs_s"] is None:
            print(f"{e['estimator']:<18}{e['ours_s']:>9.3f}{'-':>10}{'-':>8}{'-':>12}")
            continue
        ratio = e["theirs_s"] / e["ours_s"]
        print(f"{e['estimator']:<18}{e['ours_s']:>9.3f}{e['theirs_s']:>10.3f}{ratio:>8.2f}{e['max_diff']:>12.2e}  "
              f"{e['theirs']}")  # fmt: skip
    print("ratio = theirs / ours (> 1: ours faster). Values at layers 0, mid, last (ours):")
    deb = ", ".join(f"{v:.4f}" for v in res["values"]["debiased"])
    bia = ", ".join(f"{v:.4f}" for v in res["values"]["biased"])
    print(f"  debiased: {deb}   biased: {bia}")


def to_rows(res: dict, args: argparse.Namespace) -> list[dict]:
    name = "CKA vs ckatorch"
    setting = f"{args.layers} layer pairs of {args.n}x{args.d} float64, {res['threads']} thread(s)"
    if res["why"] is not None:
        ours = ", ".join(f"{e['estimator']} {e['ours_s']:.3f} s" for e in res["results"])
        return [row(name, "linear CKA, forgetlab vs ckatorch 1.0.3", "not installed",
                    note=f"{res['why']}; {INSTALL}; ours alone: {ours}; {setting}")]  # fmt: skip
    out = []
    for e in res["results"]:
        ratio = e["theirs_s"] / e["ours_s"]
        agree = e["max_diff"] <= 1e-9
        out.append(row(
            name, f"{e['estimator']}: ckatorch time / ours", f"{ratio:.2f}× · |Δ| {e['max_diff']:.0e}",
            "values agree (|Δ| ≤ 1e-9)", agree,
            f"ours {e['ours_s']:.3f} s, ckatorch {e['theirs']} {e['theirs_s']:.3f} s; {setting}",
            ratio=ratio, ours_s=e["ours_s"], theirs_s=e["theirs_s"], max_abs_diff=e["max_diff"],
        ))  # fmt: skip
    return out


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=512)
    ap.add_argument("--d", type=int, default=1024)
    ap.add_argument("--layers", type=int, default=20)
    ap.add_argument("--batch", type=int, default=128, help="minibatch size for the minibatch rows")
    ap.add_argument("--device", default="cpu")
    add_common_args(ap, threads=None)
    return ap


def _threads(args: argparse.Namespace) -> None:
    if args.threads is not None:
        torch.set_num_threads(args.threads)


def rows(quick: bool = True, threads: int | None = 1) -> list[dict]:
    """Table rows for ``bench/run_all.py`` (``quick``: the ``--quick`` sizes)."""
    argv = (["--threads", str(threads)] if threads is not None else []) + (["--quick"] if quick else [])
    args = parse(parser(), QUICK, argv)
    _threads(args)
    return to_rows(measure(args), args)


def main(argv: list[str] | None = None) -> None:
    args = parse(parser(), QUICK, argv)
    _threads(args)
    res = measure(args)
    report(res)
    emit(args, to_rows(res, args))


if __name__ == "__main__":
    main()
