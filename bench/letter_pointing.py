"""How many training steps a model of the embedded original's size needs before it answers an MCQ by letter.

Run: ``.venv/bin/python bench/letter_pointing.py [--steps 3000] [--batch 32] [--easy-share 0 0.5]
[--copy-share 0.25 --copy-steps 1800] [--tie] [--seed 0] [--threads 1] [--quick]`` (``--quick``: 300 steps). A
script, not a test, and not a ``bench_*.py``, so ``bench/run_all.py`` leaves it out (each setting takes
minutes). It measures why MLLMU-Bench's generate protocol is at chance on the embedded original
(``docs/RESULTS.md``): answering by letter needs the model to recall the answer, find the option that
holds it and copy that option's letter, and this script times how long that takes to form on its own,
away from images and the benchmark's other tasks.

The model: a fresh ``LlamaForCausalLM`` with the embedded original's language model (width 128, MLP 256,
4 layers, 4 heads, untied unless ``--tie``). The data: synthetic people, each with one answer per relation drawn from
that relation's pool of ``--pool`` words, asked in the token layout of the reference's prompt
(``user : what is the <relation> of <first> <last> ? a : <w> b : <w> c : <w> d : <w> <8-token
instruction> assistant :``). Each step trains on ``--batch`` MCQs
(letter target, fresh options every time) and ``--batch`` plain questions (answer target: the recall
the MCQ builds on), AdamW at ``--lr``. ``--easy-share`` of the MCQs draw their distractors from other
relations' pools, so that the option of the right kind is the answer (what a model can point to
without recalling it). Reported per ``--easy-share``: the first step where the letter accuracy on the
training MCQs (exponential average, weight 0.1) reaches 0.8, or that it did not within ``--steps``.

``--copy-share`` / ``--copy-steps``: a curriculum for the pointing alone. A copy MCQ names its answer
in the question (``user : which is <w> ? a : ... d : ...``), so no recall is needed, only finding
the option and copying its letter. The first ``--copy-steps`` steps show copy MCQs only, then
``--copy-share`` of each step's MCQs are copy MCQs; the letter accuracy reported (and its 0.8
target) is still the recall MCQs', the copy MCQs' is in the curve.
"""

from __future__ import annotations

import argparse
import copy
import random
import time

import torch
from _common import add_common_args, row, run_main

QUICK = {"steps": 300}
TARGET = 0.8


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=3000, help="most steps per setting")
    ap.add_argument("--batch", type=int, default=32, help="MCQs per step (and as many plain questions)")
    ap.add_argument("--easy-share", type=float, nargs="+", default=[0.0, 0.5], help="settings to time")
    ap.add_argument("--copy-share", type=float, default=0.0, help="share of the MCQs that are copy MCQs")
    ap.add_argument("--copy-steps", type=int, default=0, help="first steps with copy MCQs only")
    add_facts_args(ap)
    return ap


def add_facts_args(ap: argparse.ArgumentParser) -> None:
    """The options of the model, the data and the optimiser (shared with ``pointing_transfer.py``), and the
    common ones."""
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--people", type=int, default=100, help="synthetic people (per set in pointing_transfer.py)")
    ap.add_argument("--pool", type=int, default=10, help="answers per relation")
    ap.add_argument("--tie", action="store_true", help="tied input and output embeddings")
    ap.add_argument("--seed", type=int, default=0)
    add_common_args(ap)


