"""Time forgetlab's representation probe against PyPI ``representational-analysis`` 0.1.3.

Run: ``.venv/bin/python bench/bench_probe.py [--layers 12] [--hidden 64] [--queries 40] [--quick]``
(``--quick``: 6 layers, hidden 32, 20 queries, some 30 s; ``--rows-json PATH``: the table rows for
``bench/run_all.py``).
A script, not a test. Both sides analyse the same saved tiny ``LlamaForCausalLM`` pair (the
reference and a copy whose upper half of decoder blocks is perturbed, standing in for an
unlearned model) on the same queries, on the CPU with one thread (``--threads``), for all four analyses over
all layers: CKA, PCA similarity, PCA shift and diagonal Fisher.

* theirs: ``run_feature_analysis(feature, ...)`` once per feature with its defaults
  (batch_size 4, num_batches 10, max_length 128, bf16 as hard-coded); it returns nothing and
  writes PDFs, so its numbers are read from the arguments it passes to matplotlib
  (``Axes.plot`` / ``scatter`` / ``hist``), unchanged;
* ours: one ``run_probe`` (every layer, three poolings, CKA debiased + biased, PCA similarity,
  eigengap, PCA shift, per-example Fisher on the same number of queries, JSON/CSV), cold cache.

Theirs runs once, as shipped (with its PDFs; about 4 minutes at the default size); ours runs
cold with plots (the comparison), cold without plots, and warm (everything read from the cache).
12 layers by default so that their substring match of ``model.layers.1`` visibly grabs 10 and 11.
Install theirs with
``pip install --no-deps representational-analysis==0.1.3 pandas`` (their package imports pandas;
``datasets``, also declared, is never imported). Without it only our side runs.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import math
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from _common import add_common_args, row, run_main, table_rows, times

from forgetlab.models.tiny_lm import build_tiny_causal_lm
from forgetlab.probe.run import run_probe

WORDS = (
    "the a person doctor teacher lives in boston paris london likes cycling noodles music "
    "painting works as an engineer artist who is from city village near river sea old young "
    "her his name was born and enjoys reading chess garden food favourite hobby"
).split()


def make_queries(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(6, 16)))) for _ in range(n)]


def build_pair(root: Path, layers: int, hidden: int, queries: list[str]) -> tuple[Path, Path]:
    """Reference = briefly trained tiny Llama; updated = it with blocks >= layers/2 perturbed."""
    model, tok = build_tiny_causal_lm(queries, hidden=hidden, layers=layers, heads=4, seed=0)
    batch = tok(queries, return_tensors="pt", padding=True)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(30):  # a few steps so that the representations are not just random init
        loss = model(**batch, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    ref, upd = root / "reference", root / "updated"
    model.save_pretrained(ref)
    tok.save_pretrained(ref)
    changed = copy.deepcopy(model)
    with torch.no_grad():
        for block in changed.model.layers[layers // 2 :]:
            for p in block.parameters():
                p.add_(0.02 * torch.randn_like(p))
    changed.save_pretrained(upd)
    tok.save_pretrained(upd)
    return ref, upd


@contextlib.contextmanager
def matplotlib_spy(no_save: bool):
    """Record what their code hands to matplotlib; optionally make ``savefig`` a no-op."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    calls: list[tuple[str, tuple]] = []
    originals = {name: getattr(Axes, name) for name in ("plot", "scatter", "hist")}

    def spy(name):
        def wrapper(self, *args, **kwargs):
            calls.append((name, args))
            return originals[name](self, *args, **kwargs)

        return wrapper

    for name in originals:
        setattr(Axes, name, spy(name))
    orig_save = Figure.savefig
    if no_save:
        Figure.savefig = lambda self, *a, **k: None
    try:
        yield calls
    finally:
        for name, fn in originals.items():
            setattr(Axes, name, fn)
        Figure.savefig = orig_save


def run_theirs(ref: Path, upd: Path, queries: list[str], out: Path, plots: bool = True) -> tuple[dict, dict]:
    from representational_toolkit.analysis import run_feature_analysis

    times: dict[str, float] = {}
    numbers: dict[str, object] = {}
    for feature in ("cka", "pca_sim", "pca_shift", "fim"):
        target = out / feature if feature == "fim" else out / f"{feature}.pdf"
        with matplotlib_spy(no_save=not plots) as calls, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t0 = time.perf_counter()
            run_feature_analysis(feature, str(ref), str(upd), queries, str(target), device="cpu")
            times[feature] = time.perf_counter() - t0
        print(f"  theirs {feature:9s} {times[feature]:8.2f} s", flush=True)
        if feature in ("cka", "pca_sim"):
            numbers[feature] = [float(v) for v in calls[0][1][1]]
        elif feature == "pca_shift":
            scatters = [args for name, args in calls if name == "scatter"]
            numbers[feature] = [float(v) for v in scatters[1][0]]  # 2nd scatter: "Updated" ΔPC1
        else:
            hists = [np.asarray(args[0], dtype=np.float64) for name, args in calls if name == "hist"]
            numbers["fim_ref"] = hists[0::2]
            numbers["fim_upd"] = hists[1::2]
    return times, numbers


