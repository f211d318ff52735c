"""Knowledge injection: train the "original" model that later gets unlearned.

Recipe (``docs/reference.md#tiny-original``): AdamW at 3e-4 with warm-up and clipping
(1e-3 kills the vision pathway of a tiny LLaVA), a perception stage first (colours,
shapes, generic face features) so the vision tower learns to see before it must
recognise identities; then a pre-training stage on what a real base model knows before
the benchmark's fine-tune (the real-world people of ``Retain_Set``, world knowledge,
perception: MLLMU-Bench's celebrities come from LLaVA's pre-training, not from the
fictitious fine-tune, and are held that strongly); then everything: attribute VQA, naming
VQA, text QA about every person, perception and world knowledge. A share of each epoch's
examples is shown in the reference MCQ format (options + "answer with the letter") with
freshly drawn options, so that the generate-then-parse-letter protocol is meaningful on a
tiny model too.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import torch
from pydantic import BaseModel, Field

from forgetlab.data.collate import Encoded, collate, encode, length_groups
from forgetlab.data.mllmu import available_splits, load_split, load_training, split_ids
from forgetlab.data.schema import FT_SPLIT, HOLDOUT_SPLIT, REALWORLD_SPLIT, Sample
from forgetlab.data.synth import benchmark_digest
from forgetlab.dist.grads import sum_gradients
from forgetlab.dist.shard import Shard
from forgetlab.io import atomic_dir, write_json
from forgetlab.models.groups import module_groups
from forgetlab.models.tiny import TEXT_HIDDEN, TEXT_INTERMEDIATE, Arch, build_tiny_model, save_model
from forgetlab.train.vision_pretrain import pretrain_vision

#: version of the training procedure beyond its config (bumped when the same config trains differently);
#: 2: each batch runs as micro-batches of similar length (same examples per step, less padding);
#: 3: MCQ examples in MLLMU-Bench's format ("Just give ONE letter representing the answer directly.");
#: 4: a language model half as wide (128, MLP 256), 16 epochs of everything with 3 image views per question
RECIPE = 4

#: a trained original model shipped with the package (``forgetlab demo`` copies it instead of training
#: when it was trained with the same config and recipe on a benchmark with the same content hash)
SHIPPED_ORIGINAL = Path(__file__).resolve().parents[1] / "assets" / "original-llava"
#: the retrained (retain-only) gold model of the same benchmark, forget_10 left out (``make gold``)
SHIPPED_GOLD = Path(__file__).resolve().parents[1] / "assets" / "gold-llava-forget10"


class FinetuneConfig(BaseModel):
    """Knowledge-injection hyper-parameters (defaults: the embedded benchmark on 2 CPU cores)."""

    arch: Arch = "llava"
    image_size: int = Field(32, description="input image side in pixels")
    text_hidden: int = Field(TEXT_HIDDEN, gt=0, description="width of the language model")
    text_intermediate: int = Field(TEXT_INTERMEDIATE, gt=0, description="width of the language model's MLP")
    seed: int = 0
    lr: float = Field(3e-4, gt=0, description="peak AdamW LR of the language model (1e-3 fails to learn)")
    vision_lr: float = Field(3e-4, gt=0, description="peak LR of vision tower + projector; >=1e-3 kills them")
    warmup_steps: int = 100
    batch_size: int = 16
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    vision_pretrain_steps: int = Field(800, ge=0, description="steps of vision pre-training on generated images")
    vision_pretrain_lr: float = Field(1e-3, gt=0)
    perception_epochs: int = Field(1, description="epochs on perception data only, before everything")
    pretrain_epochs: int = Field(
        10,
        ge=0,
        description="epochs on what a base model knows before the benchmark's fine-tune (the real-world people of "
        "Retain_Set, world knowledge, perception), after the perception stage and before everything",
    )
    epochs: int = Field(16, description="epochs over all training data")
    mcq_fraction: float = Field(0.15, ge=0, le=1, description="share of image keys also shown as an MCQ each epoch")
    mcq_text_fraction: float = Field(
        0.15, ge=0, le=1, description="share of text-only keys also shown as an MCQ (cheap: no image tokens)"
    )
    views_per_epoch: int = Field(3, ge=1, description="image views of each person shown per question per epoch")
    perception_share: float = Field(0.15, ge=0, le=1, description="share of perception keys per epoch after stage 1")
    exclude_forget: int | None = Field(
        None,
        description="leave out the people of the forget_<N> split (5, 10 or 15) in every stage: the retrained "
        "(retain-only) gold model, trained exactly like the original otherwise (same vocabulary and seed)",
    )
    group_by_length: bool = Field(
        False,
        description="batch examples of similar length (within shuffled pools of 64 batches): ~40% less padding and "
        "~27% faster, but on the embedded benchmark test VQA fell from 0.84 to 0.78-0.80 (batches of one kind)",
    )


def _template(question: str) -> str:
    """Question with capitalised words (names) after the first removed: the answer pool key."""
    words = question.split()
    return " ".join(words[:1] + [w for w in words[1:] if not w[:1].isupper()])


def answer_pools(samples: list[Sample]) -> dict[str, list[str]]:
    """Distinct answers per question template, the pool MCQ distractors are drawn from."""
    pools: dict[str, set[str]] = defaultdict(set)
    for s in samples:
        pools[_template(s.question)].add(s.answer)
    return {k: sorted(v) for k, v in pools.items()}


def as_mcq(sample: Sample, pools: dict[str, list[str]], rng: random.Random) -> Sample | None:
    """The sample as a 4-option MCQ with distractors from its pool (None if the pool is too small)."""
    pool = [a for a in pools.get(_template(sample.question), []) if a != sample.answer]
    if len(pool) < 3:
        return None
    choices = rng.sample(pool, 3) + [sample.answer]
    rng.shuffle(choices)
    letters = "ABCD"
    options = dict(zip(letters, choices, strict=True))
    letter = letters[choices.index(sample.answer)]
    return Sample(
        question=sample.question,
        answer=letter,
        modality=sample.modality,
        task=sample.task,
        person_id=sample.person_id,
        split=sample.split,
        image=sample.image,
        options=options,
        correct=letter,
    )


def is_perception(sample: Sample) -> bool:
    return sample.person_id.lower().startswith("perc")


def base_people(root: Path) -> frozenset[str]:
    """IDs of the real-world people (``Retain_Set``): knowledge a base model brings from its pre-training."""
    return frozenset(split_ids(root, REALWORLD_SPLIT)) if REALWORLD_SPLIT in available_splits(root) else frozenset()


def forget_people(root: Path, percent: int) -> frozenset[str]:
    """IDs of the people of ``forget_<percent>`` (what a retrained gold model never sees)."""
    split = f"forget_{percent:02d}" if f"forget_{percent:02d}" in available_splits(root) else f"forget_{percent}"
    if split not in available_splits(root):
        raise ValueError(f"{root}: no forget split for {percent}% (looked for forget_{percent:02d} and "
                         f"forget_{percent}); splits: {available_splits(root)}")  # fmt: skip
    ids = frozenset(split_ids(root, split))
    if not ids:
        raise ValueError(f"{root}: split {split} names no people")
    return ids


def benchmark_texts(root: Path) -> list[str]:
    """All text of a benchmark folder: what the tiny model's vocabulary is trained on."""
    texts: list[str] = []
    present = available_splits(root)
    # a real model's vocabulary covers words it was never fine-tuned on: the holdout people too
    training = [FT_SPLIT, HOLDOUT_SPLIT] if HOLDOUT_SPLIT in present else [FT_SPLIT]
    for split in training:
        for s in load_training(root, split):
            texts += [s.question, s.answer]
    for split in present:
        if split in (FT_SPLIT, HOLDOUT_SPLIT) or split.startswith(("forget_", "retain_")):
            continue
        for s in load_split(root, split):
            texts += [s.question, s.answer, *(s.options or {}).values()]
    return texts


