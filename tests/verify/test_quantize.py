"""The quantization attack (forgetlab.verify.quantize): RTN and NF4 fake quantization checked against
hand-computed values, quantize_model on real transformers models, recovered_share, quantization_attack."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from forgetlab.models.tiny import build_tiny_model, save_model
from forgetlab.verify.quantize import (
    NF4_CODE,
    SCHEMES,
    quantization_attack,
    quantize_model,
    quantize_nf4,
    quantize_rtn,
    recovered_share,
)

PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _llama(tie: bool = True) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
        vocab_size=100, tie_word_embeddings=tie,
    )  # fmt: skip
    return LlamaForCausalLM(config)


def _group_scales(w: torch.Tensor, bits: int, group_size: int) -> torch.Tensor:
    """(max − min) / (2^bits − 1) of each element's group, written out with slices (no padding)."""
    scales = torch.empty_like(w)
    for start in range(0, w.shape[1], group_size):
        g = w[:, start : start + group_size]
        scales[:, start : start + group_size] = ((g.amax(1) - g.amin(1)) / (2**bits - 1)).unsqueeze(1)
    return scales


# --------------------------------------------------------------------------- RTN


def test_rtn_two_bits_by_hand() -> None:
    w = torch.tensor([[0.0, 0.1, 0.2, 0.7], [-0.3, -0.1, 0.2, 0.6], [-0.1, 0.0, 0.4, 0.8]])
    # row 0: scale = 0.7/3 = 0.23333, zero = round(0) = 0, levels {0, .23333, .46667, .7};
    #   w/scale = 0, 0.4286, 0.8571, 3 -> q = 0, 0, 1, 3 -> 0, 0, 0.23333, 0.7 (0.1 is nearer 0 than .2333)
    # row 1: scale = 0.9/3 = 0.3, zero = round(0.3/0.3) = 1, levels {-0.3, 0, 0.3, 0.6};
    #   w/scale = -1, -0.333, 0.667, 2 -> +1 -> q = 0, 1, 2, 3 -> -0.3, 0, 0.3, 0.6
    # row 2: scale = 0.9/3 = 0.3, zero = round(0.1/0.3 = 0.333) = 0, levels {0, 0.3, 0.6, 0.9};
    #   w/scale = -0.333, 0, 1.333, 2.667 -> q = 0, 0, 1, 3 -> 0, 0, 0.3, 0.9 (the rounded zero point
    #   shifts the grid: -0.1 and 0.8 are each moved by 0.1 <= scale/2)
    expected = torch.tensor([[0.0, 0.0, 0.2333333, 0.7], [-0.3, 0.0, 0.3, 0.6], [0.0, 0.0, 0.3, 0.9]])
    out = quantize_rtn(w, bits=2, group_size=4)
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)


def test_rtn_eight_bits_error_within_half_a_step_and_four_bits_worse() -> None:
    torch.manual_seed(1)
    w = torch.randn(16, 200)  # 200 = 3 * 64 + 8: the last group of each row has 8 elements
    err = {}
    for bits in (8, 4):
        out = quantize_rtn(w, bits=bits, group_size=64)
        diff = (out - w).abs()
        bound = _group_scales(w, bits, 64) / 2
        assert (diff <= bound + 1e-6).all(), (bits, (diff - bound).max().item())
        err[bits] = diff.mean().item()
    # uniform rounding error: mean ≈ scale/4, and the 4-bit step is 255/15 = 17 times the 8-bit one
    assert 0 < err[8] < 0.01
    assert err[4] > 10 * err[8]


def test_rtn_distinct_levels_per_group() -> None:
    torch.manual_seed(2)
    w = torch.randn(4, 128)
    for bits in (2, 3, 4):
        out = quantize_rtn(w, bits=bits, group_size=64)
        for row in out:
            for group in row.split(64):
                assert 2 <= group.unique().numel() <= 2**bits


def test_rtn_constant_group_returned_exactly() -> None:
    torch.manual_seed(3)
    w = torch.cat([torch.full((2, 64), 0.37), torch.randn(2, 64)], dim=1)
    for bits in (2, 4, 8):
        out = quantize_rtn(w, bits=bits, group_size=64)
        assert torch.equal(out[:, :64], w[:, :64])
        assert not torch.equal(out[:, 64:], w[:, 64:])
    bf16 = torch.full((3, 10), -1.25, dtype=torch.bfloat16)
    assert torch.equal(quantize_rtn(bf16, bits=4, group_size=4), bf16)


