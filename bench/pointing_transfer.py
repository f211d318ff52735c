"""Does answering by letter, once learnt on some people, carry over to people the model learns afterwards?

Run: ``.venv/bin/python bench/pointing_transfer.py [--pretrain-steps 6000] [--steps 1500] [--seed 0]
[--threads 1] [--quick]`` (``--quick``: 300 + 100 steps). A script, not a test, and not a ``bench_*.py``
(about 15 minutes on one thread at its defaults). It asks whether a base model could bring the skill to
the embedded original the way a pretrained LLM brings it to LLaVA (``docs/RESULTS.md``).

The model and the data are ``letter_pointing.py``'s: a fresh ``LlamaForCausalLM`` of the embedded
original's language size and synthetic people asked in the token layout of MLLMU-Bench's MCQ prompt.

1. **Pretraining.** ``--pretrain-steps`` steps on the people of set A, each step ``--batch`` MCQs (letter
   target, fresh options) and ``--batch`` plain questions (answer target), AdamW at ``--lr``.
2. **Newcomers.** From that model, ``--steps`` steps learning the people of set B (same vocabulary, other
   names and answers) from plain questions, while ``--batch``/4 of set A's MCQs per step keep the letter
   skill in use. Two variants: B's plain questions alone, and B's plain questions plus ``--batch``/2 of
   B's MCQs whose target is the answer word (recall in the MCQ's context, no letter).

Every ``--every`` steps, on 256 fresh questions of each set: the letter accuracy (the argmax over the
vocabulary is the right letter), the letter accuracy among the four letters only (pointing whatever the
output format), the plain recall and the recall in the MCQ's context (the answer word's argmax after the
MCQ prompt). B's MCQs are never trained with a letter target, so B's letter
accuracy measures the transfer.
"""

from __future__ import annotations

import argparse
import copy
import random
import time

import torch
from _common import row, run_main
from letter_pointing import Facts, _last_logits, add_facts_args, text_model

QUICK = {"pretrain_steps": 300, "steps": 100, "every": 50}
VARIANTS = ("plain", "plain + answer-target MCQs")


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pretrain-steps", type=int, default=6000, help="steps on set A")
    ap.add_argument("--steps", type=int, default=1500, help="steps on set B, per variant")
    ap.add_argument("--every", type=int, default=250, help="evaluate every this many steps")
    ap.add_argument("--batch", type=int, default=32)
    add_facts_args(ap)
    return ap


def _ce(model, items: list[tuple[list[int], int]]) -> torch.Tensor:
    logits, targets = _last_logits(model, items)
    return torch.nn.functional.cross_entropy(logits, targets)


@torch.no_grad()
def accuracies(model, facts: Facts, n: int = 256) -> dict[str, float]:
    """Letter accuracy (over the vocabulary and among the letters), plain recall and recall in the MCQ's
    context (the answer word as the next token after an MCQ prompt) on fresh questions."""
    model.eval()
    lm, ym = _last_logits(model, [facts.question(True, False) for _ in range(n)])
    lp, yp = _last_logits(model, [facts.question(False, False) for _ in range(n)])
    la, ya = _last_logits(model, [facts.answer_question() for _ in range(n)])
    model.train()
    letters = torch.tensor(facts.letters)
    among = letters[lm[:, letters].argmax(-1)]
    return {
        "letter": round(float((lm.argmax(-1) == ym).float().mean()), 3),
        "letter_among_letters": round(float((among == ym).float().mean()), 3),
        "recall": round(float((lp.argmax(-1) == yp).float().mean()), 3),
        "recall_in_mcq": round(float((la.argmax(-1) == ya).float().mean()), 3),
    }


def measure(args: argparse.Namespace) -> dict:
    torch.manual_seed(args.seed)
    set_a = Facts(args.people, args.pool, random.Random(args.seed))
    set_b = set_a.newcomers(args.people, random.Random(args.seed + 1))
    model = text_model(set_a.vocab, args.tie)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    t0, pretrain = time.time(), []
    for step in range(args.pretrain_steps):
        loss = _ce(model, [set_a.question(True, False) for _ in range(args.batch)])
        loss = loss + _ce(model, [set_a.question(False, False) for _ in range(args.batch)])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if (step + 1) % args.every == 0 or step + 1 == args.pretrain_steps:
            pretrain.append({"step": step + 1, "A": accuracies(model, set_a), "B": accuracies(model, set_b)})
    res = {"pretrain": pretrain, "pretrain_seconds": round(time.time() - t0, 1), "variants": {}}
    base = copy.deepcopy(model.state_dict())
    for variant in VARIANTS:
        model.load_state_dict(base)
        opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
        curve, t0 = [], time.time()
        for step in range(args.steps):
            loss = _ce(model, [set_b.question(False, False) for _ in range(args.batch)])
            loss = loss + _ce(model, [set_a.question(True, False) for _ in range(args.batch // 4)]) / 4
            if variant != "plain":
                loss = loss + _ce(model, [set_b.answer_question() for _ in range(args.batch // 2)]) / 2
            opt.zero_grad()
            loss.backward()
            opt.step()
            if (step + 1) % args.every == 0 or step + 1 == args.steps:
                curve.append({"step": step + 1, "A": accuracies(model, set_a), "B": accuracies(model, set_b)})
        res["variants"][variant] = {"curve": curve, "seconds": round(time.time() - t0, 1)}
    return res


def _line(point: dict) -> str:
    return f"  step {point['step']:5d}  A: {_accs(point['A'])}  |  B: {_accs(point['B'])}"


def _accs(acc: dict) -> str:
    return (f"letter {acc['letter']:.2f} ({acc['letter_among_letters']:.2f} among letters), recall "
            f"{acc['recall']:.2f} (in the MCQ {acc['recall_in_mcq']:.2f})")  # fmt: skip


def report(res: dict, args: argparse.Namespace) -> None:
    print(f"pretraining on set A ({args.pretrain_steps} steps, {res['pretrain_seconds']} s):")
    for point in res["pretrain"]:
        print(_line(point))
    for variant, r in res["variants"].items():
        print(f"then learning set B, {variant} (with A's MCQs replayed; {args.steps} steps, {r['seconds']} s):")
        for point in r["curve"]:
            print(_line(point))


def to_rows(res: dict, args: argparse.Namespace) -> list[dict]:
    last_pre = res["pretrain"][-1]
    return [
        row(
            "pointing transfer",
            f"B's letter accuracy among letters after learning B ({variant}), A's letter after pretraining "
            f"{last_pre['A']['letter']}",
            f"{r['curve'][-1]['B']['letter_among_letters']:.2f}",
            note=f"B recall {r['curve'][-1]['B']['recall']}, {args.pretrain_steps} + {args.steps} steps, "
            f"batch {args.batch}, lr {args.lr}, seed {args.seed}",
            variant=variant,
            **r,
        )
        for variant, r in res["variants"].items()
    ]


def main(argv=None) -> None:
    run_main(parser, QUICK, measure, report, to_rows, argv)


if __name__ == "__main__":
    main()