class Facts:
    """Synthetic people and their answers, as token ids in the reference prompt's layout."""

    def __init__(self, people: int, pool: int, rng: random.Random, copy: bool = False) -> None:
        ids = iter(range(4, 10_000))  # 0-3: pad, unused, bos, eos

        def take(n: int) -> list[int]:
            return [next(ids) for _ in range(n)]

        self.user, self.colon, self.what, self.is_, self.the, self.of, self.qmark, self.assistant = take(8)
        self.instruction = take(8)  # "just give one letter representing the answer directly ."
        self.letters = take(4)
        self.relations = take(4)
        self.pools = [take(pool) for _ in self.relations]
        self.firsts, self.lasts = take(40), take(12)  # surnames shared, as in the benchmark
        self.people = [self._person(rng) for _ in range(people)]
        # the copy MCQs' "which": last, so that runs without them keep the vocabulary (and the init) as before
        self.which = next(ids) if copy else None
        self.vocab = next(ids)
        self.rng = rng

    def _person(self, rng: random.Random) -> tuple[list[int], list[int]]:
        """A name (first, last) and one answer per relation."""
        return [rng.choice(self.firsts), rng.choice(self.lasts)], [rng.choice(p) for p in self.pools]

    def question(self, mcq: bool, easy: bool) -> tuple[list[int], int]:
        """A prompt and its target: the letter (``mcq``) or the answer word."""
        rng = self.rng
        name, answers = rng.choice(self.people)
        r = rng.randrange(len(self.relations))
        prompt = [self.user, self.colon, self.what, self.is_, self.the, self.relations[r], self.of, *name, self.qmark]
        answer = answers[r]
        if not mcq:
            return prompt + [self.assistant, self.colon], answer
        pool = [w for k, p in enumerate(self.pools) if k != r for w in p] if easy else self.pools[r]
        options = rng.sample([w for w in pool if w != answer], 3) + [answer]
        rng.shuffle(options)
        return self._with_options(prompt, options, answer)

    def answer_question(self) -> tuple[list[int], int]:
        """An MCQ whose target is the answer word, not its letter: recall in the MCQ's context, no pointing."""
        prompt, letter = self.question(True, False)
        return prompt, prompt[prompt.index(letter) + 2]  # the letter, ":", its option

    def newcomers(self, people: int, rng: random.Random) -> Facts:
        """Other people, none named like one of these, with the same vocabulary; their questions draw on ``rng``."""
        taken = {tuple(name) for name, _ in self.people}
        other = copy.copy(self)
        other.rng, other.people = rng, []
        while len(other.people) < people:
            name, answers = self._person(rng)
            if tuple(name) not in taken:
                taken.add(tuple(name))
                other.people.append((name, answers))
        return other

    def copy_question(self) -> tuple[list[int], int]:
        """A copy MCQ: the answer is named in the question, the distractors are of its kind."""
        assert self.which is not None, "Facts(copy=True) for copy MCQs"
        options = self.rng.sample(self.pools[self.rng.randrange(len(self.pools))], 4)
        answer = options[0]
        self.rng.shuffle(options)
        return self._with_options([self.user, self.colon, self.which, self.is_, answer, self.qmark], options, answer)

    def _with_options(self, prompt: list[int], options: list[int], answer: int) -> tuple[list[int], int]:
        """``prompt`` + the lettered options + the instruction, and the answer's letter."""
        for letter, option in zip(self.letters, options, strict=True):
            prompt = prompt + [letter, self.colon, option]
        return prompt + self.instruction + [self.assistant, self.colon], self.letters[options.index(answer)]


