"""From :class:`Sample` to model batches: chat-formatted prompts, label spans, padding.

One place decides how a question is shown to a model (chat template, image placeholder,
MCQ options) and which tokens carry the loss:

* ``span="answer"`` — only the answer tokens (and the end-of-turn token) are supervised;
* ``span="full"`` — every text token of prompt and answer is supervised, padding and
  image placeholders excluded. This is what the MMUnlearner/MLLMU-Bench reference code
  does, and what lets VQA-only gradient ascent reach the LLM's text knowledge
  (``docs/reference.md#label-span``). Every result records which span it used.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from PIL import Image
from transformers import ProcessorMixin

from forgetlab.data.schema import Sample

Span = Literal["answer", "full"]
SPANS: tuple[str, ...] = ("answer", "full")
IGNORE = -100

#: MLLMU-Bench's MCQ instruction (``eval.py`` lines 359-361, ``docs/reference.md#mcq``): the format the
#: ``generate`` protocol asks in and the tiny original is trained on (``with_options``), one string for both.
MCQ_INSTRUCTION = "Just give ONE letter representing the answer directly."


def option_lines(options: dict[str, str]) -> str:
    """One ``X: option`` line per choice, in the options' order, joined by newlines."""
    return "\n".join(f"{k}: {v}" for k, v in options.items())


def mcq_question(question: str, options: dict[str, str]) -> str:
    """The MCQ user turn: question, one ``X: option`` line per choice, :data:`MCQ_INSTRUCTION` (MLLMU-Bench's
    ``eval.py`` lines 113-127 and 359-361): what ``generate`` asks and what the original is trained on."""
    return f"{question}\n{option_lines(options)}\n{MCQ_INSTRUCTION}"


def chat_messages(question: str, has_image: bool, answer: str | None = None) -> list[dict]:
    """Messages in the transformers multimodal chat format (one user turn, optional answer)."""
    content: list[dict] = [{"type": "image"}] if has_image else []
    content.append({"type": "text", "text": question})
    messages = [{"role": "user", "content": content}]
    if answer is not None:
        messages.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
    return messages


def _tokenizer(processor):
    return getattr(processor, "tokenizer", processor)


_TOKEN_KEYS = ("mm_token_type_ids", "token_type_ids")


def _token_extras(enc: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: enc[k][0] for k in _TOKEN_KEYS if k in enc}


def _encode_text(processor, text: str, image) -> dict[str, torch.Tensor]:
    """Tokenise ``text`` with ``image`` (one image, a list of them in prompt order, or None)."""
    images = [] if image is None else list(image) if isinstance(image, (list, tuple)) else [image]
    if not images:
        enc = _tokenizer(processor)(text, return_tensors="pt", add_special_tokens=False)
    else:
        enc = processor(images=images, text=[text], return_tensors="pt", add_special_tokens=False)
    return {k: v for k, v in enc.items()}


#: prompt of models without a chat template (base LMs, e.g. TOFU's Phi-1.5): TOFU's plain QA format.
PLAIN_PROMPT = "Question: {question}\nAnswer:"


def has_chat_template(processor) -> bool:
    """True when the processor (or its tokenizer) carries a chat template."""
    return bool(getattr(processor, "chat_template", None) or getattr(_tokenizer(processor), "chat_template", None))


def _plain(question: str, has_image: bool) -> str:
    if has_image:
        raise ValueError("the processor has no chat template, so there is no place for the image in the prompt")
    return PLAIN_PROMPT.format(question=question)


