"""Each method's loss against the formula, computed by hand from the logits of tiny Llamas."""

from __future__ import annotations

import pytest
import torch
from methods_helpers import VOCAB, frozen_copy, make_batch, manual_token_logprobs, tiny_llama

from forgetlab.methods import build_method, saliency_mask
from forgetlab.methods._common import mean_nll
from forgetlab.methods.rlabel import random_labels
from forgetlab.methods.rmu import control_vector


def logits_of(model: torch.nn.Module, batch: dict) -> torch.Tensor:
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


def nll(model: torch.nn.Module, batch: dict, labels: torch.Tensor | None = None) -> torch.Tensor:
    rows = manual_token_logprobs(logits_of(model, batch), batch, labels)
    return -torch.stack([lp for row in rows for lp in row]).mean()


def seq_sums(model: torch.nn.Module, batch: dict) -> torch.Tensor:
    rows = manual_token_logprobs(logits_of(model, batch), batch)
    return torch.stack([torch.stack(r).sum() for r in rows])


def kl(model: torch.nn.Module, ref: torch.nn.Module, batch: dict) -> torch.Tensor:
    logp = torch.log_softmax(logits_of(model, batch).double(), -1)[:, :-1]
    ref_logp = torch.log_softmax(logits_of(ref, batch).double(), -1)[:, :-1]
    per_pos = (ref_logp.exp() * (ref_logp - logp)).sum(-1)
    return per_pos[batch["labels"][:, 1:] != -100].mean()


F, R = make_batch(1), make_batch(2)


def test_ga() -> None:
    model = tiny_llama(0)
    out = build_method("ga").compute_loss(model, {"forget": F, "retain": None})
    assert out.loss.item() == pytest.approx(-nll(model, F).item(), rel=1e-5)
    assert out.logs["loss"] == pytest.approx(out.loss.item())


def test_ga_diff() -> None:
    model = tiny_llama(0)
    out = build_method("ga_diff", retain_weight=0.5).compute_loss(model, {"forget": F, "retain": R})
    expected = -nll(model, F) + 0.5 * nll(model, R)
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert out.logs["retain_loss"] == pytest.approx(nll(model, R).item(), rel=1e-5)


def test_kl_min() -> None:
    model, ref = tiny_llama(0), tiny_llama(1)
    out = build_method("kl_min", retain_weight=2.0).compute_loss(model, {"forget": F, "retain": R}, ref)
    expected = -nll(model, F) + 2.0 * kl(model, ref, R)
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-5)


@pytest.mark.parametrize("beta", [0.1, 0.4])
def test_npo(beta: float) -> None:
    model, ref = tiny_llama(0), tiny_llama(1)
    out = build_method("npo", beta=beta).compute_loss(model, {"forget": F}, ref)
    ratio = seq_sums(model, F) - seq_sums(ref, F)  # log π(y|x) - log π_ref(y|x), sequence sums
    expected = (2 / beta) * torch.log1p(torch.exp(beta * ratio)).mean()
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_npo_at_reference_is_2_log2_over_beta_and_skips_empty_rows() -> None:
    model = tiny_llama(0)
    batch = make_batch(1)
    batch["labels"][1] = -100
    out = build_method("npo", beta=0.1).compute_loss(model, {"forget": batch}, frozen_copy(model))
    assert out.loss.item() == pytest.approx(20 * torch.log(torch.tensor(2.0)).item(), rel=1e-5)


def test_simnpo_paper_sign_convention() -> None:
    model, beta, delta = tiny_llama(0), 4.5, 0.3
    out = build_method("simnpo", beta=beta, delta=delta).compute_loss(model, {"forget": F})
    rows = manual_token_logprobs(logits_of(model, F), F)
    mean_logp = torch.stack([torch.stack(r).mean() for r in rows])  # (1/|y|) log π(y|x)
    expected = -(2 / beta) * torch.log(torch.sigmoid(-beta * mean_logp - delta)).mean()  # arXiv 2410.07163 Eq. 4
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_rlabel_with_pipeline_labels() -> None:
    model = tiny_llama(0)
    batch = dict(F, _rlabel_labels=make_batch(7)["labels"])
    out = build_method("rlabel").compute_loss(model, {"forget": batch})
    assert out.loss.item() == pytest.approx(nll(model, batch, batch["_rlabel_labels"]).item(), rel=1e-5)
    assert out.logs["forget_nll"] == pytest.approx(nll(model, F).item(), rel=1e-5)


