"""Text metrics: hand-computed values plus agreement with rouge-score / NLTK called directly."""

import math

import pytest
from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu
from rouge_score import rouge_scorer

from forgetlab.eval.textmetrics import bleu, cloze_correct, parse_choice, rouge_scores


def test_rouge_hand_computed():
    r = rouge_scores("the cat sat", "the cat ran")
    assert set(r) == {"rouge1", "rouge2", "rougeL"}
    assert r["rouge1"] == pytest.approx(2 / 3)  # 2 shared unigrams of 3 on each side
    assert r["rouge2"] == pytest.approx(1 / 2)  # "the cat" of 2 bigrams each
    assert r["rougeL"] == pytest.approx(2 / 3)  # LCS "the cat"
    # Stemming: "running" and "runs" both stem to "run".
    assert rouge_scores("he runs", "he running")["rouge1"] == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("pred", "ref"),
    [
        ("Alice Smith was born in Paris in 1970.", "She was born in Paris, France, in 1970."),
        ("A completely unrelated sentence", "Nothing in common here at all"),
        ("", "reference only"),
    ],
)
def test_rouge_equals_library(pred, ref):
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    expected = scorer.score(ref, pred)
    got = rouge_scores(pred, ref)
    for key in ("rouge1", "rouge2", "rougeL"):
        assert got[key] == pytest.approx(expected[key].fmeasure)
        assert isinstance(got[key], float)


def test_bleu_hand_computed():
    # p1 = 2/3, p2 = 1/2, p3 = 0/1 -> method1 gives 0.1/1, p4: no 4-grams -> 0.1/1; BP = 1.
    expected = (2 / 3 * 1 / 2 * 0.1 * 0.1) ** 0.25
    assert bleu("the cat ran", "the cat sat") == pytest.approx(expected)
    assert bleu("the cat sat on the mat", "the cat sat on the mat") == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("pred", "ref"),
    [
        ("He was born in London in 1980 and studied law", "He was born in 1980 in London and studied art"),
        ("short", "a much longer reference sentence here"),
        ("Case Matters here", "case matters here"),
    ],
)
def test_bleu_equals_nltk(pred, ref):
    expected = sentence_bleu([ref.split()], pred.split(), smoothing_function=SmoothingFunction().method1)
    got = bleu(pred, ref)
    assert got == pytest.approx(expected)
    assert isinstance(got, float) and math.isfinite(got)


def test_bleu_empty_is_zero():
    assert bleu("", "the reference") == 0.0
    assert bleu("   ", "the reference") == 0.0
    assert bleu("something", "") == 0.0


def test_cloze():
    assert cloze_correct("He lives in  New\nYork City.", "new york")
    assert cloze_correct("PARIS", " paris ")
    assert not cloze_correct("He lives in Newark", "New York")
    assert not cloze_correct("", "x")
    with pytest.raises(ValueError, match="empty"):
        cloze_correct("anything", "  ")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("B", "B"),
        ("b) Paris", "B"),
        ("  (c) because", "C"),
        ("**D**", "D"),
        ("\nA.", "A"),
        ("E", None),
        ("I think it is A", None),
        ("1. B", None),
        ("", None),
        ("...", None),
        ("USER: question text ASSISTANT: C", "C"),
        ("### Answer: (d)", "D"),
    ],
)
def test_parse_choice(text, expected):
    assert parse_choice(text) == expected


def test_parse_choice_custom_letters():
    assert parse_choice("e", letters="ABCDE") == "E"
    assert parse_choice("c", letters="AB") is None