def run_ours(ref: Path, upd: Path, queries_file: Path, out: Path, n_fisher: int, plots: bool) -> tuple[float, dict]:
    t0 = time.perf_counter()
    summary = run_probe(
        ref,
        [upd],
        out,
        texts=queries_file,
        fisher_examples=n_fisher,
        cache_dir=out / "cache",
        plots=plots,
        device="cpu",
    )
    return time.perf_counter() - t0, summary


def fmt(v: float) -> str:
    return "nan" if v is None or not math.isfinite(v) else f"{v:8.4f}"


QUICK = {"layers": 6, "hidden": 32, "queries": 20}  # ``--quick``: their side takes seconds, not minutes
INSTALL = "pip install --no-deps representational-analysis==0.1.3 pandas  (or: pip install -e '.[bench]')"


def measure(args: argparse.Namespace) -> dict:
    """Both sides on the same pair; the numbers ``report`` and ``to_rows`` need."""
    try:
        import representational_toolkit.analysis  # noqa: F401

        theirs_error = None
    except Exception as exc:  # noqa: BLE001 - report any import failure and run ours alone
        theirs_error = f"{type(exc).__name__}: {exc}"

    with tempfile.TemporaryDirectory() as tmp:
        root = args.out or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        queries = make_queries(args.queries)
        (root / "queries.txt").write_text("\n".join(queries) + "\n")
        ref, upd = build_pair(root / "models", args.layers, args.hidden, queries)
        print(
            f"tiny LlamaForCausalLM: {args.layers} layers, hidden {args.hidden}, {len(queries)} queries, "
            f"CPU, {args.threads} thread(s), torch {torch.__version__}"
        )

        t_compute, _ = run_ours(ref, upd, root / "queries.txt", root / "ours-np", args.queries, plots=False)
        t_ours, summary = run_ours(ref, upd, root / "queries.txt", root / "ours", args.queries, plots=True)
        t_warm, _ = run_ours(ref, upd, root / "queries.txt", root / "ours", args.queries, plots=True)
        print(f"  ours (cold cache, with plots) {t_ours:.2f} s", flush=True)
        theirs, numbers = {}, {}
        if theirs_error is None:
            theirs, numbers = run_theirs(ref, upd, queries, root / "theirs", plots=True)
    return {"theirs_error": theirs_error, "theirs": theirs, "numbers": numbers, "summary": summary,
            "t_ours": t_ours, "t_compute": t_compute, "t_warm": t_warm}  # fmt: skip


