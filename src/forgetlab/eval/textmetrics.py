"""String-level metrics for generated answers, matching the MLLMU-Bench evaluation.

Definitions: ``docs/reference.md#generation-metrics``, ``#cloze`` and ``#mcq`` (§5).

* ROUGE-1/2/L F1 with Porter stemming (``rouge_score``), scored as ``score(reference, prediction)``.
* Sentence BLEU on whitespace tokens, uniform 4-gram weights, NLTK smoothing method1.
* Cloze: the ground truth occurs in the output (case-insensitive, whitespace-normalised).
* MCQ letter parsing (:func:`parse_choice`, the ``generate`` protocol's ``letter="alnum"``): the first
  alphanumeric character of the answer, upper-cased. The reference's own rule, the first character,
  is :func:`forgetlab.eval.mcq.first_letter`.
"""

from __future__ import annotations

import functools

from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu
from rouge_score import rouge_scorer

ROUGE_KEYS = ("rouge1", "rouge2", "rougeL")


@functools.lru_cache(maxsize=1)
def _scorer() -> rouge_scorer.RougeScorer:
    return rouge_scorer.RougeScorer(list(ROUGE_KEYS), use_stemmer=True)


def rouge_scores(prediction: str, reference: str) -> dict[str, float]:
    """ROUGE-1, ROUGE-2 and ROUGE-L F1 (stemmed) of ``prediction`` against ``reference``.

    Uses rouge-score's default tokeniser (lower-cased, non-alphanumerics dropped), so text with
    no ASCII letters or digits scores 0.
    """
    scores = _scorer().score(reference, prediction)
    return {key: float(scores[key].fmeasure) for key in ROUGE_KEYS}


def bleu(prediction: str, reference: str) -> float:
    """Sentence BLEU (whitespace tokens, weights 0.25×4, smoothing method1), as MLLMU-Bench.

    Returns 0.0 for an empty prediction or reference instead of raising.
    """
    hyp = prediction.split()
    ref = reference.split()
    if not hyp or not ref:
        return 0.0
    return float(sentence_bleu([ref], hyp, smoothing_function=SmoothingFunction().method1))


def _normalise(text: str) -> str:
    return " ".join(text.lower().split())


def cloze_correct(prediction: str, ground_truth: str) -> bool:
    """True when ``ground_truth`` is contained in ``prediction`` (case-insensitive, runs of
    whitespace collapsed to one space, leading/trailing whitespace ignored).

    Raises ValueError for an empty ground truth, which every output would trivially contain.
    """
    target = _normalise(ground_truth)
    if not target:
        raise ValueError("ground_truth is empty or whitespace: cloze correctness is undefined")
    return target in _normalise(prediction)


def parse_choice(
    generated: str,
    letters: str = "ABCD",
    markers: tuple[str, ...] = ("ASSISTANT:", "Answer:"),
) -> str | None:
    """The chosen option letter of an MCQ answer, or None.

    A lenient reading (the ``generate`` protocol's ``letter="alnum"``; MLLMU-Bench's own rule is the first
    character, :func:`forgetlab.eval.mcq.first_letter`): if the decoded text contains one of ``markers`` (tried
    in order) only the text after its first occurrence is used; then the first alphanumeric
    character is taken and upper-cased. It is returned if it is one of ``letters``, else None
    (e.g. "(b) Paris" -> "B", "**C**" -> "C", "I think A" -> None, "" -> None).
    """
    text = generated
    for marker in markers:
        if marker in text:
            text = text.split(marker, 1)[1]
            break
    for ch in text:
        if ch.isalnum():
            upper = ch.upper()
            return upper if upper in letters.upper() else None
    return None
