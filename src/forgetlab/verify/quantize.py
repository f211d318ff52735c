"""The quantization attack: does quantizing the unlearned model bring the forgotten knowledge back?

Unlearning often moves the weights only a little away from the original model. Quantizing the
unlearned model to 4 bits can round those small changes away and restore the original behaviour:
Zhang et al., "Catastrophic Failure of LLM Unlearning via Quantization" (arXiv 2410.16454) report
forget accuracy going from 21% after unlearning back to 83% after 4-bit quantization on text LLMs.
This module measures that for forgetlab's models with *fake* quantization (quantize, then dequantize
back into the weight's dtype), in pure torch so that it also runs on a CPU without bitsandbytes.

Schemes (:data:`SCHEMES`):

* ``"8bit"`` / ``"4bit"``: asymmetric round-to-nearest (RTN, :func:`quantize_rtn`) over groups of 64
  consecutive elements along the input dimension (the last one) of each weight, ``b`` bits::

      scale = (max - min) / (2^b - 1)
      zero  = round(-min / scale)
      q     = clamp(round(w / scale) + zero, 0, 2^b - 1)
      w'    = (q - zero) * scale

  A constant group (``scale == 0``) is returned unchanged. The zero point is not clamped, so a group
  that does not contain 0 still uses its whole range; the error is at most ``scale / 2`` per element.
* ``"nf4"``: 4-bit NormalFloat as in QLoRA (Dettmers et al., arXiv 2305.14314) and bitsandbytes
  (:func:`quantize_nf4`): the flattened weight is cut into blocks of 64 elements, each block is divided
  by its absolute maximum, every value is replaced by the nearest of the 16 values of :data:`NF4_CODE`,
  and multiplied back: ``w' = NF4_CODE[argmin_i |w / absmax - NF4_CODE[i]|] * absmax``.

:func:`quantize_model` applies a scheme in place to every ``torch.nn.Linear`` of a model (not to
``lm_head`` by default, never to an embedding matrix tied to it); :func:`quantization_attack` loads a
model folder once per scheme, quantizes it and evaluates it; :func:`recovered_share` is the share of
the forgotten accuracy that quantization restored, ``(quantized − unlearned) / (original − unlearned)``.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import torch

#: the 16 NF4 values (QLoRA, arXiv 2305.14314, appendix E; bitsandbytes' ``dDequantizeNF4``), ascending.
NF4_CODE: tuple[float, ...] = (
    -1.0,
    -0.6961928009986877,
    -0.5250730514526367,
    -0.39491748809814453,
    -0.28444138169288635,
    -0.18477343022823334,
    -0.09105003625154495,
    0.0,
    0.07958029955625534,
    0.16093020141124725,
    0.24611230194568634,
    0.33791524171829224,
    0.44070982933044434,
    0.5626170039176941,
    0.7229568362236023,
    1.0,
)

#: the default group (block) size of every scheme, as bitsandbytes' NF4 blocksize.
GROUP_SIZE = 64


def _check_group_size(group_size: int) -> None:
    if not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"group_size must be a positive integer, got {group_size!r}")


def quantize_rtn(weight: torch.Tensor, bits: int, group_size: int = GROUP_SIZE) -> torch.Tensor:
    """Asymmetric round-to-nearest fake quantization of ``weight``, per group along its last dimension.

    Each row is cut into groups of ``group_size`` consecutive elements (the last group of a row is
    smaller when ``group_size`` does not divide it); per group, computed in float32::

        scale = (max - min) / (2^bits - 1);  zero = round(-min / scale)
        q = clamp(round(w / scale) + zero, 0, 2^bits - 1);  w' = (q - zero) * scale

    A constant group (``scale == 0``) is returned exactly. Returns a new tensor of ``weight``'s shape,
    dtype and device; ``bits`` is 2 to 8.
    """
    if not isinstance(bits, int) or not 2 <= bits <= 8:
        raise ValueError(f"bits must be an integer from 2 to 8, got {bits!r}")
    _check_group_size(group_size)
    if weight.ndim == 0:
        raise ValueError("quantize_rtn needs a weight with at least one dimension")
    if weight.numel() == 0:
        return weight.clone()
    shape, n_in = weight.shape, weight.shape[-1]
    w = weight.detach().to(torch.float32).reshape(-1, n_in)
    pad = -n_in % group_size
    if pad:  # repeat the row's last value: it lies in the last group, so that group's min/max are unchanged
        w = torch.cat([w, w[:, -1:].expand(-1, pad)], dim=1)
    groups = w.reshape(w.shape[0], -1, group_size)
    lo = groups.amin(dim=-1, keepdim=True)
    hi = groups.amax(dim=-1, keepdim=True)
    qmax = 2**bits - 1
    scale = (hi - lo) / qmax
    # constant groups, and spans so small that w / scale would overflow, are kept as they are
    flat = scale < torch.finfo(torch.float32).tiny
    scale = torch.where(flat, torch.ones_like(scale), scale)
    zero = torch.round(-lo / scale)
    q = torch.clamp(torch.round(groups / scale) + zero, 0, qmax)
    out = torch.where(flat, groups, (q - zero) * scale)
    out = out.reshape(w.shape[0], -1)[:, :n_in]
    return out.reshape(shape).to(weight.dtype)


def quantize_nf4(weight: torch.Tensor, group_size: int = GROUP_SIZE) -> torch.Tensor:
    """NF4 fake quantization (QLoRA / bitsandbytes) of ``weight`` in blocks of ``group_size`` elements.

    The weight is flattened (row-major, as bitsandbytes does) and cut into blocks of ``group_size``
    (the last one may be shorter); per block, in float32, ``w' = NF4_CODE[i] * absmax`` where ``i`` is
    the code value nearest to ``w / absmax`` (an exact midpoint goes to the lower value, as in
    bitsandbytes). The block's absmax element is returned exactly; an all-zero block stays zero.
    Returns a new tensor of ``weight``'s shape, dtype and device.
    """
    _check_group_size(group_size)
    if weight.numel() == 0:
        return weight.clone()
    w = weight.detach().to(torch.float32).reshape(-1)
    n = w.numel()
    pad = -n % group_size
    if pad:  # zeros change no block's absmax
        w = torch.cat([w, w.new_zeros(pad)])
    blocks = w.reshape(-1, group_size)
    absmax = blocks.abs().amax(dim=-1, keepdim=True)
    absmax = torch.where(absmax > 0, absmax, torch.ones_like(absmax))  # an all-zero block: 0 / 1 -> code 0.0
    code = torch.tensor(NF4_CODE, dtype=torch.float32, device=w.device)
    midpoints = (code[1:] + code[:-1]) / 2
    # the nearest code value through the 15 midpoints: no (n, 16) distance matrix for big weights
    index = torch.bucketize(blocks / absmax, midpoints)
    out = code[index] * absmax
    return out.reshape(-1)[:n].reshape(weight.shape).to(weight.dtype)


#: scheme name -> fake quantization of one weight tensor.
SCHEMES: Mapping[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "8bit": partial(quantize_rtn, bits=8, group_size=GROUP_SIZE),
    "4bit": partial(quantize_rtn, bits=4, group_size=GROUP_SIZE),
    "nf4": partial(quantize_nf4, group_size=GROUP_SIZE),
}


def _scheme(scheme: str) -> Callable[[torch.Tensor], torch.Tensor]:
    if scheme not in SCHEMES:
        raise ValueError(f"unknown quantization scheme {scheme!r}; known: {', '.join(SCHEMES)}")
    return SCHEMES[scheme]


def quantize_model(model: torch.nn.Module, scheme: str, *, skip: tuple[str, ...] = ("lm_head",)) -> dict[str, Any]:
    """Fake-quantize in place the weight of every ``torch.nn.Linear`` of ``model`` under ``scheme``.

    Linear layers whose qualified name contains an entry of ``skip`` are left alone, and so is any weight
    shared with an ``nn.Embedding`` (an ``lm_head`` tied to the input embeddings); a weight shared by
    several layers is quantized once. Biases are not quantized. Every other Linear is quantized,
    including a vision tower's and a multimodal projector's (add their names to ``skip`` to keep them).

    Returns ``{"scheme", "layers": weights quantized, "elements": their total size,
    "mean_abs_error": mean |w' − w| over those elements (None when nothing was quantized)}``.
    """
    fn = _scheme(scheme)
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    done: set[int] = set()
    layers = elements = 0
    abs_error = 0.0
    with torch.no_grad():
        for name, module in model.named_modules():
            if not isinstance(module, torch.nn.Linear) or any(s in name for s in skip):
                continue
            weight = module.weight
            if id(weight) in embeddings or id(weight) in done:
                continue
            done.add(id(weight))
            quantized = fn(weight)
            abs_error += (quantized.to(torch.float64) - weight.to(torch.float64)).abs().sum().item()
            weight.copy_(quantized)
            layers += 1
            elements += weight.numel()
    return {
        "scheme": scheme,
        "layers": layers,
        "elements": elements,
        "mean_abs_error": abs_error / elements if elements else None,
    }


def recovered_share(
    original: float | None, unlearned: float | None, quantized: float | None, min_gap: float = 0.05
) -> float | None:
    """Share of the forgotten accuracy that quantization restored: (quantized − unlearned) / (original − unlearned).

    ``None`` when an input is missing or not finite, or when ``original − unlearned < min_gap`` (with
    float tolerance: nothing was forgotten). Not clipped: < 0 means quantization forgot more, > 1 that it
    overshot the original.
    """
    from forgetlab.verify.relearn import recovery

    return recovery(original, unlearned, quantized, min_gap=min_gap)


def quantization_attack(
    model_dir: Path,
    data: Any,
    schemes: Sequence[str] = ("8bit", "4bit"),
    *,
    evaluate: Callable[[torch.nn.Module, Any], Mapping[str, float]],
) -> dict[str, dict[str, Any]]:
    """Load ``model_dir`` once per scheme, quantize it (:func:`quantize_model`) and evaluate it.

    ``evaluate(model, processor)`` returns a flat dict of accuracies (e.g. ``forget_vqa_acc``,
    ``retain_vqa_acc``); it is the caller's, and reads its evaluation data (``data``, which this function
    does not touch) itself. Returns ``{scheme: {"summary": quantize_model's summary, "metrics": ...}}``.
    Unknown schemes are refused before any model is loaded.
    """
    from forgetlab.models.load import load_for_eval

    for scheme in schemes:
        _scheme(scheme)
    results: dict[str, dict[str, Any]] = {}
    for scheme in schemes:
        model, processor = load_for_eval(model_dir)
        summary = quantize_model(model, scheme)
        metrics = dict(evaluate(model, processor))
        results[scheme] = {"summary": summary, "metrics": metrics}
        del model, processor
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return results


def pooled_forget(view: Mapping[str, Any], metric: str) -> float | None:
    """``metric`` over both halves of a relearning view: weighted by the halves' question counts
    (``*_n``) when both are known, else their plain mean (TOFU)."""
    from forgetlab.verify.relearn import HALVES

    values = [view[h].get(metric) for h in HALVES]
    if any(v is None for v in values):
        return None
    counts = [view[h].get(metric.removesuffix("_acc") + "_n") for h in HALVES]
    if all(isinstance(c, int) and c > 0 for c in counts):
        return sum(v * c for v, c in zip(values, counts, strict=True)) / sum(counts)  # type: ignore[misc]
    return sum(values) / len(values)  # type: ignore[arg-type]


def flat_view(view: Mapping[str, Any], benchmark: str) -> dict[str, float | None]:
    """A relearning view's forget metrics pooled over both halves, and its retain metrics, as one flat dict."""
    from forgetlab.verify.relearn import RELEARN_METRICS

    forget, retain = RELEARN_METRICS[benchmark]
    return {m: pooled_forget(view, m) for m in forget} | {m: view["retain"].get(m) for m in retain}


def quantization_check(
    model_dir: Path,
    data: Any,
    people: Mapping[str, Sequence[str]],
    original_view: Mapping[str, Any],
    unlearned_view: Mapping[str, Any],
    schemes: Sequence[str] = ("8bit", "4bit"),
) -> dict[str, dict[str, Any]]:
    """The quantization attack on an unlearned model, as ``verify.json`` reports it.

    Each scheme's quantized model is evaluated like the relearning attack's models
    (:func:`forgetlab.verify.relearn.evaluate_halves`, all forget people); per scheme::

        {"forget_vqa_acc", "forget_qa_acc", "test_vqa_acc", "retain_vqa_acc", "retain_qa_acc"  (those the
         benchmark has), "original": {...}, "unlearned": {...}, "recovered_share", "per_metric", "quantized"}

    ``recovered_share`` is :func:`recovered_share` of the benchmark's first forget metric (forget VQA;
    TOFU: forget probability) from the original, unlearned and quantized values; ``per_metric`` has it for
    every forget metric; ``quantized`` is :func:`quantize_model`'s summary.
    """
    from forgetlab.verify.relearn import RELEARN_METRICS, evaluate_halves

    benchmark = data.name
    forget = RELEARN_METRICS[benchmark][0]
    orig, unl = flat_view(original_view, benchmark), flat_view(unlearned_view, benchmark)
    runs = quantization_attack(
        model_dir, data, schemes, evaluate=lambda m, p: flat_view(evaluate_halves(m, p, data, people), benchmark)
    )
    out: dict[str, dict[str, Any]] = {}
    for scheme, run in runs.items():
        q = dict(run["metrics"])
        per_metric = {m: recovered_share(orig.get(m), unl.get(m), q.get(m)) for m in forget}
        out[scheme] = q | {
            "original": orig,
            "unlearned": unl,
            "recovered_share": per_metric[forget[0]],
            "per_metric": per_metric,
            "quantized": run["summary"],
        }
    return out
