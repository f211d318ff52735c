"""Multiple-choice scoring by two protocols, and free generation.

* ``loglik`` (default, fast): the question is asked *without* the options and each
  option's text is scored as the assistant's answer (sum of its token log-probs); the
  best-scoring option is the prediction. When every option is a single token, one
  forward pass of the prompt scores all four at once. The sum favours short options (every
  extra token can only lower it), so a length-normalised prediction is made from the same
  scores too: the sum divided by the option's length in characters, as lm-evaluation-harness's
  ``acc_norm`` does (characters, not tokens, so the choice does not depend on the tokenizer).
  It is reported beside the plain one (``predicted_norm``; the runner's ``*_acc_norm``).
* ``generate`` (the MLLMU-Bench reference): the prompt lists the options and asks for
  the letter; greedy decoding; the first alphanumeric character is the prediction.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Literal

import torch

from forgetlab.data.collate import Encoded, collate, encode, encode_cached, encode_prompt, processor_fingerprint
from forgetlab.data.schema import Sample
from forgetlab.eval.textmetrics import parse_choice
from forgetlab.models.inputs import to_model

Protocol = Literal["loglik", "generate"]
PROTOCOLS: tuple[str, ...] = ("loglik", "generate")


@dataclass
class Choice:
    """A model's answer to one MCQ: predicted letter and, for loglik, each option's score.

    ``scores`` are summed log-probs; ``predicted_norm`` (loglik only) is the option with the best
    score per character of its text (:func:`normalised_choice`).
    """

    predicted: str | None
    scores: dict[str, float] | None = None
    generated: str | None = None
    predicted_norm: str | None = None


def normalised_choice(scores: dict[str, float], options: dict[str, str]) -> str:
    """The option whose summed log-prob per character (``score / len(text)``, an empty text counting 1) is highest."""
    return max(scores, key=lambda k: scores[k] / max(1, len(options[k])))


def _choice(scores: dict[str, float], options: dict[str, str]) -> Choice:
    best = max(scores, key=lambda k: scores[k])
    return Choice(best, scores, predicted_norm=normalised_choice(scores, options))


def _pad_id(processor) -> int:
    tok = getattr(processor, "tokenizer", processor)
    return tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id


def _chunks(items: Sequence, size: int):
    for k in range(0, len(items), size):
        yield items[k : k + size]


def _answer_suffix_len(processor, sample: Sample) -> int:
    """Tokens the chat template appends after an answer (end-of-turn markers)."""
    e = encode(processor, replace(sample, image=None), answer="")
    return len(e.input_ids) - e.prompt_len


_PLANS: dict[tuple, dict[str, int] | None] = {}
_MAX_PLANS = 200_000


def _encoded(processor, sample: Sample, answer: str | None = None) -> Encoded:
    """The prompt (``answer=None``) or prompt + ``answer`` of ``sample``, memoised (every model of a
    sweep is asked the same questions, and encoding is a third of an evaluation)."""
    return encode_cached(processor, sample, answer, prompt_only=answer is None)


def option_tokens(processor, sample: Sample) -> dict[str, int] | None:
    """``{letter: token id}`` when every option is one distinct token right after the prompt, else None.

    Decided on the text alone (the image only adds placeholder tokens before the answer, which
    cannot change how the answer is tokenised), and memoised per tokenizer fingerprint and
    question: the plan is the same for every model evaluated with that tokenizer.
    """
    assert sample.options is not None
    key = (processor_fingerprint(processor), sample.question, tuple(sample.options.items()))
    if key in _PLANS:
        return _PLANS[key]
    text_only = replace(sample, image=None)
    suffix = _answer_suffix_len(processor, text_only)
    prompt = encode_prompt(processor, text_only)
    token_of: dict[str, int] | None = {}
    for letter, text in sample.options.items():
        e = encode(processor, text_only, answer=text)
        n_answer = len(e.input_ids) - e.prompt_len - suffix
        if n_answer != 1 or not torch.equal(e.input_ids[: e.prompt_len], prompt.input_ids):
            token_of = None
            break
        token_of[letter] = int(e.input_ids[e.prompt_len])
    if token_of is not None and len(set(token_of.values())) != len(token_of):
        token_of = None
    if len(_PLANS) >= _MAX_PLANS:
        _PLANS.clear()
    _PLANS[key] = token_of
    return token_of


@torch.no_grad()
def _sequence_scores(model, examples: list[Encoded], spans: list[tuple[int, int]], pad_id: int, bs: int) -> list[float]:
    """Sum of log p(token) over ``spans[i] = (start, end)`` token positions of each example."""
    out: list[float] = [0.0] * len(examples)
    by_length = sorted(range(len(examples)), key=lambda i: len(examples[i].input_ids))  # little padding
    for idx in _chunks(by_length, bs):
        batch = collate([examples[i] for i in idx], pad_id)
        batch.pop("labels")
        logprobs = torch.log_softmax(model(**to_model(model, batch)).logits.float(), dim=-1)
        for row, i in enumerate(idx):
            start, end = spans[i]
            targets = examples[i].input_ids[start:end].to(logprobs.device)
            lp = logprobs[row, start - 1 : end - 1].gather(-1, targets[:, None]).sum()
            out[i] = lp.item()
    return out


def score_options(
    model, processor, samples: Sequence[Sample], batch_size: int = 32, single_pass: bool = True
) -> list[Choice]:
    """The ``loglik`` protocol for a list of MCQ samples.

    ``single_pass=False`` forces the general path (one sequence per option), which the
    tests use to check that the one-forward shortcut gives the same scores.
    """
    pad_id = _pad_id(processor)
    results: list[Choice | None] = [None] * len(samples)
    # fast path: all options single tokens and the prompt is a prefix of every answer sequence
    single: list[tuple[int, Encoded, dict[str, int]]] = []
    multi: list[int] = []
    for i, s in enumerate(samples):
        if not s.options:
            raise ValueError(f"sample of {s.person_id!r} is not a multiple-choice question: {s.question!r}")
        token_of = option_tokens(processor, s) if single_pass else None
        if token_of is not None:
            single.append((i, _encoded(processor, s), token_of))
        else:
            multi.append(i)
    single.sort(key=lambda item: len(item[1].input_ids))  # batches of similar length: little padding
    with torch.no_grad():
        for chunk in _chunks(single, batch_size):
            batch = collate([p for _, p, _ in chunk], pad_id, left_pad=True)
            batch.pop("labels")
            last = torch.log_softmax(model(**to_model(model, batch)).logits[:, -1].float(), dim=-1)
            for row, (i, _, token_of) in enumerate(chunk):
                scores = {k: last[row, t].item() for k, t in token_of.items()}
                results[i] = _choice(scores, samples[i].options)  # type: ignore[arg-type]
    if multi:
        examples, spans, owners = [], [], []
        for i in multi:
            s = samples[i]
            suffix = _answer_suffix_len(processor, s)
            for letter, text in s.options.items():
                e = _encoded(processor, s, answer=text)
                examples.append(e)
                spans.append((e.prompt_len, len(e.input_ids) - suffix))
                owners.append((i, letter))
        flat = _sequence_scores(model, examples, spans, pad_id, batch_size)
        per: dict[int, dict[str, float]] = {}
        for (i, letter), v in zip(owners, flat, strict=True):
            per.setdefault(i, {})[letter] = v
        for i, scores in per.items():
            results[i] = _choice(scores, samples[i].options)  # type: ignore[arg-type]
    return results  # type: ignore[return-value]


@torch.no_grad()
def generate_answers(
    model,
    processor,
    samples: Sequence[Sample],
    *,
    with_options: bool,
    max_new_tokens: int,
    batch_size: int = 32,
) -> list[str]:
    """Greedy answers to each sample's prompt (left-padded batches), special tokens removed."""
    tok = getattr(processor, "tokenizer", processor)
    pad_id = _pad_id(processor)
    texts: list[str] = []
    for chunk in _chunks(list(samples), batch_size):
        prompts = [encode_prompt(processor, s, with_options=with_options) for s in chunk]
        batch = collate(prompts, pad_id, left_pad=True)
        batch.pop("labels")
        out = model.generate(
            **to_model(model, batch), max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad_id
        )
        new = out[:, batch["input_ids"].shape[1] :]
        texts += [t.strip() for t in tok.batch_decode(new, skip_special_tokens=True)]
    return texts


def answer_mcq(
    model, processor, samples: Sequence[Sample], protocol: Protocol = "loglik", batch_size: int = 32
) -> list[Choice]:
    """Predicted letters for ``samples`` under ``protocol``."""
    if protocol == "loglik":
        return score_options(model, processor, samples, batch_size)
    if protocol == "generate":
        gen = generate_answers(model, processor, samples, with_options=True, max_new_tokens=5, batch_size=batch_size)
        return [
            Choice(parse_choice(g, "".join(s.options or "ABCD")), generated=g)
            for s, g in zip(samples, gen, strict=True)
        ]
    raise ValueError(f"unknown MCQ protocol {protocol!r}; choose one of {list(PROTOCOLS)}")


ProgressFn = Callable[[int], None]