def test_rtn_group_not_dividing_in_features_is_a_smaller_last_group() -> None:
    torch.manual_seed(4)
    w = torch.randn(3, 10)
    out = quantize_rtn(w, bits=3, group_size=4)
    assert out.shape == (3, 10) and out.dtype == torch.float32
    # groups are columns 0-3, 4-7 and 8-9 (a 2-element group with its own min and max, not padded with zeros)
    parts = [quantize_rtn(w[:, a:b].contiguous(), bits=3, group_size=b - a) for a, b in ((0, 4), (4, 8), (8, 10))]
    torch.testing.assert_close(out, torch.cat(parts, dim=1), atol=1e-7, rtol=0)
    last = w[:, 8:]
    step = (last.amax(1, keepdim=True) - last.amin(1, keepdim=True)) / 7
    assert ((out[:, 8:] - last).abs() <= step / 2 + 1e-6).all()
    padded = quantize_rtn(torch.cat([w, torch.zeros(3, 2)], dim=1), bits=3, group_size=4)[:, :10]
    assert not torch.equal(out, padded)  # zero padding would widen the last group's range


def test_rtn_keeps_bf16_shape_and_dtype() -> None:
    torch.manual_seed(5)
    w = torch.randn(5, 100).to(torch.bfloat16)
    out = quantize_rtn(w, bits=4, group_size=64)
    assert out.shape == w.shape and out.dtype == torch.bfloat16
    reference = quantize_rtn(w.float(), bits=4, group_size=64).to(torch.bfloat16)
    assert torch.equal(out, reference)
    bound = _group_scales(w.float(), 4, 64) / 2
    # + bf16's own rounding of the dequantized value (8 bits of mantissa: relative 2^-8)
    assert ((out.float() - w.float()).abs() <= bound + w.float().abs() * 2**-8 + 1e-6).all()


def test_rtn_refuses_bad_bits_and_group_size() -> None:
    w = torch.randn(2, 8)
    for bits in (1, 9):
        with pytest.raises(ValueError, match="bits"):
            quantize_rtn(w, bits=bits)
    with pytest.raises(ValueError, match="group_size"):
        quantize_rtn(w, bits=4, group_size=0)


# --------------------------------------------------------------------------- NF4


def test_nf4_code_table() -> None:
    assert len(NF4_CODE) == 16
    assert list(NF4_CODE) == sorted(NF4_CODE) and len(set(NF4_CODE)) == 16
    assert (NF4_CODE[0], NF4_CODE[7], NF4_CODE[-1]) == (-1.0, 0.0, 1.0)


def test_nf4_by_hand() -> None:
    w = torch.tensor([[1.0, 0.5, -0.3, 0.0], [-2.0, 1.0, 0.2, 0.0]])
    # block 1: absmax 1: 1 -> 1; 0.5 -> nearest 0.44070983 (|.059| vs |.063| to 0.5626170);
    #   -0.3 -> -0.28444138 (|.016| vs |.095| to -0.3949175); 0 -> 0
    # block 2: absmax 2: -2 -> -1 * 2 = -2 exactly; 1/2 = 0.5 -> 0.44070983 * 2 = 0.88141966;
    #   0.2/2 = 0.1 -> 0.07958030 (|.020| vs |.061| to 0.1609302) * 2 = 0.15916060
    expected = torch.tensor(
        [[1.0, 0.44070982933044434, -0.28444138169288635, 0.0], [-2.0, 0.8814196586608887, 0.1591606006026268, 0.0]]
    )
    out = quantize_nf4(w, group_size=4)
    torch.testing.assert_close(out, expected, atol=1e-7, rtol=0)
    assert out[0, 0].item() == 1.0 and out[1, 0].item() == -2.0  # the absmax element exactly


