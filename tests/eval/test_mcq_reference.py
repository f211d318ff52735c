"""The ``generate`` MCQ protocol against MLLMU-Bench's ``eval.py`` (github.com/franciscoliu/MLLMU-Bench, 0e3098e).

The prompts are built on a folder in the benchmark's published schema (``bench_fixtures.write_mllmu``)
and compared, string for string, with the reference's format (``docs/reference.md#mcq``):

* an evaluated MCQ (eval.py 113-127, 359-361, 413-416): ``USER: <image>\\n`` (text questions: ``USER:\\n``),
  the question, ``A: ...`` to ``D: ...`` one per line, "Just give ONE letter representing the answer
  directly.", ``\\nASSISTANT:``;
* each worked example before it (eval.py 345-357, 399-411): ``USER: <image>\\n`` (``USER:\\n``),
  ``Question: `` + the question, the option lines, ``Correct Answer: X``, a newline; no assistant turn.

The expected strings are written out here by hand, once literally and once by an independent
formatter that reads the parquet rows with pyarrow (not through forgetlab's loader).
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from bench_fixtures import write_mllmu
from forgetlab.data.collate import encode_prompt, encode_turns, render_turns
from forgetlab.eval.mcq import answer_mcq, first_letter, generate_prompt, generate_turns
from forgetlab.eval.runner import (
    FEW_SHOT_SETS,
    EvalConfig,
    evaluate,
    few_shot_examples,
    is_worked_example,
    load_eval_sets,
    one_rendering,
)
from forgetlab.models.tiny import build_tiny_model

INSTRUCTION = "Just give ONE letter representing the answer directly."


@pytest.fixture(scope="module")
def mllmu(tmp_path_factory) -> Path:
    return write_mllmu(tmp_path_factory.mktemp("mllmu-ref") / "MLLMU-Bench")


@pytest.fixture(scope="module")
def sets(mllmu):
    return load_eval_sets(mllmu, 10, ("forget", "test", "retain", "realworld"))


@pytest.fixture(scope="module")
def tiny(sets):
    """A tiny LLaVA whose chat template is LLaVA-1.5's ``USER: <image>\\n... ASSISTANT:`` conversation."""
    texts = [s.question for v in sets.values() for s in v]
    texts += [o for v in sets.values() for s in v if s.options for o in s.options.values()]
    torch.manual_seed(0)
    model, processor = build_tiny_model("llava", texts, image_size=16, seed=0)
    model.eval()
    return model, processor


# --------------------------------------------------------------------------- literal expectations

#: forget_10 of the fixture holds persons 1 and 2; seed 0 draws person 1 as the worked examples.
#: Person 2's first image question, after person 1's two image questions (Full_Set), LLaVA-wrapped:
EXPECTED_IMAGE_PROMPT = (
    "USER: <image>\n"
    "Question: Where was the person in the image born?\n"
    "A: Oslo\nB: Lima\nC: Rome\nD: Kyiv\n"
    "Correct Answer: B\n"
    "USER: <image>\n"
    "Question: What is the job of the person in the image?\n"
    "A: pilot\nB: nurse\nC: baker\nD: judge\n"
    "Correct Answer: C\n"
    "USER: <image>\n"
    "Where was the person in the image born?\n"
    "A: Oslo\nB: Lima\nC: Rome\nD: Kyiv\n"
    "Just give ONE letter representing the answer directly.\n"
    "ASSISTANT:"
)
#: person 2's first text question after person 1's two text questions (the reference's wrapper has
#: ``USER:\n`` where the tiny LLaVA's chat template writes ``USER: ``; the user turns are equal)
EXPECTED_TEXT_PROMPT = (
    "USER:\n"
    "Question: Where was Person1 Name1 born?\n"
    "A: Oslo\nB: Rome\nC: Kyiv\nD: Lima\n"
    "Correct Answer: D\n"
    "USER:\n"
    "Question: What is the job of Person1 Name1?\n"
    "A: baker\nB: pilot\nC: nurse\nD: judge\n"
    "Correct Answer: A\n"
    "USER:\n"
    "Where was Person2 Name2 born?\n"
    "A: Rome\nB: Oslo\nC: Lima\nD: Kyiv\n"
    "Just give ONE letter representing the answer directly.\n"
    "ASSISTANT:"
)
#: zero-shot: the user turn alone
EXPECTED_ZERO_SHOT_IMAGE_PROMPT = (
    "USER: <image>\n"
    "Where was the person in the image born?\n"
    "A: Oslo\nB: Lima\nC: Rome\nD: Kyiv\n"
    "Just give ONE letter representing the answer directly.\n"
    "ASSISTANT:"
)