def render_prompt(processor, question: str, has_image: bool) -> str:
    """Prompt text up to (and including) the assistant's turn marker (:data:`PLAIN_PROMPT` without a template)."""
    if not has_chat_template(processor):
        return _plain(question, has_image)
    messages = chat_messages(question, has_image)
    return processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def render_turns(processor, turns: Sequence[tuple[bool, str]]) -> str:
    """Prompt of consecutive user turns ``(has_image, text)`` (no assistant turn between them), then the
    assistant's turn marker: MLLMU-Bench's few-shot layout, where worked examples are ``USER:`` turns that
    carry their own answer (``docs/reference.md#mcq``).

    One turn is exactly :func:`render_prompt`. A chat template that refuses consecutive user turns (one
    that enforces alternation) gets them as one user turn with the parts in order, each earlier text
    ending with a newline. Without a chat template the earlier texts come first, one line each, then
    :data:`PLAIN_PROMPT` of the last (text only).
    """
    if not turns:
        raise ValueError("a prompt needs at least one turn")
    if len(turns) == 1:
        return render_prompt(processor, turns[0][1], turns[0][0])
    if not has_chat_template(processor):
        if any(has_image for has_image, _ in turns):
            raise ValueError("the processor has no chat template, so there is no place for the images in the prompt")
        return "".join(f"{text}\n" for _, text in turns[:-1]) + PLAIN_PROMPT.format(question=turns[-1][1])
    from jinja2.exceptions import TemplateError  # chat templates need jinja2 anyway

    messages = [chat_messages(text, has_image)[0] for has_image, text in turns]
    try:
        return processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    except TemplateError:  # e.g. "roles must alternate user/assistant"
        parts: list[dict] = []
        for k, (has_image, text) in enumerate(turns):
            if has_image:
                parts.append({"type": "image"})
            parts.append({"type": "text", "text": text if k == len(turns) - 1 else f"{text}\n"})
        merged = [{"role": "user", "content": parts}]
        return processor.apply_chat_template(merged, tokenize=False, add_generation_prompt=True)


def render_conversation(processor, question: str, has_image: bool, answer: str) -> str:
    """Prompt and answer (with the end-of-turn marker; EOS after :data:`PLAIN_PROMPT`)."""
    if not has_chat_template(processor):
        eos = _tokenizer(processor).eos_token or ""
        return f"{_plain(question, has_image)} {answer}{eos}"
    return processor.apply_chat_template(
        chat_messages(question, has_image, answer), tokenize=False, add_generation_prompt=False
    )


@dataclass
class Encoded:
    """One tokenised example; tensors are unbatched (``pixel_values`` as the processor gives it)."""

    input_ids: torch.Tensor
    labels: torch.Tensor
    pixel_values: torch.Tensor | None = None
    image_grid_thw: torch.Tensor | None = None
    prompt_len: int = 0
    #: per-token tensors some processors add (e.g. Qwen2-VL's ``mm_token_type_ids``), padded with 0
    token_extras: dict[str, torch.Tensor] = field(default_factory=dict)


def image_token_ids(processor) -> set[int]:
    """Ids of the placeholder tokens the processor expands images into."""
    tok = _tokenizer(processor)
    ids = set()
    for name in ("image_token", "video_token", "boi_token", "eoi_token"):
        t = getattr(processor, name, None) or getattr(tok, name, None)
        if isinstance(t, str):
            tid = tok.convert_tokens_to_ids(t)
            if tid is not None and tid != tok.unk_token_id:
                ids.add(tid)
    for t in ("<|vision_start|>", "<|vision_end|>"):
        tid = tok.convert_tokens_to_ids(t)
        if isinstance(tid, int) and tid != tok.unk_token_id:
            ids.add(tid)
    return ids


def encode(
    processor: ProcessorMixin,
    sample: Sample,
    answer: str | None = None,
    *,
    span: Span = "answer",
    with_options: bool = False,
) -> Encoded:
    """Tokenise ``sample`` with ``answer`` (default: its ground truth) as the assistant turn.

    ``with_options`` shows the MCQ options in the prompt (the reference MCQ format).
    """
    if span not in SPANS:
        raise ValueError(f"label span {span!r} is not one of {list(SPANS)}")
    question = sample.question
    if with_options:
        if not sample.options:
            raise ValueError(f"sample {sample.person_id!r} has no options to show: {sample.question!r}")
        question = mcq_question(question, sample.options)
    answer = sample.answer if answer is None else answer
    has_image = sample.image is not None
    prompt = render_prompt(processor, question, has_image)
    full = render_conversation(processor, question, has_image, answer)
    enc = _encode_text(processor, full.rstrip("\n"), sample.image)
    n_prompt = _encode_text(processor, prompt, sample.image)["input_ids"].shape[1]
    ids = enc["input_ids"][0]
    labels = ids.clone()
    if span == "answer":
        labels[:n_prompt] = IGNORE
    else:
        labels[0] = IGNORE  # nothing predicts the first token
        skip = image_token_ids(processor)
        if skip:
            labels[torch.isin(ids, torch.tensor(sorted(skip)))] = IGNORE
    return Encoded(
        input_ids=ids,
        labels=labels,
        pixel_values=enc.get("pixel_values"),
        image_grid_thw=enc.get("image_grid_thw"),
        prompt_len=n_prompt,
        token_extras=_token_extras(enc),
    )


