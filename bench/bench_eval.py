"""MCQ evaluation throughput: the log-likelihood protocol against generate-then-parse-the-letter.

Run: ``.venv/bin/python bench/bench_eval.py [--people 20] [--repeats 3] [--batch-size 32] [--threads 1]
[--quick]`` (``--quick``: best of 2; ``--rows-json PATH``: the table rows for ``bench/run_all.py``).
A script, not a test. The same tiny LLaVA (freshly initialised: throughput does not depend on what
it learnt) answers the same multiple-choice questions, every MCQ of every evaluation set of a
synthetic benchmark of ``--people`` people (image and text questions), through the evaluation
runner (``forgetlab.eval.runner.evaluate`` with ``EvalConfig(protocol=..., generation=False)``):

* ``loglik``: the question without options, each option scored as the answer; one forward pass
  per question when every option is a single token, one sequence per option otherwise;
* ``generate``: the options listed in the prompt, greedy decoding of up to ``mcq_max_new_tokens``
  (the reference's 50) new tokens, the letter parsed; zero-shot, every test rendering (the defaults).
  An untrained model never emits end-of-sequence, so every batch decodes all of them; a trained
  one that stops right after its letter decodes about 2, so this is generate's slow end.

Both protocols alternate, ``--repeats`` times each, after one untimed pass of each (the loglik
pass builds and memoises its per-question option plans; reported as the cold time); the best
repeat is reported.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from _common import add_common_args, row, run_main, table_rows, times

QUICK = {"repeats": 2}


def measure(args: argparse.Namespace) -> dict:
    from bench_unlearn import prepare

    from forgetlab.eval.mcq import option_tokens
    from forgetlab.eval.runner import EvalConfig, evaluate, load_eval_sets
    from forgetlab.models.load import load

    with tempfile.TemporaryDirectory() as tmp:
        data, model_dir = prepare(Path(tmp), args.people)
        model, processor = load(model_dir)
        sets = load_eval_sets(data, 10)
        mcqs = [s for v in sets.values() for s in v if s.task == "classification"]
        n_image = sum(s.image is not None for s in mcqs)

        def run(protocol: str) -> tuple[float, int]:
            config = EvalConfig(protocol=protocol, generation=False, batch_size=args.batch_size)
            t0 = time.perf_counter()
            res = evaluate(model, processor, data, config, eval_sets=sets)
            seconds = time.perf_counter() - t0
            n = sum(v for k, v in res.metrics.items() if k.endswith("_n"))
            return seconds, int(n)

        cold = {p: run(p)[0] for p in ("loglik", "generate")}
        single = sum(option_tokens(processor, s) is not None for s in mcqs)  # memoised by now
        best: dict[str, float] = {"loglik": float("inf"), "generate": float("inf")}
        for _ in range(args.repeats):
            for protocol in best:
                seconds, n = run(protocol)
                assert n == len(mcqs), (n, len(mcqs))
                best[protocol] = min(best[protocol], seconds)
    return {"n": len(mcqs), "n_image": n_image, "single_token": single, "cold": cold, "best": best,
            "max_new_tokens": EvalConfig().mcq_max_new_tokens}  # fmt: skip


def report(res: dict, args: argparse.Namespace) -> None:
    n, best, cold = res["n"], res["best"], res["cold"]
    print(f"{n} MCQs ({res['n_image']} with an image), {args.people} people, batch {args.batch_size}, "
          f"{args.threads} thread(s); loglik single-forward shortcut for {res['single_token']}/{n}")  # fmt: skip
    for p in ("loglik", "generate"):
        print(f"{p:<9} {best[p]:7.2f} s  {n / best[p]:7.1f} questions/s   (first, cold pass {cold[p]:.2f} s)")
    print(f"loglik / generate throughput: {best['generate'] / best['loglik']:.2f}x")


def to_rows(res: dict, args: argparse.Namespace) -> list[dict]:
    n, best, cold = res["n"], res["best"], res["cold"]
    name = "MCQ evaluation"
    setting = f"{n} MCQs ({res['n_image']} with image), batch {args.batch_size}, best of {args.repeats}"
    speedup = best["generate"] / best["loglik"]
    return [
        row(name, "loglik protocol throughput", f"{n / best['loglik']:.1f} q/s", note=(
            f"{setting}; one forward per question for {res['single_token']}/{n} (single-token options); "
            f"cold first pass {n / cold['loglik']:.1f} q/s"),
            questions_per_s=n / best["loglik"], seconds=best["loglik"], cold_seconds=cold["loglik"], n=n),
        row(name, "generate protocol throughput", f"{n / best['generate']:.1f} q/s", note=(
            f"{setting}; greedy, {res['max_new_tokens']} new tokens every batch "
            "(untrained model: no early stop)"),
            questions_per_s=n / best["generate"], seconds=best["generate"], cold_seconds=cold["generate"], n=n),
        row(name, "loglik / generate throughput", times(speedup),
            note="same model, same questions, evaluate(EvalConfig(protocol=...)) in one process", ratio=speedup),
    ]  # fmt: skip


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--people", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=32, help="EvalConfig.batch_size (its default)")
    add_common_args(ap, threads=1)
    return ap


def rows(quick: bool = True, threads: int = 1) -> list[dict]:
    """Table rows for ``bench/run_all.py`` (``quick``: the ``--quick`` sizes)."""
    return table_rows(parser, QUICK, measure, to_rows, quick, threads)


def main(argv: list[str] | None = None) -> None:
    run_main(parser, QUICK, measure, report, to_rows, argv)


if __name__ == "__main__":
    main()
