"""Pooled hidden states of every layer, from ONE batched forward pass per model (``docs/reference.md#features``).

**Layers** are resolved by structure, never by name matching:

* ``language.emb`` — the input of the first decoder block (token embeddings; for an MLLM the
  projected image features are already merged in at the image-placeholder positions);
* ``language.0`` … ``language.{N-1}`` — the output of each decoder block (the decoder's
  ``layers`` ModuleList, or the longest homogeneous ModuleList of the language model);
* ``language.norm`` — the output of the final norm (what ``lm_head`` reads), when there is one;
* ``vision.emb``, ``vision.0`` … ``vision.{M-1}`` — input of the vision tower's first encoder
  block and output of each block (CLIP ``encoder.layers``, Qwen2-VL ``blocks``);
* ``projector`` — the output of the multimodal projector (LLaVA ``multi_modal_projector``,
  Qwen2-VL ``visual.merger``).

**How they are captured.** Forward hooks on those modules, pooling inside the hook. transformers
5.24 also exposes the states through ``output_hidden_states=True`` (the LM's in
``outputs.hidden_states``, the vision tower's in ``outputs.image_outputs.hidden_states``;
``image_hidden_states`` is only the projected features), but (1) the last LM entry there has the
final norm applied while the others do not (``tie_last_hidden_states``), (2) every layer's full
[B, T, d] state stays alive until the forward returns, where a hook keeps only [B, d] per
pooling, and (3) the ``image_outputs`` layout is announced to change in v5.30. The tests check
the hooks against ``output_hidden_states`` on tiny LLaVA and Llama models.

**Pooling** (language layers), from the attention mask, fp32 accumulation:

* ``mean`` — mean over real tokens, *including* image-placeholder positions (they hold the
  LLM's representation of the image), excluding pads and a leading BOS token (a causal LM's
  BOS state depends on nothing but itself, so it is the same for every input, and in large
  models it carries "massive activations" that would dominate the mean);
* ``mean_text`` — the same without image-placeholder positions (text tokens only; equals
  ``mean`` for text-only inputs);
* ``last`` — the last real token (what a causal LM conditions its next token on).

Position 0 is never pooled alone and pad positions never enter any pooling. Vision layers are
pooled by the mean over each image's tokens (CLIP's CLS token excluded) for every pooling name,
so a :class:`Features` of any pooling holds all layers. Vision rows exist only for examples
with an image; ``Features.rows`` maps each layer's rows to probe-set indices.

**Cache.** Features are stored as safetensors under ``cache_dir``, one file per (model
fingerprint, probe-set fingerprint, pooling), written atomically; a reference model is computed
once and reused for every comparison. The model fingerprint hashes ``config.json`` and the name,
size and mtime of every file of the model folder (re-saving a model invalidates its entries);
the probe fingerprint hashes the encoded inputs (token ids, pixel values, image grids) and the
special-token ids pooling depends on.
"""

from __future__ import annotations

import hashlib
import inspect
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from forgetlab.data.collate import IGNORE, Encoded, collate, encode_cached, image_token_ids, length_order
from forgetlab.data.schema import Sample
from forgetlab.io import atomic_path
from forgetlab.models.groups import _PROJECTOR, _VISION, _find, language_module
from forgetlab.models.inputs import forward_kwargs, to_model

POOLINGS: tuple[str, ...] = ("mean", "mean_text", "last")
FORMAT = "forgetlab.probe.features/1"
STREAMS: tuple[str, ...] = ("language", "vision", "projector")

_NORMS = ("norm", "final_layernorm", "ln_f", "final_layer_norm")
_VISION_BLOCKS = ("encoder.layers", "vision_model.encoder.layers", "blocks", "layers", "encoder.layer")


# --------------------------------------------------------------------------- layers


@dataclass(frozen=True)
class LayerSite:
    """One captured layer: where its hook goes and which stream it belongs to."""

    name: str
    stream: str  # "language" | "vision" | "projector"
    module: nn.Module
    where: str  # "output" (forward hook) | "input" (forward pre-hook)


def _longest_module_list(module: nn.Module) -> nn.ModuleList | None:
    best: nn.ModuleList | None = None
    for sub in module.modules():
        if isinstance(sub, nn.ModuleList) and len(sub) > 0 and len({type(m) for m in sub}) == 1:
            if best is None or len(sub) > len(best):
                best = sub
    return best