def encode_prompt(processor: ProcessorMixin, sample: Sample, *, with_options: bool = False) -> Encoded:
    """Tokenise only the prompt (for generation and option scoring); labels are all ignored."""
    question = mcq_question(sample.question, sample.options) if with_options else sample.question
    return encode_turns(processor, [(sample.image, question)])


def encode_turns(processor: ProcessorMixin, turns: Sequence[tuple[Image.Image | None, str]]) -> Encoded:
    """Tokenise a prompt of consecutive user turns ``(image or None, text)`` (:func:`render_turns`), every
    image in turn order; labels are all ignored. One turn gives what :func:`encode_prompt` gives."""
    prompt = render_turns(processor, [(image is not None, text) for image, text in turns])
    enc = _encode_text(processor, prompt, [image for image, _ in turns if image is not None])
    ids = enc["input_ids"][0]
    return Encoded(
        input_ids=ids,
        labels=torch.full_like(ids, IGNORE),
        pixel_values=enc.get("pixel_values"),
        image_grid_thw=enc.get("image_grid_thw"),
        prompt_len=len(ids),
        token_extras=_token_extras(enc),
    )


def processor_fingerprint(processor: ProcessorMixin) -> str:
    """Identity of a processor's encoding (vocabulary, chat template, image settings), shared by equal copies.

    Every model folder of a run holds its own copy of the same processor; keying encodings by this
    fingerprint lets all of them share one encoding per question.
    """
    tok = getattr(processor, "tokenizer", processor)
    key = id(tok)
    if key not in _FINGERPRINTS or _FINGERPRINTS[key][0] is not tok:
        backend = getattr(tok, "backend_tokenizer", None)
        text = backend.to_str() if backend is not None else repr(sorted(tok.get_vocab().items()))
        template = getattr(processor, "chat_template", None) or getattr(tok, "chat_template", None) or ""
        images = getattr(processor, "image_processor", None)
        pixels = images.to_json_string() if images is not None else ""
        digest = hashlib.sha256((text + "\0" + str(template) + "\0" + pixels).encode()).hexdigest()
        _FINGERPRINTS[key] = (tok, digest)
    return _FINGERPRINTS[key][1]


_FINGERPRINTS: dict[int, tuple[object, str]] = {}
_ENCODED: dict[tuple, Encoded] = {}
_MAX_ENCODED = 20_000


def encode_cached(
    processor: ProcessorMixin, sample: Sample, answer: str | None = None, *, span: Span = "answer",
    prompt_only: bool = False,
) -> Encoded:  # fmt: skip
    """:func:`encode` (or, with ``prompt_only``, :func:`encode_prompt`), memoised in this process.

    Keyed by :func:`processor_fingerprint`, question, answer, span and image content: evaluation,
    membership inference and probes ask every model of a run the same questions. The result is
    shared: read it, do not modify it (:func:`collate` copies).
    """
    image = sample.image
    pixels = None if image is None else (image.mode, image.size, hashlib.blake2b(image.tobytes()).digest())
    answer = None if prompt_only else (sample.answer if answer is None else answer)
    key = (processor_fingerprint(processor), sample.question, answer, span, prompt_only, pixels)
    if key not in _ENCODED:
        if len(_ENCODED) >= _MAX_ENCODED:
            _ENCODED.clear()
        _ENCODED[key] = (
            encode_prompt(processor, sample) if prompt_only else encode(processor, sample, answer, span=span)
        )
    return _ENCODED[key]