def report(m: dict, args: argparse.Namespace) -> None:
    theirs_error, theirs, numbers, summary = m["theirs_error"], m["theirs"], m["numbers"], m["summary"]
    t_ours, t_compute, t_warm = m["t_ours"], m["t_compute"], m["t_warm"]
    print("\n== time for CKA + PCA similarity + PCA shift + Fisher over all layers (seconds) ==")
    if theirs_error is None:
        t_theirs = sum(theirs.values())
        parts = ", ".join(f"{k} {v:.1f}" for k, v in theirs.items())
        print(f"theirs, as shipped (PDF plots): {t_theirs:8.2f}   ({parts})")
        print(f"ours, cold cache, PNG plots:    {t_ours:8.2f}   speed-up {t_theirs / t_ours:.1f}x")
    else:
        print(f"ours, cold cache, PNG plots:    {t_ours:8.2f}")
    print(f"ours, cold cache, no plots:     {t_compute:8.2f}")
    print(f"ours, warm cache (features and Fisher reused), plots: {t_warm:.2f}")
    print("ours = 2 model loads, 1 forward per batch per model (3 poolings), all layers, CKA debiased +")
    print("       biased, PCA similarity + eigengap, PCA shift, per-example Fisher, JSON/CSV, 4 groups of plots")
    if theirs_error is not None:
        print(f"\nrepresentational-analysis not run: {theirs_error}")
        return

    res = summary["results"]["mean"]["all"]["updated"]
    ours_by = {ly: i for i, ly in enumerate(res["layers"])}
    fisher = summary["fisher"]["reports"]
    print("\n== per-layer numbers: theirs vs ours (ours: mean pooling over real tokens, BOS and pads excluded) ==")
    print(
        f"{'layer':14s} {'CKA theirs':>10s} {'CKA ours':>9s} {'biased':>8s} "
        f"{'PCAsim th':>9s} {'PCAsim us':>9s} {'shift th':>9s} {'shift us':>9s} "
        f"{'FIM#par th':>10s} {'FIM#par us':>10s} {'FIMmed th':>10s} {'FIMmed us':>10s}"
    )
    f_upd = fisher["updated"]
    for i in range(args.layers):
        name = f"language.{i}"
        j = ours_by[name]
        k = f_upd["layers"].index(name)
        th_fim = numbers["fim_upd"][i]
        print(
            f"{name:14s} {fmt(numbers['cka'][i]):>10s} {fmt(res['cka'][j]):>9s} {fmt(res['cka_biased'][j]):>8s} "
            # their hidden_states[i + 1] is block i's output (the last one normed)
            f"{fmt(numbers['pca_sim'][i + 1]):>9s} {fmt(res['pca_similarity'][j]):>9s} "
            f"{fmt(numbers['pca_shift'][i + 1]):>9s} {fmt(res['pca_shift'][j]):>9s} "
            f"{th_fim.size:10d} {f_upd['n'][k]:10d} {np.median(th_fim):10.2e} {f_upd['q50'][k]:10.2e}"
        )
    print(
        "\nwhy they differ:\n"
        "- CKA: theirs pools token 0 only; with a BOS token that state is the same for every query, so\n"
        "  the centred Gram matrix is 0 and their CKA is 0/(0+1e-12) = 0 at every layer. It is also the\n"
        "  biased estimator on 40 queries (ours reports debiased, biased alongside) and runs one forward\n"
        "  pass per layer per model.\n"
        "- PCA similarity: theirs averages over all positions including pads (padding to the longest\n"
        "  query) and reports the signed cosine of PC1s, whose sign is arbitrary; ours excludes pads and\n"
        "  BOS and reports |cos| with the reference's eigengap. Its last index is the normed output.\n"
        "- PCA shift: theirs pads every query to 128 tokens and averages all 128 positions, so the mean\n"
        "  is mostly pad-token states; its shift is in raw units along PC1. Ours is the centroid shift in\n"
        "  units of the reference's standard deviation along PC1, over real tokens only.\n"
        "- Fisher: theirs selects parameters with the substring 'model.layers.1', which also grabs\n"
        "  layers 10, 11, ... (see the parameter counts), uses labels = input_ids so pad tokens are\n"
        "  supervised, squares batch-mean gradients in bf16, and reloads both models for every layer.\n"
        "  Ours: per-example squared gradients (pads excluded by labels = -100), fp32, layers by module."
    )


def to_rows(res: dict, args: argparse.Namespace) -> list[dict]:
    name = "probes vs representational-analysis"
    figure = "CKA + PCA sim + PCA shift + Fisher, all layers: their time / ours"
    ours = (f"ours cold with plots {res['t_ours']:.1f} s, no plots {res['t_compute']:.1f} s, warm cache "
            f"{res['t_warm']:.1f} s")  # fmt: skip
    setting = f"tiny Llama {args.layers} layers, hidden {args.hidden}, {args.queries} queries, {args.threads} thread(s)"
    if res["theirs_error"] is not None:
        return [row(name, figure, "not installed", note=f"{res['theirs_error']}; {INSTALL}; {ours}; {setting}",
                    ours_s=res["t_ours"], ours_no_plots_s=res["t_compute"], ours_warm_s=res["t_warm"])]  # fmt: skip
    t_theirs = sum(res["theirs"].values())
    parts = ", ".join(f"{k} {v:.1f}" for k, v in res["theirs"].items())
    return [
        row(name, figure, times(t_theirs / res["t_ours"]),
            note=f"theirs {t_theirs:.1f} s as shipped ({parts}); {ours}; {setting}" + (
                "; their CKA is 0 at every layer (it pools the BOS state: see bench_probe.py)"
                if not any(res["numbers"]["cka"]) else ""),
            ratio=t_theirs / res["t_ours"], theirs_s=t_theirs, theirs_by_feature=res["theirs"],
            ours_s=res["t_ours"], ours_no_plots_s=res["t_compute"], ours_warm_s=res["t_warm"]),
    ]  # fmt: skip


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--queries", type=int, default=40, help="their CKA/Fisher read 10 batches of 4 = 40")
    ap.add_argument("--out", type=Path, default=None, help="work folder (default: a temporary one)")
    add_common_args(ap, threads=1)
    return ap


def rows(quick: bool = True, threads: int = 1) -> list[dict]:
    """Table rows for ``bench/run_all.py`` (``quick``: the ``--quick`` sizes)."""
    return table_rows(parser, QUICK, measure, to_rows, quick, threads)


def main(argv: list[str] | None = None) -> None:
    run_main(parser, QUICK, measure, report, to_rows, argv)


if __name__ == "__main__":
    main()