def _tiny_llava(reference: str) -> str:
    """The reference's text-question wrapper ``USER:\\n`` as the tiny LLaVA chat template writes it."""
    return reference.replace("USER:\n", "USER: ")


def test_prompts_equal_the_literal_reference_strings(sets, mllmu, tiny):
    _, processor = tiny
    person, shots = few_shot_examples(mllmu, "forget", sets["forget"], seed=0)
    assert person == "1"
    assert {s.split for s in shots} == {"Full_Set"} and len(shots) == 4  # 2 image + 2 text MCQs
    mcq = [s for s in sets["forget"] if s.task == "classification" and s.person_id == "2"]
    image_q = next(s for s in mcq if s.modality == "vqa")
    text_q = next(s for s in mcq if s.modality == "qa")
    assert generate_prompt(processor, image_q, shots) == EXPECTED_IMAGE_PROMPT
    assert generate_prompt(processor, text_q, shots) == _tiny_llava(EXPECTED_TEXT_PROMPT)
    assert generate_prompt(processor, image_q) == EXPECTED_ZERO_SHOT_IMAGE_PROMPT
    # the user turns themselves, template aside: the reference's segments between the role markers
    turns = [text for _, text in generate_turns(text_q, shots)]
    assert turns == [t.rstrip("\n") for t in EXPECTED_TEXT_PROMPT.removesuffix("ASSISTANT:").split("USER:\n")[1:]]
    assert [image is not None for image, _ in generate_turns(image_q, shots)] == [True, True, True]
    assert [image is not None for image, _ in generate_turns(text_q, shots)] == [False, False, False]


# --------------------------------------------------------------------------- every question of every set


def _rows(root: Path, split: str) -> list[dict]:
    return pq.read_table(root / split / "train-00000-of-00001.parquet").to_pylist()


def _as_dict(value):
    return json.loads(value) if isinstance(value, str) else value


def _reference_lines(item: dict) -> str:
    options = _as_dict(item["Options"])
    return "".join(f"{k}: {options[k]}\n" for k in "ABCD")


def _reference_prompts(root: Path, split: str, person: str | None) -> dict[tuple[str, str, int], str]:
    """The reference's prompt of every scored MCQ of ``split``, keyed (ID, kind, index), written from its format:
    worked examples of ``person`` (its Full_Set row) when few-shot, the evaluated question last. ``Test_Set``
    is restricted to the forget split's people, as the reference's test mode does."""
    full = {r["ID"]: r for r in _rows(root, "Full_Set")}
    shot_tasks = _as_dict(full[person]["Classification_Task"]) if person else {}
    forget = {r["ID"] for r in _rows(root, "forget_10")}
    out = {}
    for row in _rows(root, split):
        if split == "Test_Set" and row["ID"] not in forget:
            continue
        tasks = _as_dict(row["Classification_Task"])
        for kind, head in (("Image_Textual_Questions", "USER: <image>\n"), ("Pure_Text_Questions", "USER:\n")):
            shots = shot_tasks.get(kind, [])
            for index, item in enumerate(tasks[kind]):
                if row["ID"] == person and index < len(shots):
                    continue  # a worked example is not scored
                prompt = "".join(
                    f"{head}Question: {s['Question']}\n{_reference_lines(s)}Correct Answer: {s['Correct_Answer']}\n"
                    for s in shots
                )
                prompt += f"{head}{item['Question']}\n{_reference_lines(item)}{INSTRUCTION}\nASSISTANT:"
                out[(row["ID"], kind.removesuffix("_Questions"), index)] = prompt
    return out


FOLDERS = {"forget": "forget_10", "test": "Test_Set", "retain": "retain_90", "realworld": "Retain_Set"}