def test_nf4_blocks_are_flattened_and_last_block_may_be_short() -> None:
    # flattened blocks of 4: [1, 0, 0, 0], [0.5, 0, 4, 0] (across the row boundary), [0, 0, 0, 0]
    w = torch.tensor([[1.0, 0.0, 0.0, 0.0, 0.5, 0.0], [4.0, 0.0, 0.0, 0.0, 0.0, 0.0]])
    out = quantize_nf4(w, group_size=4)
    # 0.5 / 4 = 0.125 -> nearest 0.16093020 (|.036| vs |.045| to 0.0795803) * 4 = 0.64372081; per row it would stay 0.5
    assert out[0, 4].item() == pytest.approx(0.643720805644989, abs=1e-7)
    assert out[1, 0].item() == 4.0 and out[0, 0].item() == 1.0
    assert not out.isnan().any() and out[1, 2:].abs().sum().item() == 0.0  # an all-zero block stays zero
    # 5 elements, blocks of 4: the last block is [-0.3] alone, its own absmax
    short = quantize_nf4(torch.tensor([[0.9, 0.1, 0.2, -0.4, -0.3]]), group_size=4)
    assert short[0, 4].item() == pytest.approx(-0.3, abs=1e-7)
    assert short[0, 0].item() == pytest.approx(0.9, abs=1e-7)


def test_nf4_keeps_bf16_and_uses_at_most_16_values_per_block() -> None:
    torch.manual_seed(6)
    w = torch.randn(8, 128).to(torch.bfloat16)
    out = quantize_nf4(w)
    assert out.shape == w.shape and out.dtype == torch.bfloat16
    for block in out.float().reshape(-1, 64):
        assert block.unique().numel() <= 16
        normalised = block / block.abs().max()
        codes = torch.tensor(NF4_CODE)
        # every value is a code value times the absmax (up to bf16 rounding)
        assert ((normalised[:, None] - codes[None, :]).abs().min(dim=1).values <= 2**-7).all()


# --------------------------------------------------------------------------- quantize_model


def test_quantize_model_on_a_tied_llama() -> None:
    model = _llama(tie=True)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    embedding = model.model.embed_tokens.weight.detach().clone()

    summary = quantize_model(model, "4bit")

    # 2 layers x 7 projections; q/k/v/o 32x32 = 1024 each, gate/up 64x32 and down 32x64 = 2048 each:
    # 2 * (4 * 1024 + 3 * 2048) = 20480 elements
    assert summary["scheme"] == "4bit" and summary["layers"] == 14 and summary["elements"] == 20480
    errors, count = 0.0, 0
    for name, module in model.named_modules():
        if not name.endswith(PROJECTIONS):
            continue
        old, new = before[f"{name}.weight"], module.weight.detach()
        assert not torch.equal(old, new), name
        assert torch.equal(new, quantize_rtn(old, bits=4, group_size=64)), name
        for row in new:
            for group in row.split(64):
                assert group.unique().numel() <= 16, name
        errors += (new.double() - old.double()).abs().sum().item()
        count += old.numel()
    assert count == 20480
    assert summary["mean_abs_error"] == pytest.approx(errors / count, rel=1e-9)
    assert summary["mean_abs_error"] > 0
    # the tied embedding / lm_head and the norms are untouched, bit for bit
    assert torch.equal(model.model.embed_tokens.weight, embedding)
    assert torch.equal(model.lm_head.weight, embedding)
    for name, p in model.named_parameters():
        if "norm" in name:
            assert torch.equal(p, before[name]), name


def test_quantize_model_never_quantizes_a_tied_embedding_and_skip_works() -> None:
    tied = _llama(tie=True)
    embedding = tied.model.embed_tokens.weight.detach().clone()
    summary = quantize_model(tied, "nf4", skip=())
    assert summary["layers"] == 14  # lm_head is tied: left alone even when not skipped
    assert torch.equal(tied.model.embed_tokens.weight, embedding)

    untied = _llama(tie=False)
    head = untied.lm_head.weight.detach().clone()
    assert quantize_model(untied, "8bit", skip=())["layers"] == 15
    assert not torch.equal(untied.lm_head.weight, head)

    untied = _llama(tie=False)
    head = untied.lm_head.weight.detach().clone()
    mlp = untied.model.layers[0].mlp.down_proj.weight.detach().clone()
    summary = quantize_model(untied, "8bit", skip=("lm_head", "mlp"))
    assert summary["layers"] == 8 and summary["elements"] == 2 * 4 * 1024  # attention only
    assert torch.equal(untied.lm_head.weight, head)
    assert torch.equal(untied.model.layers[0].mlp.down_proj.weight, mlp)


