"""TOFU (Maini et al., arXiv 2401.06121, HF ``locuslab/TOFU``) from a local copy of the dataset repo.

Text-only: 200 fictitious authors, 20 question/answer pairs each. Configs (the repo keeps them
as ``<config>.json`` JSON-lines files; parquet folders are accepted too, see
:mod:`forgetlab.data.hf_local`):

* ``forget01/05/10``, ``retain99/95/90``, ``full``, ``holdout01/05/10``: ``question, answer``;
* ``forgetXX_perturbed``, ``retain_perturbed``, ``real_authors_perturbed``, ``world_facts_perturbed``:
  ``question, answer, paraphrased_answer, perturbed_answer`` (a list of wrong answers) and, in
  some of them, ``paraphrased_question``.

Training configs become QA :class:`~forgetlab.data.schema.Sample` lists; the perturbed configs
become :class:`TruthRatioItem` lists, the inputs of TOFU's metrics (answer probability, ROUGE-L
and truth ratio; see :mod:`forgetlab.eval.tofu`). Person IDs are ``author<k>``: block ``k`` of
20 consecutive rows of the config (TOFU's storage order; the real-author and world-fact configs
have no authors and get one ID per row).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from forgetlab.data.hf_local import available_configs, read_config, split_configs, text_list, text_value
from forgetlab.data.schema import Sample

REPO = "locuslab/TOFU"
FORGET_PERCENTS: tuple[int, ...] = (1, 5, 10)
QUESTIONS_PER_AUTHOR = 20
#: evaluation set name -> perturbed config (``{f}`` = the forget config, e.g. ``forget05``).
EVAL_CONFIGS: dict[str, str] = {
    "forget": "{f}_perturbed",
    "retain": "retain_perturbed",
    "real_authors": "real_authors_perturbed",
    "world_facts": "world_facts_perturbed",
}
#: sets whose rows are not fictitious authors (one ID per row).
_NO_AUTHORS = ("real_authors", "world_facts")


@dataclass(frozen=True)
class TruthRatioItem:
    """One perturbed-config row: the inputs of TOFU's probability, ROUGE-L and truth-ratio metrics."""

    question: str
    answer: str
    paraphrased_answer: str
    perturbed_answers: tuple[str, ...]
    person_id: str
    split: str
    row: int

    def as_sample(self) -> Sample:
        """The question with its true answer, as a QA generation sample."""
        return Sample(self.question, self.answer, "qa", "generation", self.person_id, self.split,
                      meta={"row": str(self.row)})  # fmt: skip


def forget_config(percent: int) -> str:
    """``forget05`` for 5."""
    return split_configs("TOFU", percent, FORGET_PERCENTS)[0]


def retain_config(percent: int) -> str:
    """``retain95`` for a forget percentage of 5."""
    return split_configs("TOFU", percent, FORGET_PERCENTS)[1]


def holdout_config(percent: int) -> str:
    """``holdout05`` for 5 (authors never trained on, the same size as the forget set)."""
    forget_config(percent)
    return f"holdout{percent:02d}"


def configs(root: Path | str) -> list[str]:
    """The TOFU configs present under ``root``."""
    return available_configs(root, REPO)


def _author(config: str, row: int) -> str:
    if config.startswith(("real_authors", "world_facts")):
        return f"{config}#{row}"
    return f"author{row // QUESTIONS_PER_AUTHOR:03d}"


def load_qa(root: Path | str, config: str) -> list[Sample]:
    """QA training samples (task ``"train"``) of a ``forgetXX``/``retainXX``/``holdoutXX``/``full`` config."""
    rows = read_config(root, config, repo=REPO, required=["question", "answer"])
    out = []
    for i, row in enumerate(rows):
        where = f"TOFU config {config!r}, row {i}"
        q, a = text_value(row, "question", where), text_value(row, "answer", where)
        out.append(Sample(q, a, "qa", "train", _author(config, i), config, meta={"row": str(i)}))
    return out


def load_perturbed(root: Path | str, config: str) -> list[TruthRatioItem]:
    """:class:`TruthRatioItem` rows of a perturbed config (``perturbed_answer`` may be a list or one string)."""
    required = ["question", "answer", "paraphrased_answer", "perturbed_answer"]
    rows = read_config(root, config, repo=REPO, required=required)
    out = []
    for i, row in enumerate(rows):
        where = f"TOFU config {config!r}, row {i}"
        out.append(
            TruthRatioItem(
                question=text_value(row, "question", where),
                answer=text_value(row, "answer", where),
                paraphrased_answer=text_value(row, "paraphrased_answer", where),
                perturbed_answers=tuple(text_list(row, "perturbed_answer", where)),
                person_id=_author(config, i),
                split=config,
                row=i,
            )
        )
    return out


def eval_sets(root: Path | str, percent: int) -> dict[str, list[TruthRatioItem]]:
    """``forget``, ``retain``, ``real_authors``, ``world_facts`` items (the last two when present)."""
    present = set(configs(root))
    out: dict[str, list[TruthRatioItem]] = {}
    for name, pattern in EVAL_CONFIGS.items():
        config = pattern.format(f=forget_config(percent))
        if name in _NO_AUTHORS and config not in present:
            continue
        out[name] = load_perturbed(root, config)
    return out
