"""Time forgetlab's representation probe against PyPI ``representational-analysis`` 0.1.3, and against the
compute floor.

Run: ``.venv/bin/python bench/bench_probe.py [--layers 12] [--hidden 384] [--queries 256] [--max-tokens 96]
[--probe-threads N] [--small]``. The default is the realistic workload: a 12-layer, d=384 Llama pair and 256
queries of up to 96 tokens (``--quick``, what ``bench/run_all.py`` passes, keeps it: a smaller one hides where
the time goes); ``--small`` (6 layers, hidden 32, 20 queries) is a quick look; ``--rows-json PATH``: the
table rows for ``bench/run_all.py``.
A script, not a test. Both sides analyse the same saved ``LlamaForCausalLM`` pair (the reference, briefly
trained, and a copy whose upper half of decoder blocks is perturbed, standing in for an unlearned model) on
the same queries, on the CPU, both with ``--probe-threads`` torch threads (default: every core, which is what
either uses when nothing says otherwise), for all four analyses over all layers: CKA, PCA similarity, PCA
shift and diagonal Fisher.

* theirs: ``run_feature_analysis(feature, ...)`` once per feature with its defaults, in process
  (batch_size 4, num_batches 10, max_length 128, bf16 as hard-coded); it returns nothing and
  writes PDFs, so its numbers are read from the arguments it passes to matplotlib
  (``Axes.plot`` / ``scatter`` / ``hist``), unchanged;
* ours: the command line, ``forgetlab probe --reference A --model B --texts Q --out O`` in a fresh process,
  wall time *including* interpreter and import start-up, cold cache (every layer, three poolings, CKA
  debiased + biased, PCA similarity, eigengap, PCA shift, per-example Fisher, JSON/CSV, PNG plots); then
  in-process parts for the breakdown (start-up, both models' features, Fisher, comparison and files).
* the compute floor: the FLOPs of the passes the probe needs (each model's forward over every query, and
  its forward + backward over the Fisher examples), counted per query without padding by
  ``torch.utils.flop_counter``, divided by this machine's fp32 ``torch.mm`` peak at the same threads.

Install theirs with
``pip install --no-deps representational-analysis==0.1.3 pandas`` (their package imports pandas;
``datasets``, also declared, is never imported). Without it only our side runs.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import math
import os
import subprocess
import sys
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


def make_queries(n: int, seed: int = 0, max_tokens: int = 16) -> list[str]:
    """``n`` queries of one word-level token per word, BOS included at most ``max_tokens`` tokens long."""
    rng = np.random.default_rng(seed)
    lo = max(2, min(6, max_tokens // 6))
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(lo, max_tokens)))) for _ in range(n)]


def build_pair(root: Path, layers: int, hidden: int, queries: list[str]) -> tuple[Path, Path]:
    """Reference = briefly trained tiny Llama; updated = it with blocks >= layers/2 perturbed."""
    heads = max(4, hidden // 64)
    model, tok = build_tiny_causal_lm(queries, hidden=hidden, layers=layers, heads=heads, seed=0)
    batch = tok(queries[:16], return_tensors="pt", padding=True)  # a brief fit (minutes at d=384 on one thread)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3 if hidden <= 64 else 1e-3)
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


def run_cli(ref: Path, upd: Path, queries_file: Path, out: Path, threads: int) -> float:
    """Wall seconds of ``forgetlab probe`` in a fresh process (interpreter and imports included), cold cache."""
    exe = Path(sys.executable).with_name("forgetlab")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "forgetlab"]
    cmd += ["probe", "--reference", str(ref), "--model", str(upd), "--texts", str(queries_file), "--out", str(out)]
    env = os.environ | {"OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
    t0 = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, capture_output=True)
    return time.perf_counter() - t0


def start_up(threads: int) -> float:
    """Wall seconds of ``forgetlab probe --help``: interpreter, imports and the command line, no work."""
    exe = Path(sys.executable).with_name("forgetlab")
    cmd = ([str(exe)] if exe.exists() else [sys.executable, "-m", "forgetlab"]) + ["probe", "--help"]
    t0 = time.perf_counter()
    subprocess.run(cmd, env=os.environ | {"OMP_NUM_THREADS": str(threads)}, check=True, capture_output=True)
    return time.perf_counter() - t0


#: what any command that loads a Hugging Face model must import before its first line of work
IMPORT_FLOOR = "import torch, transformers; transformers.LlamaForCausalLM"


def import_floor(threads: int) -> float:
    """Wall seconds of a fresh interpreter that only imports torch and transformers' model classes: the start-up
    no command line that loads a transformers model can go below (``forgetlab probe --help`` adds our modules,
    typer and rich)."""
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", IMPORT_FLOOR], env=os.environ | {"OMP_NUM_THREADS": str(threads)},
                   check=True, capture_output=True)  # fmt: skip
    return time.perf_counter() - t0


def run_ours(ref: Path, upd: Path, queries_file: Path, out: Path, plots: bool) -> tuple[float, dict, dict]:
    """In-process ``run_probe`` (the command's defaults), cold cache; its wall time, summary and the seconds
    spent in feature capture and in Fisher (the rest is loading, comparison and files)."""
    import forgetlab.probe.run as probe_run

    parts = {"features": 0.0, "fisher": 0.0}
    originals = {"features": probe_run.capture, "fisher": probe_run.fisher_report}

    def timed(part):
        def wrapper(*a, **k):
            t = time.perf_counter()
            try:
                return originals[part](*a, **k)
            finally:
                parts[part] += time.perf_counter() - t

        return wrapper

    probe_run.capture, probe_run.fisher_report = timed("features"), timed("fisher")
    try:
        t0 = time.perf_counter()
        summary = run_probe(ref, [upd], out, texts=queries_file, cache_dir=out / "cache", plots=plots, device="cpu")
        return time.perf_counter() - t0, summary, parts
    finally:
        probe_run.capture, probe_run.fisher_report = originals["features"], originals["fisher"]


def floor_flops(ref: Path, queries: list[str], n_fisher: int) -> dict[str, float]:
    """FLOPs of the passes the probe needs, per model (without padding: one query at a time): the forward
    over every query, and forward + backward over the first ``n_fisher`` (the Fisher examples)."""
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import AutoTokenizer, LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(ref).eval()
    tok = AutoTokenizer.from_pretrained(ref)
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        for q in queries:
            model(**tok(q, return_tensors="pt"))
    forward = fc.get_total_flops()
    with FlopCounterMode(display=False) as fc:
        for q in queries[:n_fisher]:
            enc = tok(q, return_tensors="pt")
            model(**enc, labels=enc["input_ids"]).loss.backward()
            model.zero_grad(set_to_none=True)
    return {"forward": float(forward), "fisher": float(fc.get_total_flops())}


def fmt(v: float) -> str:
    return "nan" if v is None or not math.isfinite(v) else f"{v:8.4f}"


REALISTIC = {"layers": 12, "hidden": 384, "queries": 256, "max_tokens": 96}
SMALL = {"layers": 6, "hidden": 32, "queries": 20, "max_tokens": 16}  # ``--small``: their side takes seconds
QUICK: dict = {}  # ``--quick`` (bench/run_all.py) keeps the realistic workload
INSTALL = "pip install --no-deps representational-analysis==0.1.3 pandas  (or: pip install -e '.[bench]')"
#: Fisher examples of ``forgetlab probe`` (``run_probe``'s ``fisher_examples``)
FISHER_EXAMPLES = 24


def measure(args: argparse.Namespace) -> dict:
    """Both sides on the same pair, the breakdown of ours and the compute floor."""
    from bench_flops import matmul_gflops

    try:
        import representational_toolkit.analysis  # noqa: F401

        theirs_error = None
    except Exception as exc:  # noqa: BLE001 - report any import failure and run ours alone
        theirs_error = f"{type(exc).__name__}: {exc}"

    threads = args.probe_threads
    with tempfile.TemporaryDirectory() as tmp:
        root = args.out or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        queries = make_queries(args.queries, max_tokens=args.max_tokens)
        (root / "queries.txt").write_text("\n".join(queries) + "\n")
        ref, upd = build_pair(root / "models", args.layers, args.hidden, queries)
        torch.set_num_threads(threads)
        longest = max(len(q.split()) for q in queries) + 1
        print(f"LlamaForCausalLM: {args.layers} layers, hidden {args.hidden}, {len(queries)} queries of up to "
              f"{longest} tokens, CPU, {threads} thread(s) on both sides, torch {torch.__version__}", flush=True)
        t_start = min(start_up(threads) for _ in range(2))
        t_import = min(import_floor(threads) for _ in range(2))
        t_cli = run_cli(ref, upd, root / "queries.txt", root / "cli", threads)
        print(f"  ours, forgetlab probe (fresh process, cold cache) {t_cli:.2f} s; start-up alone {t_start:.2f} s",
              flush=True)  # fmt: skip
        t_inproc, summary, parts = run_ours(ref, upd, root / "queries.txt", root / "ours", plots=True)
        flops = floor_flops(ref, queries, FISHER_EXAMPLES)
        torch.set_num_threads(threads)
        peak = max(matmul_gflops([1024, 2048], 5).values())
        theirs, numbers = {}, {}
        if theirs_error is None:
            torch.set_num_threads(threads)
            theirs, numbers = run_theirs(ref, upd, queries, root / "theirs", plots=True)
        torch.set_num_threads(threads)  # the peak: the best of before and after (other load only slows it down)
        peak = max(peak, *matmul_gflops([1024, 2048], 5).values())
        total = 2 * (flops["forward"] + flops["fisher"])  # two models
        floor = total / (peak * 1e9)
        print(f"  compute floor {total / 1e9:.1f} GFLOP / {peak:.1f} GFLOP/s = {floor:.2f} s", flush=True)
    return {"theirs_error": theirs_error, "theirs": theirs, "numbers": numbers, "summary": summary,
            "t_cli": t_cli, "t_start": t_start, "t_import": t_import, "t_inproc": t_inproc, "parts": parts,
            "flops": flops, "peak_gflops": peak, "floor_s": floor, "threads": threads, "longest": longest}  # fmt: skip


def _floor_note(m: dict) -> str:
    f = m["flops"]
    return (f"compute floor {m['floor_s']:.2f} s = 2 models x ({f['forward'] / 1e9:.1f} GFLOP forward over every "
            f"query + {f['fisher'] / 1e9:.1f} GFLOP forward+backward over {FISHER_EXAMPLES} Fisher examples) / "
            f"{m['peak_gflops']:.1f} GFLOP/s fp32 matmul peak")  # fmt: skip


def report(m: dict, args: argparse.Namespace) -> None:
    theirs_error, theirs, numbers, summary = m["theirs_error"], m["theirs"], m["numbers"], m["summary"]
    t_cli, parts = m["t_cli"], m["parts"]
    print("\n== time for CKA + PCA similarity + PCA shift + Fisher over all layers (seconds) ==")
    if theirs_error is None:
        t_theirs = sum(theirs.values())
        split = ", ".join(f"{k} {v:.1f}" for k, v in theirs.items())
        print(f"theirs, in process, as shipped (PDF plots): {t_theirs:8.2f}   ({split})")
        print(f"ours, forgetlab probe, fresh process:       {t_cli:8.2f}   speed-up {t_theirs / t_cli:.1f}x")
    else:
        print(f"ours, forgetlab probe, fresh process:       {t_cli:8.2f}")
    rest = m["t_inproc"] - parts["features"] - parts["fisher"]
    print(f"  of which start-up (forgetlab probe --help) {m['t_start']:.2f}; in process {m['t_inproc']:.2f} = "
          f"features {parts['features']:.2f} + Fisher {parts['fisher']:.2f} + loading, comparison, files, plots "
          f"{rest:.2f}")  # fmt: skip
    print(f"{_floor_note(m)}; ours = {t_cli / m['floor_s']:.1f}x the floor ({m['t_inproc'] / m['floor_s']:.1f}x "
          "in process)")  # fmt: skip
    least = m["t_import"] + m["floor_s"]
    print(f"least possible wall time of a command line here: {least:.2f} s = importing torch and transformers' "
          f"model classes {m['t_import']:.2f} s + the compute floor {m['floor_s']:.2f} s"
          + (f"; the most speed-up any such tool can show against theirs: {sum(theirs.values()) / least:.1f}x"
             if theirs_error is None else ""))  # fmt: skip
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
    figure = (f"CKA + PCA sim + PCA shift + Fisher, all layers, {args.layers} layers d={args.hidden}, "
              f"{args.queries} queries <= {res['longest']} tokens: their time / ours (CLI, start-up included)")
    parts = res["parts"]
    ours = (f"ours: forgetlab probe {res['t_cli']:.1f} s (start-up {res['t_start']:.1f} s; in process "
            f"{res['t_inproc']:.1f} s: features {parts['features']:.1f}, Fisher {parts['fisher']:.1f}); "
            f"{res['t_cli'] / res['floor_s']:.1f}x the {_floor_note(res)}; {res['threads']} thread(s) both sides")
    floor_row = row("probe vs compute floor", "forgetlab probe wall time / FLOPs at the fp32 matmul peak",
                    times(res["t_cli"] / res["floor_s"]), note=_floor_note(res), ours_s=res["t_cli"],
                    floor_s=res["floor_s"], flops=res["flops"], peak_gflops=res["peak_gflops"])  # fmt: skip
    if res["theirs_error"] is not None:
        return [row(name, figure, "not installed", goal=">= 30x", note=f"{res['theirs_error']}; {INSTALL}; {ours}",
                    ours_s=res["t_cli"]), floor_row]  # fmt: skip
    t_theirs = sum(res["theirs"].values())
    split = ", ".join(f"{k} {v:.1f}" for k, v in res["theirs"].items())
    ratio = t_theirs / res["t_cli"]
    least = res["t_import"] + res["floor_s"]
    ours += (f"; the least any command line can take here: {least:.1f} s (importing torch and transformers' model "
             f"classes {res['t_import']:.1f} s + the compute floor), i.e. at most {t_theirs / least:.1f}x")
    return [
        row(name, figure, times(ratio), goal=">= 30x", ok=ratio >= 30,
            note=f"theirs {t_theirs:.1f} s in process as shipped ({split}); {ours}" + (
                "; their CKA is 0 at every layer (it pools the BOS state: see bench_probe.py)"
                if not any(res["numbers"]["cka"]) else ""),
            ratio=ratio, theirs_s=t_theirs, theirs_by_feature=res["theirs"], ours_s=res["t_cli"],
            start_up_s=res["t_start"], import_floor_s=res["t_import"], reachable=t_theirs / least,
            in_process_s=res["t_inproc"], parts=parts),
        floor_row,
    ]  # fmt: skip


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=REALISTIC["layers"])
    ap.add_argument("--hidden", type=int, default=REALISTIC["hidden"])
    ap.add_argument("--queries", type=int, default=REALISTIC["queries"])
    ap.add_argument("--max-tokens", type=int, default=REALISTIC["max_tokens"], help="longest query, BOS included")
    ap.add_argument("--small", action="store_true", help="6 layers, hidden 32, 20 queries of up to 16 tokens")
    ap.add_argument("--probe-threads", type=int, default=os.cpu_count() or 1,
                    help="torch threads of both sides (default: every core)")  # fmt: skip
    ap.add_argument("--out", type=Path, default=None, help="work folder (default: a temporary one)")
    add_common_args(ap, threads=1)
    return ap


def _sizes(argv: list[str] | None) -> list[str]:
    """``--small`` as the sizes it stands for (explicit sizes still win)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--small" not in argv:
        return argv
    given = {a.split("=")[0] for a in argv}
    flags = {f"--{k.replace('_', '-')}": v for k, v in SMALL.items()}
    return argv + [x for flag, v in flags.items() if flag not in given for x in (flag, str(v))]


def rows(quick: bool = True, threads: int = 1) -> list[dict]:
    """Table rows for ``bench/run_all.py`` (the realistic workload either way)."""
    return table_rows(parser, QUICK, measure, to_rows, quick, threads)


def main(argv: list[str] | None = None) -> None:
    run_main(parser, QUICK, measure, report, to_rows, _sizes(argv))


if __name__ == "__main__":
    main()