def collate(examples: Sequence[Encoded], pad_id: int, *, left_pad: bool = False) -> dict[str, torch.Tensor]:
    """Pad a list of encoded examples into a batch dict the model (and methods) take.

    Images of the examples that have one are concatenated in order, which is how both
    LLaVA (stacked ``[n_img, 3, H, W]``) and Qwen2-VL (patch rows + ``image_grid_thw``)
    expect them; text-only examples contribute no image.
    """
    if not examples:
        raise ValueError("cannot collate an empty list of examples")
    width = max(len(e.input_ids) for e in examples)
    n = len(examples)
    input_ids = torch.full((n, width), pad_id, dtype=torch.long)
    labels = torch.full((n, width), IGNORE, dtype=torch.long)
    attention = torch.zeros((n, width), dtype=torch.long)
    for i, e in enumerate(examples):
        k = len(e.input_ids)
        sl = slice(width - k, width) if left_pad else slice(0, k)
        input_ids[i, sl] = e.input_ids
        labels[i, sl] = e.labels
        attention[i, sl] = 1
    batch = {"input_ids": input_ids, "attention_mask": attention, "labels": labels}
    for key in {k for e in examples for k in e.token_extras}:
        extra = torch.zeros((n, width), dtype=torch.long)
        for i, e in enumerate(examples):
            if key in e.token_extras:
                k = len(e.input_ids)
                extra[i, slice(width - k, width) if left_pad else slice(0, k)] = e.token_extras[key]
        batch[key] = extra
    pixels = [e.pixel_values for e in examples if e.pixel_values is not None]
    if pixels:
        grids = [e.image_grid_thw for e in examples if e.image_grid_thw is not None]
        if grids:
            batch["pixel_values"] = torch.cat(pixels, dim=0)
            batch["image_grid_thw"] = torch.cat(grids, dim=0)
        else:
            batch["pixel_values"] = torch.cat([p if p.dim() == 4 else p[None] for p in pixels], dim=0)
    return batch


def length_order(examples: Sequence[Encoded]) -> list[int]:
    """Indices of ``examples`` from the shortest to the longest: batches taken in this order carry little padding
    (a caller puts each row's result back at its index)."""
    return sorted(range(len(examples)), key=lambda i: len(examples[i].input_ids))


def length_groups(examples: Sequence[Encoded], max_groups: int = 3, overhead: int = 64) -> list[list[Encoded]]:
    """``examples`` split into at most ``max_groups`` micro-batches of similar length.

    A padded batch costs ``size x longest`` token positions; image examples are several times
    longer than text ones, so a mixed batch is about half padding. Cutting the length-sorted batch
    where that cost (plus ``overhead`` positions per extra forward pass) is smallest keeps the
    *same* examples in the step (the loss is a sum over the groups) and drops most of the padding:
    unlike grouping whole batches by length, every step still mixes every kind of example.
    """
    ordered = sorted(examples, key=lambda e: len(e.input_ids))
    lengths = [len(e.input_ids) for e in ordered]
    n = len(ordered)
    # best[g][j]: least cost of the first j examples in g groups; cut[g][j]: where the last group starts
    inf = float("inf")
    best = [[inf] * (n + 1) for _ in range(max_groups + 1)]
    cut = [[0] * (n + 1) for _ in range(max_groups + 1)]
    best[0][0] = 0
    for g in range(1, max_groups + 1):
        for j in range(1, n + 1):
            for i in range(j):
                cost = best[g - 1][i] + (j - i) * lengths[j - 1] + overhead
                if cost < best[g][j]:
                    best[g][j], cut[g][j] = cost, i
    groups = min(range(1, max_groups + 1), key=lambda g: best[g][n]) if n else 0
    out: list[list[Encoded]] = []
    j = n
    for g in range(groups, 0, -1):
        i = cut[g][j]
        out.append(list(ordered[i:j]))
        j = i
    return out[::-1]