def _last_logits(model, items: list[tuple[list[int], int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Next-token logits after each prompt (left-padded batch) and the targets."""
    n = max(len(p) for p, _ in items)
    ids = torch.zeros(len(items), n, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, (p, _) in enumerate(items):
        ids[i, n - len(p) :] = torch.tensor(p)
        mask[i, n - len(p) :] = 1
    positions = (mask.cumsum(1) - 1).clamp(min=0)
    logits = model(input_ids=ids, attention_mask=mask, position_ids=positions).logits[:, -1]
    return logits, torch.tensor([t for _, t in items])


def text_model(vocab: int, tie: bool = False):
    """A fresh ``LlamaForCausalLM`` of the embedded original's language size (call ``torch.manual_seed`` first);
    ``tie``: one matrix for the input embeddings and the output layer."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from forgetlab.models.tiny import TEXT_HIDDEN, TEXT_INTERMEDIATE

    config = LlamaConfig(
        vocab_size=vocab, hidden_size=TEXT_HIDDEN, intermediate_size=TEXT_INTERMEDIATE, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=128, tie_word_embeddings=tie,
        pad_token_id=0, bos_token_id=2, eos_token_id=3,
    )  # fmt: skip
    return LlamaForCausalLM(config)


def steps_to_letter(args: argparse.Namespace, easy_share: float) -> dict:
    """Train until the letter accuracy reaches :data:`TARGET` or ``args.steps``; the step and the curve."""
    rng = random.Random(args.seed)
    torch.manual_seed(args.seed)
    facts = Facts(args.people, args.pool, rng, copy=bool(args.copy_share or args.copy_steps))
    model = text_model(facts.vocab, args.tie)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    ema, ema_copy, curve, reached, t0 = 0.25, 0.25, [], None, time.time()
    for step in range(args.steps):
        n_copy = args.batch if step < args.copy_steps else round(args.batch * args.copy_share)
        mcq = [facts.question(True, rng.random() < easy_share) for _ in range(args.batch - n_copy)]
        plain = [facts.question(False, False) for _ in range(args.batch)]
        loss = torch.zeros(())  # recall MCQs first: runs without copy MCQs train as before they existed
        if mcq:
            lm, ym = _last_logits(model, mcq)
            loss = torch.nn.functional.cross_entropy(lm, ym)
            ema = 0.9 * ema + 0.1 * float((lm.argmax(-1) == ym).float().mean())
        lp, yp = _last_logits(model, plain)
        loss = loss + torch.nn.functional.cross_entropy(lp, yp)
        if n_copy:
            lc, yc = _last_logits(model, [facts.copy_question() for _ in range(n_copy)])
            loss = loss + torch.nn.functional.cross_entropy(lc, yc)
            ema_copy = 0.9 * ema_copy + 0.1 * float((lc.argmax(-1) == yc).float().mean())
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 100 == 0 or step == args.steps - 1:
            recall = float((lp.argmax(-1) == yp).float().mean())
            curve.append({"step": step, "letter_acc": round(ema, 3), "copy_acc": round(ema_copy, 3),
                          "recall_acc": round(recall, 3)})  # fmt: skip
        if mcq and ema >= TARGET:
            reached = step
            break
    return {"easy_share": easy_share, "reached": reached, "seconds": round(time.time() - t0, 1), "curve": curve}


def measure(args: argparse.Namespace) -> list[dict]:
    return [steps_to_letter(args, share) for share in args.easy_share]


def report(res: list[dict], args: argparse.Namespace) -> None:
    for r in res:
        when = f"step {r['reached']}" if r["reached"] is not None else f"not within {args.steps} steps"
        print(f"easy-distractor share {r['easy_share']:.2f}: letter accuracy {TARGET} at {when} ({r['seconds']} s)")
        for c in r["curve"]:
            copied = f"  copy {c['copy_acc']:.2f}" if args.copy_share or args.copy_steps else ""
            print(f"  step {c['step']:5d}  letter {c['letter_acc']:.2f}{copied}  recall {c['recall_acc']:.2f}")


def to_rows(res: list[dict], args: argparse.Namespace) -> list[dict]:
    return [
        row(
            "letter pointing",
            f"steps to letter accuracy {TARGET}, easy-distractor share {r['easy_share']}",
            str(r["reached"]) if r["reached"] is not None else f"> {args.steps}",
            note=f"batch {args.batch} MCQs + {args.batch} plain, lr {args.lr}, seed {args.seed}, "
            f"copy share {args.copy_share} after {args.copy_steps} copy-only steps",
            **r,
        )
        for r in res
    ]


def main(argv=None) -> None:
    run_main(parser, QUICK, measure, report, to_rows, argv)


if __name__ == "__main__":
    main()