def _attr_path(module: nn.Module, path: str) -> nn.Module | None:
    for part in path.split("."):
        module = getattr(module, part, None)
        if module is None:
            return None
    return module


def decoder_blocks(lang: nn.Module) -> nn.ModuleList:
    """The decoder blocks: ``lang.layers`` (or ``h``), else the longest homogeneous ModuleList."""
    for name in ("layers", "h", "blocks"):
        blocks = getattr(lang, name, None)
        if isinstance(blocks, nn.ModuleList) and len(blocks) > 0:
            return blocks
    blocks = _longest_module_list(lang)
    if blocks is None:
        raise ValueError(f"{type(lang).__name__}: no decoder-block ModuleList found to probe")
    return blocks


def _vision_blocks(tower: nn.Module) -> nn.ModuleList:
    for path in _VISION_BLOCKS:
        blocks = _attr_path(tower, path)
        if isinstance(blocks, nn.ModuleList) and len(blocks) > 0:
            return blocks
    blocks = _longest_module_list(tower)
    if blocks is None:
        raise ValueError(f"{type(tower).__name__}: no encoder-block ModuleList found in the vision tower")
    return blocks


def layer_sites(model: nn.Module) -> list[LayerSite]:
    """Every layer :func:`capture` records, in depth order (language first, then vision)."""
    lang = language_module(model)
    blocks = decoder_blocks(lang)
    sites = [LayerSite("language.emb", "language", blocks[0], "input")]
    sites += [LayerSite(f"language.{i}", "language", b, "output") for i, b in enumerate(blocks)]
    for name in _NORMS:
        norm = getattr(lang, name, None)
        if isinstance(norm, nn.Module):
            sites.append(LayerSite("language.norm", "language", norm, "output"))
            break
    vision = _find(model, _VISION)
    if vision is not None:
        tower = vision[1]
        vblocks = _vision_blocks(tower)
        sites.append(LayerSite("vision.emb", "vision", vblocks[0], "input"))
        sites += [LayerSite(f"vision.{i}", "vision", b, "output") for i, b in enumerate(vblocks)]
        proj = _find(model, _PROJECTOR) or _find(tower, _PROJECTOR)
        if proj is not None:
            sites.append(LayerSite("projector", "projector", proj[1], "output"))
    return sites


def layer_names(model: nn.Module) -> list[str]:
    """Names of the layers :func:`capture` records for ``model``."""
    return [s.name for s in layer_sites(model)]


def _has_cls_token(model: nn.Module) -> bool:
    vision = _find(model, _VISION)
    if vision is None:
        return False
    return any(hasattr(m, "class_embedding") for m in vision[1].modules())


# --------------------------------------------------------------------------- probe inputs


def _tokenizer(processor):
    return getattr(processor, "tokenizer", processor)


def _plain_encode(tok, sample: Sample) -> Encoded:
    """``question\\nanswer`` for a tokenizer without a chat template; labels on the answer."""
    prompt = tok(sample.question + "\n", add_special_tokens=True)["input_ids"]
    answer = tok(sample.answer, add_special_tokens=False)["input_ids"]
    if tok.eos_token_id is not None:
        answer = [*answer, tok.eos_token_id]
    ids = torch.tensor(prompt + answer, dtype=torch.long)
    labels = ids.clone()
    labels[: len(prompt)] = IGNORE
    return Encoded(input_ids=ids, labels=labels, prompt_len=len(prompt))


def encode_text(processor, text: str) -> Encoded:
    """One free-text probe query, tokenised as the model's tokenizer does by default (special
    tokens such as BOS added); every token but the first is supervised (for Fisher)."""
    if not text.strip():
        raise ValueError("empty probe query")
    ids = torch.tensor(_tokenizer(processor)(text, add_special_tokens=True)["input_ids"], dtype=torch.long)
    labels = ids.clone()
    labels[0] = IGNORE
    return Encoded(input_ids=ids, labels=labels, prompt_len=0)