@pytest.mark.parametrize("few_shot", [False, True])
def test_every_prompt_equals_the_reference_format(sets, mllmu, tiny, few_shot):
    _, processor = tiny
    for name, samples in sets.items():
        person, shots = None, []
        if few_shot and name in FEW_SHOT_SETS:  # the reference's modes forget, test, retain_shared
            person, shots = few_shot_examples(mllmu, name, samples, seed=0)
        expected = _reference_prompts(mllmu, FOLDERS[name], person)
        scored = [s for s in samples if s.task == "classification" and not is_worked_example(s, person, shots)]
        keys = {(s.person_id, s.meta["qtype"], int(s.meta["index"])) for s in scored}
        assert keys == set(expected), name
        for s in scored:
            want = expected[(s.person_id, s.meta["qtype"], int(s.meta["index"]))]
            assert generate_prompt(processor, s, shots) == _tiny_llava(want), (name, s.person_id, s.question)


# --------------------------------------------------------------------------- options: person, rendering, skip


def test_few_shot_person_is_seeded_and_from_the_set(sets, mllmu):
    for name in FEW_SHOT_SETS:
        ids = {s.person_id for s in sets[name]}
        drawn = {few_shot_examples(mllmu, name, sets[name], seed=k)[0] for k in range(12)}
        assert drawn <= ids
        assert few_shot_examples(mllmu, name, sets[name], seed=3) == few_shot_examples(mllmu, name, sets[name], seed=3)
    assert len({few_shot_examples(mllmu, "retain", sets["retain"], seed=k)[0] for k in range(12)}) > 1


def test_test_images_one_keeps_one_seeded_rendering_per_person(sets):
    test = sets["test"]
    one = one_rendering(test, seed=0)
    vqa = [s for s in one if s.modality == "vqa"]
    views = {}
    for s in vqa:
        views.setdefault(s.person_id, set()).add(s.meta["view"])
    assert all(len(v) == 1 for v in views.values()) and set(views) == {s.person_id for s in test}
    assert len(vqa) == len([s for s in test if s.modality == "vqa"]) // 2  # 2 renderings per person
    assert [s for s in one if s.modality == "qa"] == [s for s in test if s.modality == "qa"]
    assert one_rendering(test, seed=0) == one  # seeded

    def drawn(seed: int) -> set[tuple[str, str]]:
        return {(s.person_id, s.meta["view"]) for s in one_rendering(test, seed) if s.modality == "vqa"}

    assert any(drawn(k) != drawn(0) for k in range(1, 8))  # another seed draws other renderings


def test_evaluate_generate_few_shot_and_one_rendering(sets, mllmu, tiny):
    model, processor = tiny
    mcq = {k: [s for s in v if s.task == "classification"] for k, v in sets.items()}
    base = evaluate(model, processor, mllmu, EvalConfig(protocol="generate", generation=False), eval_sets=mcq)
    ref = EvalConfig(protocol="generate", generation=False, few_shot=True, test_images="one", seed=0)
    result = evaluate(model, processor, mllmu, ref, eval_sets=mcq)
    m, b = result.metrics, base.metrics
    # the few-shot person's 2 image + 2 text questions are not scored in forget, test and retain
    for name in FEW_SHOT_SETS:
        assert m[f"{name}_qa_n"] == b[f"{name}_qa_n"] - 2
    assert m["forget_vqa_n"] == b["forget_vqa_n"] - 2 and m["retain_vqa_n"] == b["retain_vqa_n"] - 2
    assert m["test_vqa_n"] == b["test_vqa_n"] // 2 - 2  # one rendering, then the worked examples
    assert m["realworld_vqa_n"] == b["realworld_vqa_n"] and m["realworld_qa_n"] == b["realworld_qa_n"]
    rows = [r for r in result.rows if r["task"] == "classification"]
    people = {r["set"]: r["few_shot_id"] for r in rows}
    assert people["realworld"] is None and all(people[n] is not None for n in FEW_SHOT_SETS)
    assert not any(r["id"] == people[r["set"]] for r in rows)
    assert all("acc_norm" not in k for k in m)
    again = evaluate(model, processor, mllmu, ref, eval_sets=mcq)
    assert again.metrics == m and [r["generated"] for r in again.rows] == [r["generated"] for r in result.rows]


def test_generate_options_are_checked(sets, mllmu, tiny):
    model, processor = tiny
    with pytest.raises(ValueError, match="generate"):
        evaluate(model, processor, mllmu, EvalConfig(few_shot=True, generation=False), eval_sets={})
    with pytest.raises(ValueError, match="test_images"):
        EvalConfig(test_images="some").check()  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="letter"):
        EvalConfig(protocol="generate", letter="regex").check()  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="generate"):
        answer_mcq(model, processor, [], "loglik", shots=[sets["forget"][0]])


