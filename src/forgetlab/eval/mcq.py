"""Multiple-choice scoring by two protocols, and free generation.

* ``loglik`` (default, fast): the question is asked *without* the options and each
  option's text is scored as the assistant's answer (sum of its token log-probs); the
  best-scoring option is the prediction. When every option is a single token, one
  forward pass of the prompt scores all four at once; otherwise (rotary-position models) the
  prompt runs once and the options' remaining tokens on its key/value cache. The sum favours short options (every
  extra token can only lower it), so a length-normalised prediction is made from the same
  scores too: the sum divided by the option's length in characters, as lm-evaluation-harness's
  ``acc_norm`` does (characters, not tokens, so the choice does not depend on the tokenizer).
  It is reported beside the plain one (``predicted_norm``; the runner's ``*_acc_norm``).
* ``generate`` (MLLMU-Bench's ``eval.py``, ``docs/reference.md#mcq``): the user turn is the
  reference's text string for string (:func:`reference_question`: question, ``X: option`` lines,
  "Just give ONE letter representing the answer directly."), shown through the processor's chat
  template; optionally after worked examples of one person (:func:`worked_example`, few-shot, chosen by
  the runner); greedy decoding of up to 50 new tokens; the prediction is the first character of the
  stripped answer, upper-cased, when it is an option letter (:func:`first_letter`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Literal

import torch
from PIL import Image

from forgetlab.data.collate import (
    MCQ_INSTRUCTION,
    Encoded,
    collate,
    encode,
    encode_cached,
    encode_prompt,
    encode_turns,
    length_order,
    mcq_question,
    option_lines,
    processor_fingerprint,
    render_turns,
)
from forgetlab.data.schema import Sample
from forgetlab.eval.textmetrics import parse_choice
from forgetlab.models.inputs import to_model

Protocol = Literal["loglik", "generate"]
PROTOCOLS: tuple[str, ...] = ("loglik", "generate")

#: MLLMU-Bench's MCQ instruction (``eval.py`` at 0e3098e, lines 361 and 415).
REFERENCE_INSTRUCTION = MCQ_INSTRUCTION  # MLLMU-Bench's: "Just give ONE letter representing the answer directly."
#: MLLMU-Bench's decoding length for MCQs, image and text questions alike (``eval.py`` lines 372, 428: LLaVA).
REFERENCE_MAX_NEW_TOKENS = 50

LetterRule = Literal["first", "alnum"]
#: ``first``: MLLMU-Bench's rule (:func:`first_letter`); ``alnum``: the first alphanumeric character
#: (:func:`forgetlab.eval.textmetrics.parse_choice`), which also reads ``(B)`` or ``**B**``.
LETTER_RULES: tuple[str, ...] = ("first", "alnum")


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
    """Tokens the chat template appends after an answer (end-of-turn markers); memoised per tokenizer and
    question (like :func:`option_tokens`)."""
    key = (processor_fingerprint(processor), sample.question)
    if key not in _SUFFIXES:
        if len(_SUFFIXES) >= _MAX_PLANS:
            _SUFFIXES.clear()
        e = encode(processor, replace(sample, image=None), answer="")
        _SUFFIXES[key] = len(e.input_ids) - e.prompt_len
    return _SUFFIXES[key]


_PLANS: dict[tuple, dict[str, int] | None] = {}
_SUFFIXES: dict[tuple, int] = {}
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
    for idx in _chunks(length_order(examples), bs):
        batch = collate([examples[i] for i in idx], pad_id)
        batch.pop("labels")
        logprobs = torch.log_softmax(model(**to_model(model, batch)).logits.float(), dim=-1)
        for row, i in enumerate(idx):
            start, end = spans[i]
            targets = examples[i].input_ids[start:end].to(logprobs.device)
            lp = logprobs[row, start - 1 : end - 1].gather(-1, targets[:, None]).sum()
            out[i] = lp.item()
    return out


#: model types whose positions are rotary (1-D), so that a left-padded prompt and a continuation on its key/value
#: cache score exactly what the whole sequence scores (relative positions are unchanged by the padding's shift)
PREFIX_CACHE_TYPES = frozenset({"llava", "llama", "mistral", "phi", "phi3", "qwen2"})


def _prefix_cache_ok(model) -> bool:
    config = getattr(model, "config", None)
    return getattr(config, "model_type", None) in PREFIX_CACHE_TYPES


def _continuations(processor, sample: Sample) -> dict[str, torch.Tensor] | None:
    """``{letter: the option's answer tokens}`` when the prompt's tokens are a prefix of every prompt + option
    sequence (the end-of-turn suffix left out), else None (the option is then scored as a whole sequence)."""
    prompt = _encoded(processor, sample)
    suffix = _answer_suffix_len(processor, sample)
    out: dict[str, torch.Tensor] = {}
    for letter, text in sample.options.items():  # type: ignore[union-attr]
        e = _encoded(processor, sample, answer=text)
        end = len(e.input_ids) - suffix
        if e.prompt_len != len(prompt.input_ids) or end <= e.prompt_len:
            return None
        if not torch.equal(e.input_ids[: e.prompt_len], prompt.input_ids):
            return None
        out[letter] = e.input_ids[e.prompt_len : end]
    return out


@torch.no_grad()
def _score_on_prompt_cache(
    model, processor, samples: Sequence[Sample], todo: list[int], results: list, pad_id: int, batch_size: int
) -> list[int]:
    """Score the options of ``samples[i]`` for ``i`` in ``todo`` with one forward pass of each prompt and one of
    all its options on the prompt's key/value cache (instead of one whole sequence per option: about a third
    of the tokens); fills ``results`` and returns the indices left for the whole-sequence path."""
    plans = {i: _continuations(processor, samples[i]) for i in todo}
    left = [i for i in todo if plans[i] is None]
    ready = sorted((i for i in todo if plans[i] is not None),
                   key=lambda i: len(_encoded(processor, samples[i]).input_ids))  # fmt: skip
    for chunk in _chunks(ready, batch_size):
        batch = collate([_encoded(processor, samples[i]) for i in chunk], pad_id, left_pad=True)
        batch.pop("labels")
        out = model(**to_model(model, batch), use_cache=True)
        first = torch.log_softmax(out.logits[:, -1].float(), dim=-1)
        owners = [(row, letter, tokens) for row, i in enumerate(chunk) for letter, tokens in plans[i].items()]
        rows = torch.tensor([row for row, _, _ in owners])
        width = max(len(t) for _, _, t in owners) - 1
        scores = [first[row, tokens[0]].item() for row, _, tokens in owners]
        if width > 0:  # tokens 2.. of each option, right-padded after its prompt's (left-padded) tokens
            ids = torch.full((len(owners), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(owners), width), dtype=torch.long)
            for k, (_, _, tokens) in enumerate(owners):
                ids[k, : len(tokens) - 1], mask[k, : len(tokens) - 1] = tokens[:-1], 1
            cache = out.cache  # transformers 5.x: the key/value cache (``past_key_values`` before)
            cache.reorder_cache(rows.to(out.logits.device))
            attention = torch.cat([batch["attention_mask"][rows], mask], dim=1)
            rest = model(**to_model(model, {"input_ids": ids, "attention_mask": attention}), cache=cache)
            logprobs = torch.log_softmax(rest.logits.float(), dim=-1)
            for k, (_, _, tokens) in enumerate(owners):
                n = len(tokens) - 1
                if n:
                    targets = tokens[1:].to(logprobs.device)
                    scores[k] += logprobs[k, :n].gather(-1, targets[:, None]).sum().item()
        per: dict[int, dict[str, float]] = {}
        for (row, letter, _), v in zip(owners, scores, strict=True):
            per.setdefault(chunk[row], {})[letter] = v
        for i, option_scores in per.items():
            results[i] = _choice(option_scores, samples[i].options)  # type: ignore[arg-type]
    return left


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
    if multi and single_pass and _prefix_cache_ok(model):  # each prompt once, its options on its cached keys
        multi = _score_on_prompt_cache(model, processor, samples, multi, results, pad_id, batch_size)
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
def _generate(
    model, processor, chunks: Sequence[Sequence], encode_fn: Callable[[object], Encoded], max_new_tokens: int
) -> list[str]:
    tok = getattr(processor, "tokenizer", processor)
    pad_id = _pad_id(processor)
    texts: list[str] = []
    for chunk in chunks:
        batch = collate([encode_fn(item) for item in chunk], pad_id, left_pad=True)
        batch.pop("labels")
        out = model.generate(
            **to_model(model, batch), max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad_id
        )
        new = out[:, batch["input_ids"].shape[1] :]
        texts += [t.strip() for t in tok.batch_decode(new, skip_special_tokens=True)]
    return texts


def generate_answers(
    model,
    processor,
    samples: Sequence[Sample],
    *,
    with_options: bool,
    max_new_tokens: int,
    batch_size: int = 32,
) -> list[str]:
    """Greedy answers to each sample's prompt (left-padded batches), special tokens removed.

    ``with_options`` asks in the MCQ format (:func:`forgetlab.data.collate.mcq_question`, the reference's);
    the ``generate`` MCQ protocol (:func:`generate_mcq`) adds the reference's few-shot turns when asked."""
    return _generate(
        model, processor, list(_chunks(list(samples), batch_size)),
        lambda s: encode_prompt(processor, s, with_options=with_options), max_new_tokens,
    )  # fmt: skip


# --------------------------------------------------------------------------- the generate protocol


def reference_question(question: str, options: dict[str, str]) -> str:
    """The user turn of an MCQ under ``generate``: MLLMU-Bench's question, ``X: option`` lines and
    instruction (``eval.py`` lines 113-127 and 359-361), ``{question}\\nA: ...\\nD: ...\\n`` + the instruction."""
    return mcq_question(question, options)  # the same string the original is trained on


def worked_example(sample: Sample) -> str:
    """A few-shot example's user turn (``eval.py`` lines 349-357): ``Question: {question}``, the option lines
    and ``Correct Answer: {letter}``, no instruction and no assistant turn."""
    if not sample.options or sample.correct is None:
        raise ValueError(f"a worked example must be a multiple-choice question: {sample.question!r}")
    return f"Question: {sample.question}\n{option_lines(sample.options)}\nCorrect Answer: {sample.correct}"


def generate_turns(sample: Sample, shots: Sequence[Sample] = ()) -> list[tuple[Image.Image | None, str]]:
    """The user turns ``(image or None, text)`` asking ``sample`` under ``generate``: the worked examples of
    ``shots`` of the same modality (image questions with their images, text questions without: ``eval.py``
    lines 344-357 and 398-411), then the question with its image (:func:`reference_question`)."""
    if not sample.options:
        raise ValueError(f"sample of {sample.person_id!r} is not a multiple-choice question: {sample.question!r}")
    turns = [(s.image, worked_example(s)) for s in shots if s.modality == sample.modality]
    turns.append((sample.image, reference_question(sample.question, sample.options)))
    return turns


def generate_prompt(processor, sample: Sample, shots: Sequence[Sample] = ()) -> str:
    """The prompt text of ``sample`` under ``generate`` through ``processor``'s chat template."""
    return render_turns(processor, [(image is not None, text) for image, text in generate_turns(sample, shots)])


def first_letter(generated: str, letters: str = "ABCD") -> str | None:
    """MLLMU-Bench's letter (``eval.py`` lines 375-376, 431-432): the first character of the stripped answer,
    upper-cased, if it is one of ``letters``, else None.

    The reference decodes prompt and answer together and keeps the text between the prompt's closing
    ``ASSISTANT:`` and the next one; on the answer alone that is the text before its first
    ``ASSISTANT:``. So ``"b) Paris"`` -> ``"B"``, but ``"(B)"``, ``"**B**"``, ``"The answer is B"`` -> None.
    """
    text = generated.split("ASSISTANT:", 1)[0].strip()
    if not text:
        return None
    head = text[0].upper()
    return head if head in letters.upper() else None


def generate_mcq(
    model,
    processor,
    samples: Sequence[Sample],
    *,
    shots: Sequence[Sample] = (),
    max_new_tokens: int = REFERENCE_MAX_NEW_TOKENS,
    letter: LetterRule = "first",
    batch_size: int = 32,
) -> list[Choice]:
    """The ``generate`` protocol: greedy answers to :func:`generate_turns` prompts, read by ``letter``'s rule."""
    if letter not in LETTER_RULES:
        raise ValueError(f"unknown letter rule {letter!r}; choose one of {list(LETTER_RULES)}")
    samples = list(samples)
    texts = _generate(
        model, processor, list(_chunks(samples, batch_size)),
        lambda s: encode_turns(processor, generate_turns(s, shots)), max_new_tokens,
    )  # fmt: skip
    read = first_letter if letter == "first" else parse_choice
    return [Choice(read(g, "".join(s.options or "ABCD")), generated=g) for s, g in zip(samples, texts, strict=True)]


def answer_mcq(
    model,
    processor,
    samples: Sequence[Sample],
    protocol: Protocol = "loglik",
    batch_size: int = 32,
    *,
    shots: Sequence[Sample] = (),
    max_new_tokens: int = REFERENCE_MAX_NEW_TOKENS,
    letter: LetterRule = "first",
) -> list[Choice]:
    """Predicted letters for ``samples`` under ``protocol``; ``shots``, ``max_new_tokens`` and ``letter`` are
    options of ``generate`` (:func:`generate_mcq`)."""
    if protocol == "loglik":
        if shots:
            raise ValueError("few-shot examples are an option of the 'generate' protocol, not of 'loglik'")
        return score_options(model, processor, samples, batch_size)
    if protocol == "generate":
        return generate_mcq(
            model, processor, samples, shots=shots, max_new_tokens=max_new_tokens, letter=letter,
            batch_size=batch_size,
        )  # fmt: skip
    raise ValueError(f"unknown MCQ protocol {protocol!r}; choose one of {list(PROTOCOLS)}")


ProgressFn = Callable[[int], None]