def test_quantize_model_shared_weight_quantized_once() -> None:
    torch.manual_seed(7)
    first, second = torch.nn.Linear(64, 4), torch.nn.Linear(64, 4)
    second.weight = first.weight
    model = torch.nn.Sequential(first, torch.nn.ReLU(), second)
    original = first.weight.detach().clone()
    summary = quantize_model(model, "4bit")
    assert summary["layers"] == 1 and summary["elements"] == 256
    assert torch.equal(first.weight, quantize_rtn(original, bits=4))
    assert second.weight is first.weight


def test_quantize_model_unknown_scheme() -> None:
    model = _llama()
    before = model.model.layers[0].self_attn.q_proj.weight.detach().clone()
    with pytest.raises(ValueError, match="known: 8bit, 4bit, nf4"):
        quantize_model(model, "3bit-gptq")
    assert torch.equal(model.model.layers[0].self_attn.q_proj.weight, before)
    assert {"8bit", "4bit", "nf4"} <= set(SCHEMES)


# --------------------------------------------------------------------------- recovered_share and the attack


def test_recovered_share() -> None:
    # original 0.8, unlearned 0.2, quantized 0.65: (0.65 - 0.2) / (0.8 - 0.2) = 0.45 / 0.6 = 0.75
    assert recovered_share(0.8, 0.2, 0.65) == pytest.approx(0.75)
    assert recovered_share(0.8, 0.2, 0.1) == pytest.approx(-1 / 6)  # not clipped
    assert recovered_share(0.35, 0.3, 0.3) == pytest.approx(0.0)  # gap exactly 0.05 (float 0.04999...)
    assert recovered_share(0.5, 0.47, 0.5) is None  # gap 0.03 < 0.05: nothing forgotten
    assert recovered_share(0.5, 0.47, 0.5, min_gap=0.01) == pytest.approx(1.0)
    assert recovered_share(None, 0.2, 0.5) is None
    assert recovered_share(0.8, 0.2, None) is None
    assert recovered_share(0.8, math.nan, 0.5) is None


def test_quantization_attack_on_a_saved_model(tmp_path: Path) -> None:
    model, processor = build_tiny_model("llava", ["who is this person", "a painter from Lisbon"], image_size=16)
    name = next(n for n, m in model.named_modules() if n.endswith("q_proj") and "language_model" in n)
    saved = model.get_submodule(name).weight.detach().clone()
    save_model(model, processor, tmp_path / "m")
    del model

    def evaluate(model, processor) -> dict[str, float]:
        w = model.get_submodule(name).weight.detach().cpu()
        return {
            "err_4bit": (w - quantize_rtn(saved, bits=4)).abs().max().item(),
            "err_nf4": (w - quantize_nf4(saved)).abs().max().item(),
            "training": float(model.training),
        }

    with pytest.raises(ValueError, match="unknown quantization scheme"):
        quantization_attack(tmp_path / "absent", None, ("4bit", "int3"), evaluate=evaluate)
    result = quantization_attack(tmp_path / "m", None, ("4bit", "nf4"), evaluate=evaluate)
    assert list(result) == ["4bit", "nf4"]
    # each scheme starts again from the saved weights: 4bit's model is exactly RTN of them, nf4's exactly NF4
    assert result["4bit"]["metrics"]["err_4bit"] == 0.0 and result["4bit"]["metrics"]["err_nf4"] > 0
    assert result["nf4"]["metrics"]["err_nf4"] == 0.0 and result["nf4"]["metrics"]["err_4bit"] > 0
    assert result["4bit"]["metrics"]["training"] == 0.0
    for scheme in ("4bit", "nf4"):
        summary = result[scheme]["summary"]
        assert summary["scheme"] == scheme and summary["layers"] > 0 and summary["mean_abs_error"] > 0


def test_the_verify_settings_accept_exactly_the_schemes_there_are() -> None:
    from forgetlab.verify.assess import QUANT_SCHEMES

    assert set(QUANT_SCHEMES) == set(SCHEMES)