# --------------------------------------------------------------------------- letter, decoding, encoding


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("B", "B"),
        ("b", "B"),
        ("  C. Rome", "C"),
        ("D: Kyiv", "D"),
        ("(B)", None),  # the reference reads the first character only
        ("**B**", None),
        ("The answer is B", None),
        ("E", None),
        ("", None),
        ("ASSISTANT: B", None),  # the reference keeps only what precedes a second ASSISTANT:
        ("A ASSISTANT: C", "A"),
    ],
)
def test_first_letter_is_the_reference_rule(text, expected):
    assert first_letter(text, "ABCD") == expected


def test_letter_rule_and_decoding_length(sets, tiny):
    model, processor = tiny
    qs = [s for s in sets["forget"] if s.task == "classification"][:3]
    first = answer_mcq(model, processor, qs, "generate", max_new_tokens=50)
    assert all(len(processor.tokenizer(c.generated, add_special_tokens=False).input_ids) <= 50 for c in first)
    short = answer_mcq(model, processor, qs, "generate", max_new_tokens=2, letter="alnum")
    assert all(len(c.generated.split()) <= 2 for c in short)
    assert all(c.predicted in (None, "A", "B", "C", "D") for c in first + short)


def test_encode_turns_one_turn_is_encode_prompt_and_images_follow_turns(sets, tiny):
    _, processor = tiny
    image_q = next(s for s in sets["forget"] if s.task == "classification" and s.modality == "vqa")
    one = encode_turns(processor, [(image_q.image, image_q.question)])
    ref = encode_prompt(processor, image_q)
    assert torch.equal(one.input_ids, ref.input_ids) and torch.equal(one.pixel_values, ref.pixel_values)
    shots = [s for s in sets["retain"] if s.task == "classification" and s.modality == "vqa"][:2]
    many = encode_turns(processor, generate_turns(image_q, shots))
    assert many.pixel_values.shape[0] == 3
    image_id = processor.tokenizer.convert_tokens_to_ids("<image>")
    per_image = int((ref.input_ids == image_id).sum())
    assert int((many.input_ids == image_id).sum()) == 3 * per_image


def test_alternating_template_and_no_template(sets):
    """A template that refuses consecutive user turns gets one user turn with the parts in order; a model
    without a template gets the worked examples as lines before its plain question."""
    from forgetlab.models.tiny import build_tokenizer

    texts = [s.question for s in sets["forget"]]
    tok = build_tokenizer(texts)
    tok.chat_template = (
        "{% for m in messages %}{% if (m['role'] == 'user') != (loop.index0 % 2 == 0) %}"
        "{{ raise_exception('roles must alternate') }}{% endif %}"
        "[{{ m['role'] }}]{% for p in m['content'] %}{{ p['text'] }}{% endfor %}{% endfor %}"
        "{% if add_generation_prompt %}[assistant]{% endif %}"
    )
    assert render_turns(tok, [(False, "one"), (False, "two")]) == "[user]one\ntwo[assistant]"
    tok.chat_template = None
    assert render_turns(tok, [(False, "one"), (False, "two")]) == "one\nQuestion: two\nAnswer:"
    with pytest.raises(ValueError, match="chat template"):
        render_turns(tok, [(True, "one"), (False, "two")])


def test_cli_eval_reference_options(tmp_path, mllmu, tiny):
    from typer.testing import CliRunner

    from forgetlab.cli import app
    from forgetlab.models.tiny import save_model

    model, processor = tiny
    save_model(model, processor, tmp_path / "m")
    base = ["eval", "--model", str(tmp_path / "m"), "--data", str(mllmu), "--no-generation"]
    cli = CliRunner()
    bad = cli.invoke(app, [*base, "--out", str(tmp_path / "bad"), "--few-shot"])
    assert bad.exit_code != 0 and "--few-shot" in bad.output and "Traceback" not in bad.output
    args = ["--protocol", "generate", "--few-shot", "--test-images", "one", "--seed", "1"]
    r = cli.invoke(app, [*base, "--out", str(tmp_path / "o"), *args])
    assert r.exit_code == 0, r.output
    summary = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert (summary["protocol"], summary["few_shot"], summary["test_images"], summary["seed"]) == (
        "generate", True, "one", 1,
    )  # fmt: skip
    assert summary["metrics"]["test_vqa_n"] == 2  # 2 forget people x 2 questions x 1 rendering, less 2 examples
