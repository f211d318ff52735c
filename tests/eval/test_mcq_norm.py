"""Length-normalised loglik MCQ scores (``acc_norm``) beside the summed ones (``acc``).

A model whose next-token distribution is the same fixed one at every position makes the scores
computable by hand: an option's summed log-prob is the sum of its tokens' fixed log-probs, and the
normalised score divides that by the option's length in characters (lm-evaluation-harness's acc_norm).
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from forgetlab.data.schema import Sample
from forgetlab.eval.mcq import normalised_choice, option_tokens, score_options
from forgetlab.eval.runner import EvalConfig, evaluate
from forgetlab.models.tiny import build_tiny_model

WORDS = "where was ann lee born ? rome constantinople new york city oslo lima what is her job"


class FixedLogits(nn.Module):
    """Logits ``bias`` at every position, whatever the input (a context-free language model)."""

    def __init__(self, bias: torch.Tensor) -> None:
        super().__init__()
        self.bias = nn.Parameter(bias)

    def forward(self, input_ids: torch.Tensor, **_) -> SimpleNamespace:
        return SimpleNamespace(logits=self.bias.expand(*input_ids.shape, -1))


@pytest.fixture(scope="module")
def processor():
    return build_tiny_model("llava", [WORDS], image_size=16)[1]


def ids(processor, words: str) -> list[int]:
    return processor.tokenizer.convert_tokens_to_ids(words.split())


def question(options: list[str], correct: str = "B") -> Sample:
    opts = dict(zip("ABCD", options, strict=False))
    return Sample("where was ann lee born ?", opts[correct], "qa", "classification", "P1", "World_Set",
                  options=opts, correct=correct)  # fmt: skip


def test_the_sum_prefers_the_short_option_the_normalised_score_the_long_one(processor) -> None:
    """Uniform next-token distribution: each token costs log V; "rome" (1 token, 4 characters)
    has the best sum, "new york city" (3 tokens, 13 characters) the best score per character."""
    vocab = len(processor.tokenizer)
    model = FixedLogits(torch.zeros(vocab))
    sample = question(["rome", "new york city"])
    assert option_tokens(processor, sample) is None  # a multi-token option: the per-option path
    (choice,) = score_options(model, processor, [sample])
    log_v = torch.log(torch.tensor(float(vocab))).item()
    assert choice.scores == pytest.approx({"A": -log_v, "B": -3 * log_v}, rel=1e-5)
    assert choice.predicted == "A" and choice.predicted_norm == "B"  # -log V / 4 < -3 log V / 13
    assert normalised_choice(choice.scores, sample.options) == "B"


def test_the_one_pass_shortcut_normalises_the_same_way(processor) -> None:
    """Single-token options, "rome" likelier than "constantinople": the sum picks rome, but
    constantinople's log-prob per character (14 of them) is better."""
    bias = torch.zeros(len(processor.tokenizer))
    rome, constantinople = ids(processor, "rome constantinople")
    bias[rome], bias[constantinople] = 5.0, 4.0
    logp = torch.log_softmax(bias, -1)
    assert logp[rome] > logp[constantinople] and logp[constantinople] / 14 > logp[rome] / 4
    model = FixedLogits(bias)
    sample = question(["rome", "constantinople", "oslo", "lima"])
    assert option_tokens(processor, sample) is not None
    fast = score_options(model, processor, [sample])[0]
    slow = score_options(model, processor, [sample], single_pass=False)[0]
    for c in (fast, slow):
        assert c.scores["A"] == pytest.approx(logp[rome].item(), abs=1e-5)
        assert (c.predicted, c.predicted_norm) == ("A", "B")


def test_the_runner_reports_acc_norm_beside_an_unchanged_acc(processor, tmp_path) -> None:
    model = FixedLogits(torch.zeros(len(processor.tokenizer)))
    samples = [question(["rome", "new york city"], correct="A"), question(["rome", "new york city"], correct="B")]
    samples[1].question = "what is her job ?"
    result = evaluate(model, processor, tmp_path, EvalConfig(generation=False), eval_sets={"world": samples})
    assert result.metrics["world_qa_acc"] == 0.5 and result.metrics["world_qa_acc_norm"] == 0.5
    rows = {r["correct"]: r for r in result.rows}
    assert (rows["A"]["predicted"], rows["A"]["hit"], rows["A"]["predicted_norm"], rows["A"]["hit_norm"]) == (
        "A", True, "B", False,
    )  # fmt: skip
    only_b = evaluate(model, processor, tmp_path, EvalConfig(generation=False), eval_sets={"world": samples[1:]})
    assert only_b.metrics["world_qa_acc"] == 0.0 and only_b.metrics["world_qa_acc_norm"] == 1.0