def encode_probe(processor, items: Sequence[Sample | str]) -> list[Encoded]:
    """Encode probe items: a :class:`Sample` as its question + answer (answer-only labels, the
    chat format of :func:`forgetlab.data.collate.encode`), a string as a raw query."""
    if not items:
        raise ValueError("the probe set is empty")
    tok = _tokenizer(processor)
    multimodal = hasattr(processor, "image_processor")
    out: list[Encoded] = []
    for i, item in enumerate(items):
        if isinstance(item, str):
            out.append(encode_text(processor, item))
        elif item.image is not None and not multimodal:
            raise ValueError(
                f"probe item {i} has an image but the model has a text tokenizer only; "
                "drop image questions for text-only models"
            )
        elif getattr(tok, "chat_template", None) is None and not multimodal:
            out.append(_plain_encode(tok, item))
        else:
            out.append(encode_cached(processor, item, span="answer"))  # the same items for every model
    return out


def pad_token_id(processor) -> int:
    """Pad id of the processor's tokenizer (EOS when it has none)."""
    tok = _tokenizer(processor)
    pid = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    if pid is None:
        raise ValueError("the tokenizer has neither a pad nor an EOS token to pad batches with")
    return int(pid)


# --------------------------------------------------------------------------- fingerprints


def model_fingerprint(path: str | Path, *, extra: str = "") -> str:
    """Hash of a model folder: ``config.json``'s bytes and every top-level file's name, size
    and mtime (weights are not read, so this is instant for multi-GB checkpoints)."""
    path = Path(path)
    h = hashlib.sha256(FORMAT.encode())
    cfg = path / "config.json"
    if not cfg.is_file():
        raise FileNotFoundError(f"{path} has no config.json: not a model folder")
    h.update(cfg.read_bytes())
    for f in sorted(p for p in path.iterdir() if p.is_file()):
        st = f.stat()
        h.update(f"{f.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    h.update(extra.encode())
    return h.hexdigest()


def _special_ids(processor) -> tuple[int | None, list[int]]:
    tok = _tokenizer(processor)
    return tok.bos_token_id, sorted(image_token_ids(processor))


def probe_fingerprint(examples: Sequence[Encoded], processor) -> str:
    """Hash of the encoded probe set and of the special-token ids pooling depends on."""
    h = hashlib.sha256(FORMAT.encode())
    bos, image_ids = _special_ids(processor)
    h.update(json.dumps([bos, image_ids, len(examples)]).encode())
    for e in examples:
        for t in (e.input_ids, e.pixel_values, e.image_grid_thw):
            if t is None:
                h.update(b"-")
            else:
                t = t.detach().cpu().contiguous()
                h.update(f"{t.dtype}{tuple(t.shape)}".encode())
                h.update(t.numpy().tobytes())
    return h.hexdigest()


# --------------------------------------------------------------------------- features


@dataclass
class Features:
    """Pooled features of one model on one probe set, for one pooling.

    ``feats[layer]`` is [n_rows, d] float32 on the CPU; ``rows[layer]`` the probe-set index of
    each row (all examples for language layers, the examples with an image for vision ones).
    """

    pooling: str
    layers: list[str]
    feats: dict[str, torch.Tensor]
    rows: dict[str, torch.Tensor]
    n_examples: int
    meta: dict[str, str] = field(default_factory=dict)

    def matrix(self, layer: str, rows: Sequence[int] | None = None) -> torch.Tensor:
        """Rows of ``layer`` for the probe-set indices ``rows`` (all rows when None), in the
        order given; indices the layer has no row for (no image) are skipped."""
        if layer not in self.feats:
            raise KeyError(f"layer {layer!r} not captured; layers: {', '.join(self.layers)}")
        x = self.feats[layer]
        if rows is None:
            return x
        position = {int(r): i for i, r in enumerate(self.rows[layer])}
        return x[[position[r] for r in rows if r in position]]


def cache_file(cache_dir: str | Path, model_key: str, probe_key: str, pooling: str) -> Path:
    """Where :func:`capture` keeps one (model, probe set, pooling) entry."""
    return Path(cache_dir) / f"{model_key[:24]}-{probe_key[:24]}-{pooling}.safetensors"


def save_features(path: str | Path, f: Features) -> None:
    """Write features atomically as safetensors (metadata: pooling, layer order, keys)."""
    tensors: dict[str, torch.Tensor] = {}
    for layer in f.layers:
        tensors[f"feat/{layer}"] = f.feats[layer].contiguous()
        tensors[f"rows/{layer}"] = f.rows[layer].contiguous()
    meta = {
        **f.meta,
        "format": FORMAT,
        "pooling": f.pooling,
        "layers": json.dumps(f.layers),
        "n_examples": str(f.n_examples),
    }
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)


