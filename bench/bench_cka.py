"""Time forgetlab's linear CKA against PyPI ``ckatorch`` on the same random activations.

Run: ``.venv/bin/python bench/bench_cka.py [--n 512] [--d 1024] [--layers 20] [--device cpu]``.
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=512)
    ap.add_argument("--d", type=int, default=1024)
    ap.add_argument("--layers", type=int, default=20)
    ap.add_argument("--batch", type=int, default=128, help="minibatch size for the minibatch rows")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()

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

    rows = [
        ("biased", lambda x, y: linear_cka(x, y, debiased=False), "cka_base(unbiased=False)",
         lambda x, y: core.cka_base(x, y, unbiased=False)),
        ("debiased", lambda x, y: linear_cka(x, y, debiased=True), "cka_base(unbiased=True)",
         lambda x, y: core.cka_base(x, y, unbiased=True)),
        (f"minibatch b={b}", ours_mb, "cka_batch (HSIC_1)", theirs_mb),
    ]  # fmt: skip
    print(f"{'estimator':<18}{'ours s':>9}{'theirs s':>10}{'ratio':>8}{'max|diff|':>12}  ckatorch function")
    for name, ours, their_name, theirs in rows:
        t_ours, v_ours, t_theirs, v_theirs = timed_pair(ours, theirs if core else None, pairs)
        if core is None:
            print(f"{name:<18}{t_ours:>9.3f}{'-':>10}{'-':>8}{'-':>12}")
            continue
        diff = max(abs(a - c) for a, c in zip(v_ours, v_theirs, strict=True))
        ratio = t_theirs / t_ours
        print(f"{name:<18}{t_ours:>9.3f}{t_theirs:>10.3f}{ratio:>8.2f}{diff:>12.2e}  {their_name}")
    print("ratio = theirs / ours (> 1: ours faster). Values at layers 0, mid, last (ours):")
    picks = (0, args.layers // 2, args.layers - 1)
    deb = ", ".join(f"{linear_cka(*pairs[i]):.4f}" for i in picks)
    bia = ", ".join(f"{linear_cka(*pairs[i], debiased=False):.4f}" for i in picks)
    print(f"  debiased: {deb}   biased: {bia}")


if __name__ == "__main__":
    main()