def test_rlabel_random_labels_are_seeded_wrong_and_per_example() -> None:
    model = tiny_llama(0)
    labels = random_labels(F, VOCAB, seed=0)
    supervised = F["labels"] != -100
    assert torch.equal(labels == -100, ~supervised)
    assert torch.all(labels[supervised] != F["labels"][supervised])
    assert torch.equal(labels, random_labels(F, VOCAB, seed=0))
    assert not torch.equal(labels, random_labels(F, VOCAB, seed=1))
    first_row = {k: v[:1] for k, v in F.items()}  # same example in another batch: same labels
    assert torch.equal(random_labels(first_row, VOCAB, seed=0)[0], labels[0])
    out = build_method("rlabel", seed=0).compute_loss(model, {"forget": F})
    assert out.loss.item() == pytest.approx(nll(model, F, labels).item(), rel=1e-5)


@pytest.mark.parametrize("positions", ["attention", "labels"])
def test_rmu(positions: str) -> None:
    model, ref = tiny_llama(0), tiny_llama(1)
    c, alpha = 5.0, 3.0
    method = build_method("rmu", layer=1, steering_coeff=c, retain_weight=alpha, positions=positions, seed=4)
    out = method.compute_loss(model, {"forget": F, "retain": R}, ref)

    def block0(m: torch.nn.Module, batch: dict) -> torch.Tensor:  # output of decoder block 0
        seen = []
        handle = m.model.layers[0].register_forward_hook(
            lambda mod, i, o: seen.append(o[0] if isinstance(o, tuple) else o)
        )
        logits_of(m, batch)
        handle.remove()
        return seen[0]

    def where(batch: dict) -> torch.Tensor:
        mask = batch["attention_mask"].bool()
        return mask & (batch["labels"] != -100) if positions == "labels" else mask

    u = control_vector(32, seed=4)
    assert u.norm().item() == pytest.approx(1.0) and torch.all(u >= 0)
    forget = ((block0(model, F) - c * u) ** 2).mean(-1)[where(F)].mean()
    retain = ((block0(model, R) - block0(ref, R)) ** 2).mean(-1)[where(R)].mean()
    assert out.loss.item() == pytest.approx((forget + alpha * retain).item(), rel=1e-5)


def test_salun_loss_is_rlabel_plus_retain_nll() -> None:
    model = tiny_llama(0)
    out = build_method("salun", seed=3).compute_loss(model, {"forget": F, "retain": R})
    expected = nll(model, F, random_labels(F, VOCAB, seed=3)) + nll(model, R)
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-5)


@pytest.mark.parametrize("fraction", [0.1, 0.5])
def test_saliency_mask_is_global_top_fraction(fraction: float) -> None:
    model, batches = tiny_llama(0), [make_batch(1), make_batch(5)]
    masks = saliency_mask(model, batches, fraction=fraction)
    names = [n for n, _ in model.named_parameters()]
    assert list(masks) == names
    assert all(p.grad is None for p in model.parameters())  # .grad untouched
    model.zero_grad()
    sum(mean_nll(model, b) for b in batches).backward()
    scores = torch.cat([p.grad.abs().flatten() for p in model.parameters()])
    k = round(fraction * scores.numel())
    threshold = scores.topk(k).values[-1]
    expected = {n: p.grad.abs() >= threshold for n, p in model.named_parameters()}
    for n in names:
        assert masks[n].dtype == torch.bool and torch.equal(masks[n], expected[n]), n
    assert sum(int(m.sum()) for m in masks.values()) >= k


def test_saliency_mask_subset_and_errors() -> None:
    model = tiny_llama(0)
    masks = saliency_mask(model, [F], fraction=0.5, params=["lm_head.weight"])
    assert list(masks) == ["lm_head.weight"]
    with pytest.raises(ValueError, match="not trainable"):
        saliency_mask(model, [F], params=["nope.weight"])
    with pytest.raises(ValueError, match="fraction"):
        saliency_mask(model, [F], fraction=0.0)