def load_features(path: str | Path) -> Features:
    """Read features written by :func:`save_features`."""
    with safe_open(str(path), framework="pt") as sf:
        meta = dict(sf.metadata() or {})
        if meta.get("format") != FORMAT:
            raise ValueError(f"{path}: not a {FORMAT} file (format={meta.get('format')!r})")
        layers = json.loads(meta["layers"])
        feats = {ly: sf.get_tensor(f"feat/{ly}") for ly in layers}
        rows = {ly: sf.get_tensor(f"rows/{ly}") for ly in layers}
    extra = {k: v for k, v in meta.items() if k not in ("format", "pooling", "layers", "n_examples")}
    return Features(meta["pooling"], layers, feats, rows, int(meta["n_examples"]), extra)


def cached_features(
    cache_dir: str | Path | None, model_key: str | None, probe_key: str, poolings: Sequence[str]
) -> dict[str, Features]:
    """The poolings already in the cache for (model_key, probe_key)."""
    if cache_dir is None or model_key is None:
        return {}
    found: dict[str, Features] = {}
    for p in poolings:
        path = cache_file(cache_dir, model_key, probe_key, p)
        if path.is_file():
            try:
                f = load_features(path)
            except (SafetensorError, OSError, ValueError, KeyError):
                continue  # an unreadable entry (e.g. truncated by a full disk) is a miss: recomputed, rewritten
            if f.meta.get("model_key") == model_key and f.meta.get("probe_key") == probe_key:
                found[p] = f
    return found


# --------------------------------------------------------------------------- pooling


def _check_poolings(poolings: Sequence[str]) -> tuple[str, ...]:
    if isinstance(poolings, str):
        poolings = (poolings,)
    bad = [p for p in poolings if p not in POOLINGS]
    if bad or not poolings:
        raise ValueError(f"unknown pooling {bad[0] if bad else None!r}; choose from {list(POOLINGS)}")
    return tuple(dict.fromkeys(poolings))


def pooling_weights(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    poolings: Sequence[str],
    *,
    bos_id: int | None,
    image_ids: Sequence[int] = (),
) -> torch.Tensor:
    """[P, B, T] float32 weights, each row summing to 1, for the language-layer poolings.

    Works for left and right padding alike (everything follows the attention mask).
    """
    real = attention_mask.bool()
    if not bool(real.any(dim=1).all()):
        raise ValueError("a probe example has no real (attention_mask = 1) token")
    pos = torch.arange(real.shape[1], device=real.device).expand_as(real)
    first = torch.where(real, pos, real.shape[1]).min(dim=1).values
    last = torch.where(real, pos, -1).max(dim=1).values
    body = real.clone()
    if bos_id is not None:
        lead_bos = (pos == first[:, None]) & (input_ids == bos_id)
        without = real & ~lead_bos
        # a query that is nothing but BOS keeps it rather than pooling nothing
        body = torch.where(without.any(dim=1, keepdim=True), without, real)
    out = []
    for p in poolings:
        if p == "last":
            m = pos == last[:, None]
        elif p == "mean":
            m = body
        else:  # mean_text
            m = body & ~torch.isin(input_ids, torch.tensor(list(image_ids), dtype=input_ids.dtype))
            empty = ~m.any(dim=1)
            if bool(empty.any()):
                raise ValueError(
                    f"pooling 'mean_text': probe example {int(empty.nonzero()[0])} of the batch has no text token"
                )
        w = m.to(torch.float32)
        out.append(w / w.sum(dim=1, keepdim=True))
    return torch.stack(out)