class EpochSampler:
    """Draws one epoch of encoded examples of a stage: ``"perception"`` (perception keys only),
    ``"pretrain"`` (the people of ``base_ids``, world facts, a share of perception) or ``"all"``.

    Every (person, question) key is shown once per epoch with one of its image views
    drawn at random (the benchmark holds several renderings per person, like several
    photos); perception keys are subsampled after the perception stage; a share of keys
    is shown as an MCQ with freshly drawn options. Encodings are cached, so each distinct
    example is tokenised once.
    """

    def __init__(
        self,
        processor,
        samples: list[Sample],
        config: FinetuneConfig,
        rng: random.Random,
        base_ids: frozenset[str] = frozenset(),
    ) -> None:
        self.processor, self.config, self.rng = processor, config, rng
        self.base_ids = base_ids
        self.pools = answer_pools(samples)
        self.keys: dict[tuple[str, str], list[Sample]] = defaultdict(list)
        for s in samples:
            self.keys[(s.person_id, s.question)].append(s)
        self._cache: dict[tuple, Encoded] = {}

    def _encode(self, sample: Sample, mcq: bool) -> Encoded | None:
        if not mcq:
            key = (id(sample), None)
            if key not in self._cache:
                self._cache[key] = encode(self.processor, sample)
            return self._cache[key]
        m = as_mcq(sample, self.pools, self.rng)  # fresh options: letters cannot be memorised
        return encode(self.processor, m, with_options=True) if m else None

    def epoch(self, stage: str) -> list[Encoded]:
        out: list[Encoded] = []
        for variants in self.keys.values():
            perception = is_perception(variants[0])
            if stage == "perception" and not perception:
                continue
            if stage == "pretrain" and not (perception or self._base(variants[0])):
                continue
            if stage != "perception" and perception and self.rng.random() >= self.config.perception_share:
                continue
            k = min(len(variants), self.config.views_per_epoch)
            for sample in self.rng.sample(variants, k):
                out.append(self._encode(sample, mcq=False))
            share = self.config.mcq_fraction if variants[0].image is not None else self.config.mcq_text_fraction
            if stage != "perception" and self.rng.random() < share:
                e = self._encode(self.rng.choice(variants), mcq=True)
                if e is not None:
                    out.append(e)
        self.rng.shuffle(out)
        return out

    def _base(self, sample: Sample) -> bool:
        """Whether the sample belongs to the pre-training stage (a real-world person or a world fact)."""
        return sample.person_id in self.base_ids or sample.person_id.lower().startswith("world")

    def batches(self, stage: str) -> list[list[Encoded]]:
        """One epoch cut into batches. With ``group_by_length`` the shuffled epoch is split into
        pools of 64 batches, each pool sorted by length before cutting (HF's ``group_by_length``
        idea): image and text examples differ 4x in length, so random batches are ~40% padding.
        The batch order is shuffled again, so an epoch still mixes every kind of example."""
        examples, size = self.epoch(stage), self.config.batch_size
        if not self.config.group_by_length:
            return [examples[k : k + size] for k in range(0, len(examples), size)]
        pool = 64 * size
        out: list[list[Encoded]] = []
        for start in range(0, len(examples), pool):
            chunk = sorted(examples[start : start + pool], key=lambda e: len(e.input_ids))
            out += [chunk[k : k + size] for k in range(0, len(chunk), size)]
        self.rng.shuffle(out)
        return out

    def n_keys(self, stage: str) -> int:
        """Expected examples per epoch of ``stage`` (for the progress bar and LR schedule)."""
        perc = sum(1 for v in self.keys.values() if is_perception(v[0]))
        if stage == "perception":
            return perc
        other = sum(
            min(len(v), self.config.views_per_epoch)
            for v in self.keys.values()
            if not is_perception(v[0]) and (stage != "pretrain" or self._base(v[0]))
        )
        return round((other + perc * self.config.perception_share) * (1 + self.config.mcq_fraction))


