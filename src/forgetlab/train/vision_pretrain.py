"""Vision pre-training: teach the vision tower + projector to *see* before knowledge injection.

Real MLLMs start from a pretrained vision encoder (CLIP, ViT); the tiny model starts from
random weights, and learning to see through the language-modelling loss alone is slow
(``docs/reference.md#tiny-original``: the vision pathway is the slow part and easily dies). This stage
trains linear heads on the mean of the *projected* image tokens — exactly what the LM will
read — to predict the generating factors of procedurally drawn, randomly transformed
non-benchmark images: the six features of random faces, and shape / colour / count /
background of shape scenes. The heads are discarded; only the tower and projector keep
what they learned. Nothing here reads the benchmark: no identity, name or attribute is seen.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from torch import nn

from forgetlab.data import portraits as P
from forgetlab.dist.grads import sum_gradients
from forgetlab.dist.shard import Shard

#: label heads: name -> number of classes
FACE_HEADS: dict[str, int] = {k: len(v) for k, v in P.FEATURE_VALUES.items()}
SHAPE_HEADS: dict[str, int] = {
    "shape": len(P.SHAPES),
    "shape_colour": len(P.SHAPE_COLOURS),
    "count": len(P.COUNT_WORDS),
    "background": len(P.SHAPE_BACKGROUNDS),
}


def _face_pool(rng: np.random.Generator, n: int) -> tuple[list, dict[str, torch.Tensor]]:
    combos = P.all_feature_combinations()
    picks = rng.choice(len(combos), size=n)
    images, labels = [], {k: [] for k in FACE_HEADS}
    for i in picks:
        f = combos[int(i)]
        images.append(P.render_portrait(f, P.random_view(rng)))
        for k, idx in zip(FACE_HEADS, f.as_index(), strict=True):
            labels[k].append(idx)
    return images, {k: torch.tensor(v) for k, v in labels.items()}


def _shape_pool(rng: np.random.Generator, n: int) -> tuple[list, dict[str, torch.Tensor]]:
    colours, backgrounds = list(P.SHAPE_COLOURS), list(P.SHAPE_BACKGROUNDS)
    images, labels = [], {k: [] for k in SHAPE_HEADS}
    for _ in range(n):
        s, c = int(rng.integers(len(P.SHAPES))), int(rng.integers(len(colours)))
        k, b = int(rng.integers(len(P.COUNT_WORDS))), int(rng.integers(len(backgrounds)))
        scene = P.ShapeScene(P.SHAPES[s], colours[c], k + 1, backgrounds[b], int(rng.integers(2**31 - 1)))
        images.append(P.render_shapes(scene))
        for name, v in zip(SHAPE_HEADS, (s, c, k, b), strict=True):
            labels[name].append(v)
    return images, {k: torch.tensor(v) for k, v in labels.items()}


def _image_tokens(model: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """Each image's projected tokens, flattened: ``[n_images, tokens * hidden]`` (LLaVA, Qwen2-VL).

    Flattening (not mean pooling) keeps *where* things are, which hair style vs hat needs.
    """
    out = model.model.get_image_features(**inputs)
    feats = out.pooler_output if hasattr(out, "pooler_output") else out
    if isinstance(feats, (tuple, list)):
        return torch.stack([f.float().flatten() for f in feats])
    return feats.float().flatten(1)


def pretrain_vision(
    model: nn.Module,
    processor,
    *,
    steps: int = 300,
    batch_size: int = 32,
    lr: float = 1e-3,
    pool_size: int = 1500,
    seed: int = 0,
    shard: Shard | None = None,
) -> dict:
    """Train vision tower + projector of ``model`` on generated images; returns a summary.

    Images are drawn once into a pool (``pool_size`` faces and as many shape scenes, each a
    fresh random view) and sampled with replacement. Under ``accelerate launch`` (``shard``) every
    process draws the same batches, takes its part and gradients are summed; the accuracies in
    the summary are then process 0's part of each batch.
    """
    shard = shard or Shard()
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    t0 = time.time()
    pools = {"face": _face_pool(rng, pool_size), "shape": _shape_pool(rng, pool_size)}
    pixels = {k: processor.image_processor(images=v[0], return_tensors="pt") for k, v in pools.items()}
    with torch.no_grad():
        hidden = _image_tokens(model, _select(pixels["face"], torch.arange(1))).shape[-1]
    heads = nn.ModuleDict({name: nn.Linear(hidden, n) for name, n in (FACE_HEADS | SHAPE_HEADS).items()})
    vision_params = [p for n, p in model.named_parameters() if not n.startswith(("model.language_model", "lm_head"))]
    optimizer = torch.optim.AdamW([*vision_params, *heads.parameters()], lr=lr)
    warmup = max(1, steps // 10)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup))
    model.train()
    accs: dict[str, float] = {}
    for step in range(steps):
        kind = "face" if step % 2 == 0 else "shape"
        images, labels = pools[kind]
        idx = torch.randint(len(images), (batch_size,), generator=gen)
        idx = torch.tensor(shard.part(idx.tolist()) or idx[:1].tolist())  # a stand-in adds zero (below)
        weight = 1.0 / batch_size if len(shard.part(range(batch_size))) else 0.0
        feats = _image_tokens(model, _select(pixels[kind], idx))
        names = FACE_HEADS if kind == "face" else SHAPE_HEADS
        loss = torch.zeros(())
        for name in names:
            logits = heads[name](feats)
            target = labels[name][idx]
            loss = loss + weight * nn.functional.cross_entropy(logits, target, reduction="sum")
            accs[name] = 0.9 * accs.get(name, 0.0) + 0.1 * (logits.argmax(-1) == target).float().mean().item()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        sum_gradients([*vision_params, *heads.parameters()], shard)
        torch.nn.utils.clip_grad_norm_(vision_params, 1.0)
        optimizer.step()
        schedule.step()
    return {
        "steps": steps,
        "seconds": round(time.time() - t0, 1),
        "train_acc_ema": {k: round(v, 3) for k, v in accs.items()},
    }


def _select(pixels, idx: torch.Tensor) -> dict[str, torch.Tensor]:
    """The image-processor outputs of images ``idx`` (handles Qwen2-VL's flattened patches)."""
    pv = pixels["pixel_values"]
    if "image_grid_thw" not in pixels:
        return {"pixel_values": pv[idx]}
    grid = pixels["image_grid_thw"]
    sizes = grid.prod(-1)
    starts = torch.cumsum(sizes, 0) - sizes
    rows = torch.cat([torch.arange(int(starts[i]), int(starts[i] + sizes[i])) for i in idx.tolist()])
    return {"pixel_values": pv[rows], "image_grid_thw": grid[idx]}