def _segments(grid: torch.Tensor | None, n_rows: int, n_images: int) -> torch.Tensor:
    """Image index of each row of a flattened [rows, d] vision state (Qwen2-VL style)."""
    if grid is None:
        if n_rows % n_images:
            raise ValueError(f"cannot split {n_rows} vision rows into {n_images} images")
        counts = torch.full((n_images,), n_rows // n_images)
    else:
        patches = grid.prod(dim=-1).cpu().to(torch.int64)
        total = int(patches.sum())
        # the merger maps merge² patches to one row: every image shrinks by the same factor
        if total == 0 or bool(((n_rows * patches) % total).any()):
            raise ValueError(f"vision rows ({n_rows}) do not divide into the images' patches {patches.tolist()}")
        counts = patches * n_rows // total
    return torch.repeat_interleave(torch.arange(len(counts)), counts)


class _Recorder:
    """Forward hooks that pool each site's state per batch (reset per batch)."""

    def __init__(self, sites: list[LayerSite], has_cls: bool) -> None:
        self.sites = sites
        self.has_cls = has_cls
        self.weights: torch.Tensor | None = None  # [P, B, T]
        self.grid: torch.Tensor | None = None
        self.n_images = 0
        self.batch: dict[str, torch.Tensor] = {}
        self.handles: list = []

    def __enter__(self) -> _Recorder:
        for s in self.sites:
            fn = self._hook(s)
            if s.where == "input":
                self.handles.append(s.module.register_forward_pre_hook(fn, with_kwargs=True))
            else:
                self.handles.append(s.module.register_forward_hook(fn, with_kwargs=True))
        return self

    def __exit__(self, *exc) -> None:
        for h in self.handles:
            h.remove()

    def _hook(self, site: LayerSite) -> Callable:
        def hook(module, args, kwargs, output=None):
            if site.where == "input":
                state = args[0] if args else kwargs.get("hidden_states")
            else:
                state = output[0] if isinstance(output, (tuple, list)) else output
            if not isinstance(state, torch.Tensor):
                raise TypeError(f"layer {site.name}: expected a tensor state, got {type(state).__name__}")
            if site.name in self.batch:
                raise RuntimeError(f"layer {site.name} ran twice in one forward pass; cannot pool it")
            self.batch[site.name] = self._pool(site, state.detach())

        return hook

    def _pool(self, site: LayerSite, state: torch.Tensor) -> torch.Tensor:
        if site.stream == "language":
            w = self.weights.to(state.device)
            if state.dim() != 3 or state.shape[:2] != w.shape[1:]:
                raise ValueError(
                    f"layer {site.name}: state of shape {tuple(state.shape)} does not match the batch "
                    f"{tuple(w.shape[1:])}; the model changes the sequence length (image tokens expanded "
                    "inside the model?), so positions cannot be mapped to the attention mask"
                )
            return torch.einsum("pbt,btd->pbd", w, state.float()).cpu()
        if state.dim() == 3:  # [images, tokens, d]
            if site.stream == "vision" and self.has_cls:
                state = state[:, 1:]
            return state.float().mean(dim=1).cpu()
        if state.dim() == 2:  # [rows of all images, d]
            seg = _segments(self.grid, state.shape[0], self.n_images).to(state.device)
            sums = torch.zeros(self.n_images, state.shape[1], dtype=torch.float32, device=state.device)
            sums.index_add_(0, seg, state.float())
            counts = torch.bincount(seg, minlength=self.n_images).to(sums)
            return (sums / counts[:, None]).cpu()
        raise ValueError(f"layer {site.name}: unexpected state shape {tuple(state.shape)}")


def _forward_extras(model: nn.Module) -> dict:
    params = inspect.signature(model.forward).parameters
    extras = {"use_cache": False}
    if "logits_to_keep" in params:
        extras["logits_to_keep"] = 1  # the probe needs no logits; skip the vocabulary matmul
    return extras


@torch.inference_mode()
def _capture_pass(
    model: nn.Module,
    processor,
    examples: Sequence[Encoded],
    poolings: tuple[str, ...],
    batch_size: int,
    meta: dict[str, str],
) -> dict[str, Features]:
    sites = layer_sites(model)
    bos_id, image_ids = _special_ids(processor)
    pad_id = pad_token_id(processor)
    extras = _forward_extras(model)
    chunks: dict[str, list[torch.Tensor]] = {s.name: [] for s in sites}
    rows: dict[str, list[torch.Tensor]] = {s.name: [] for s in sites}
    was_training = model.training
    model.eval()
    try:
        # batches of similar length (little padding), every feature row put back in the examples' order below
        order = length_order(examples)
        with _Recorder(sites, _has_cls_token(model)) as rec:
            for start in range(0, len(examples), batch_size):
                index = torch.tensor(order[start : start + batch_size])
                part = [examples[i] for i in index.tolist()]
                batch = collate(part, pad_id)
                with_image = torch.tensor([e.pixel_values is not None for e in part])
                rec.weights = pooling_weights(
                    batch["input_ids"], batch["attention_mask"], poolings, bos_id=bos_id, image_ids=image_ids
                )
                rec.grid = batch.get("image_grid_thw")
                rec.n_images = int(with_image.sum())
                rec.batch = {}
                kwargs = to_model(model, forward_kwargs(model, batch))
                model(**kwargs, **extras)
                for s in sites:
                    if s.name not in rec.batch:
                        if s.stream == "language" or rec.n_images:
                            raise RuntimeError(f"layer {s.name} did not run in the forward pass")
                        continue
                    chunks[s.name].append(rec.batch[s.name])
                    rows[s.name].append(index if s.stream == "language" else index[with_image])
    finally:
        model.train(was_training)
    out: dict[str, Features] = {}
    names = [s.name for s in sites if chunks[s.name]]
    perm = {n: torch.argsort(torch.cat(rows[n])) for n in names}  # back to the examples' order
    row_map = {n: torch.cat(rows[n])[perm[n]].to(torch.int64) for n in names}
    for pi, p in enumerate(poolings):
        feats = {}
        for s in sites:
            if not chunks[s.name]:
                continue
            parts = [c[pi] if s.stream == "language" else c for c in chunks[s.name]]
            feats[s.name] = torch.cat(parts)[perm[s.name]].contiguous()
        out[p] = Features(p, list(names), feats, row_map, len(examples), dict(meta))
    return out


def capture(
    model: nn.Module,
    processor,
    examples: Sequence[Encoded],
    *,
    poolings: Sequence[str] = POOLINGS,
    batch_size: int = 8,
    cache_dir: str | Path | None = None,
    model_key: str | None = None,
) -> dict[str, Features]:
    """Pooled features of every layer of ``model`` on ``examples``, one forward per batch.

    Args:
        model: a transformers MLLM (LLaVA, Qwen2-VL) or causal LM.
        processor: its processor (or tokenizer, for text LMs).
        examples: encoded probe set (see :func:`encode_probe`).
        poolings: any of :data:`POOLINGS`; all are computed from the same forward pass.
        batch_size: examples per forward (examples of similar length together, right padding; the results
            do not depend on it, nor on the order of the examples in a batch).
        cache_dir, model_key: when both are given, poolings already cached for
            (model_key, probe set) are read instead of recomputed, and new ones are written.

    Returns:
        ``{pooling: Features}``.
    """
    poolings = _check_poolings(poolings)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1; got {batch_size}")
    if not examples:
        raise ValueError("the probe set is empty")
    probe_key = probe_fingerprint(examples, processor)
    found = cached_features(cache_dir, model_key, probe_key, poolings)
    missing = tuple(p for p in poolings if p not in found)
    if missing:
        meta = {"probe_key": probe_key, "model_key": model_key or "", "model_class": type(model).__name__}
        computed = _capture_pass(model, processor, examples, missing, batch_size, meta)
        if cache_dir is not None and model_key is not None:
            for p, f in computed.items():
                save_features(cache_file(cache_dir, model_key, probe_key, p), f)
        found.update(computed)
    return {p: found[p] for p in poolings}


def capture_dir(
    path: str | Path,
    items: Sequence[Sample | str],
    *,
    poolings: Sequence[str] = POOLINGS,
    batch_size: int = 8,
    cache_dir: str | Path | None = None,
    dtype: torch.dtype | None = None,
    device: str | torch.device | None = None,
) -> dict[str, Features]:
    """:func:`capture` for a saved model folder; on a full cache hit the weights are not loaded."""
    from forgetlab.models.load import load_model, load_processor

    path = Path(path)
    processor = load_processor(path)
    examples = encode_probe(processor, items)
    model_key = model_fingerprint(path, extra=str(dtype or torch.float32))
    poolings = _check_poolings(poolings)
    found = cached_features(cache_dir, model_key, probe_fingerprint(examples, processor), poolings)
    if len(found) == len(poolings):
        return {p: found[p] for p in poolings}
    model = load_model(path, dtype=dtype)
    if device is not None:
        model.to(device)
    return capture(
        model, processor, examples, poolings=poolings, batch_size=batch_size, cache_dir=cache_dir, model_key=model_key
    )