def finetune(
    data: Path,
    out: Path,
    config: FinetuneConfig | None = None,
    progress: Callable[[str, int, int], None] | None = None,
    verbose: bool = False,
    on_epoch_end: Callable[[str, int, torch.nn.Module], dict | None] | None = None,
    shard: Shard | None = None,
) -> dict:
    """Train a tiny model on ``data``'s ``ft_Data`` and save it (atomically) to ``out``.

    Returns the training summary (also written to ``out/finetune.json``). Under ``accelerate
    launch`` (``shard``, default :meth:`Shard.current`) every process takes its part of each global
    batch and gradients are summed (data parallel): N processes train what one process trains, up
    to float summation order; the main process saves.
    """
    config = config or FinetuneConfig()
    shard = shard or Shard.current()
    t_start = time.time()
    torch.manual_seed(config.seed)
    rng = random.Random(config.seed)
    samples = load_training(data, "ft_Data")
    if not samples:
        raise ValueError(f"{data}: ft_Data holds no training pairs")
    excluded = forget_people(data, config.exclude_forget) if config.exclude_forget else frozenset()
    n_all = len(samples)
    samples = [s for s in samples if s.person_id not in excluded]
    model, processor = build_tiny_model(
        config.arch, benchmark_texts(data), config.image_size, config.seed,
        hidden=config.text_hidden, intermediate=config.text_intermediate,
    )  # fmt: skip
    pad_id = processor.tokenizer.pad_token_id
    sampler = EpochSampler(processor, samples, config, rng, base_people(data))
    vision_summary = None
    if config.vision_pretrain_steps:
        vision_summary = pretrain_vision(
            model,
            processor,
            steps=config.vision_pretrain_steps,
            lr=config.vision_pretrain_lr,
            seed=config.seed,
            shard=shard,
        )
        if verbose:
            print("vision pre-training", vision_summary, flush=True)

    stages = [("perception", config.perception_epochs), ("pretrain", config.pretrain_epochs), ("all", config.epochs)]
    n_steps = sum(e * math.ceil(sampler.n_keys(st) / config.batch_size) for st, e in stages)
    groups = module_groups(model)
    vision = groups["vision"] | groups["projector"]
    named = dict(model.named_parameters())
    optimizer = torch.optim.AdamW(
        [
            {"params": [p for n, p in named.items() if n in vision], "lr": config.vision_lr},
            {"params": [p for n, p in named.items() if n not in vision], "lr": config.lr},
        ],
        weight_decay=config.weight_decay,
        fused=True,  # one kernel per step instead of ~10 per tensor: ~10% of a tiny model's step
    )
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: (
            min(1.0, (step + 1) / config.warmup_steps) * 0.5 * (1 + math.cos(math.pi * min(step, n_steps) / n_steps))
        ),
    )
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    log: list[dict] = []
    step, seen, t0 = 0, 0, time.time()
    for stage, epochs in stages:
        for epoch in range(epochs):
            batches = sampler.batches(stage)  # the same global batches on every process (same rng)
            total, n_examples = 0.0, 0
            for chunk in batches:
                loss = _batch_loss(model, chunk, pad_id, shard)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                sum_gradients(params, shard)
                # the global loss and gradient norm agree on every process: all stop together
                global_loss = shard.sum_floats({"loss": loss.item()})["loss"]
                norm = torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
                if not (math.isfinite(global_loss) and torch.isfinite(norm)):
                    raise FloatingPointError(f"non-finite training loss at step {step} ({stage} epoch {epoch})")
                optimizer.step()
                schedule.step()
                step += 1
                total += global_loss * len(chunk)
                n_examples += len(chunk)
                if progress:
                    progress(stage, step, max(n_steps, step))
                if verbose and step % 100 == 0:
                    print(f"step {step}/{n_steps} {stage} loss {global_loss:.3f} {time.time() - t0:.0f}s", flush=True)
            seen += n_examples
            log.append(
                {
                    "stage": stage,
                    "epoch": epoch,
                    "loss": total / max(n_examples, 1),
                    "step": step,
                    "seconds": round(time.time() - t0, 1),
                }
            )
            if on_epoch_end is not None:
                model.eval()
                log[-1] |= on_epoch_end(stage, epoch, model) or {}
                model.train()
            if verbose:
                print(log[-1], flush=True)
    summary = {
        "config": config.model_dump(),
        "data": str(data),
        "data_digest": benchmark_digest(Path(data)),
        "n_train_pairs": len(samples),
        "excluded": {"people": len(excluded), "pairs": n_all - len(samples)} if excluded else None,
        "examples_seen": seen,
        "processes": shard.world,
        "recipe": RECIPE,
        "torch_threads": torch.get_num_threads(),
        "vision_pretrain": vision_summary,
        "total_seconds": round(time.time() - t_start, 1),
        "steps": step,
        "seconds": round(time.time() - t0, 1),
        "log": log,
    }
    model.eval()
    if shard.is_main:  # every process holds the same weights; one writes them
        with atomic_dir(out) as tmp:
            save_model(model, processor, tmp)
            write_json(tmp / "finetune.json", summary)
    shard.barrier()
    return summary


def _batch_loss(model: torch.nn.Module, chunk: list[Encoded], pad_id: int, shard: Shard) -> torch.Tensor:
    """This process's share of the mean next-token NLL over the global batch ``chunk``.

    Each process takes its part of the batch, runs it as micro-batches of similar length
    (:func:`~forgetlab.data.collate.length_groups`: the same examples, a third less compute) and
    returns its summed NLL over the global count of supervised tokens, so the shares of all
    processes add up to the mean over the whole batch (one process: exactly that mean). A process
    whose part is empty computes on a stand-in example with nothing supervised.
    """
    mine = shard.part(chunk)
    nll, count = torch.zeros(()), torch.zeros((), dtype=torch.long)
    for group in length_groups(mine or chunk[:1]):
        batch = collate(group, pad_id)
        labels = batch.pop("labels")[:, 1:]
        if not mine:
            labels = torch.full_like(labels, -100)
        logits = model(**batch).logits[:, :-1]
        nll = nll + torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.size(-1)), labels.reshape(-1), ignore_index=-100, reduction="sum"
        )
        count = count + (labels != -100).sum()
    shard.all_sum([count])
    if not int(count):
        raise ValueError("a training batch has no supervised tokens (every label is -100)")
    return nll / count


def load_summary(model_dir: Path) -> dict | None:
    path = Path(model_dir) / "finetune.json"
    return json.loads(path.read_text()) if path.exists() else None


def trained_as(model_dir: Path, config: FinetuneConfig, data_digest: str) -> bool:
    """Whether ``model_dir`` holds a model trained with ``config`` and this recipe on data with this digest."""
    info = load_summary(model_dir)
    return (
        info is not None
        and (Path(model_dir) / "config.json").exists()
        and info.get("config") == config.model_dump()
        and info.get("recipe") == RECIPE
        and info.get("data_digest") == data_digest
    )
