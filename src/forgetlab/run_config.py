"""``forgetlab run CONFIG``: one experiment from a YAML file (unlearn -> eval -> relearn -> probe -> report).

A config maps 1:1 onto :class:`RunConfig`; every default lives in the models below, the
``unlearn`` section is :class:`~forgetlab.train.unlearn_config.UnlearnConfig` itself. Validation
happens before any model loads and reports *every* error at once, each as ``field.path: message``
(e.g. ``unlearn.lr: Input should be greater than 0``). Relative paths are resolved against the
current working directory. ``forgetlab run CONFIG --check`` validates the config and the model and
data folders without running anything.

Example (``configs/paper/`` holds the paper's settings)::

    name: llava15-7b_mllmu-forget10_mmunlearner
    output: runs/paper/llava15-7b_mllmu-forget10_mmunlearner
    model: {path: models/llava-1.5-7b-hf, source: llava-hf/llava-1.5-7b-hf, dtype: bfloat16}
    benchmark: {name: mllmu, path: data/MLLMU-Bench, forget: 10}
    unlearn: {method: mmunlearner, lr: 2.0e-5, epochs: 1, pairing: interleave, retain_weight: 1.0}
    eval: {protocol: generate}
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import typer
import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from forgetlab.benchmarks import FORGET_PERCENTS, BenchmarkName
from forgetlab.methods.mmunlearner import MMUnlearner
from forgetlab.train.unlearn_config import UnlearnConfig

DType = Literal["float32", "bfloat16", "float16"]
Modality = Literal["vqa", "qa", "both"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelSpec(_Section):
    """The model to unlearn from: a local folder (safetensors weights; never downloaded)."""

    path: Path = Field(description="local model folder (config.json + *.safetensors + processor files)")
    source: str | None = Field(None, description="where to obtain it, e.g. the HF repo id (used in error messages)")
    dtype: DType = Field("float32", description="weight dtype for training and evaluation (bfloat16 halves memory)")
    trust_remote_code: bool = Field(
        False, description="run Python code shipped inside the model folder (off: such folders are refused)"
    )


class BenchmarkSpec(_Section):
    """Which benchmark folder, and which forget split."""

    name: BenchmarkName
    path: Path = Field(description="local copy of the benchmark (MLLMU-Bench layout, or the CLEAR / TOFU HF repo)")
    forget: int = Field(description="forget percentage: 5/10/15 (MLLMU-Bench) or 1/5/10 (CLEAR, TOFU)")
    text: bool = Field(True, description="CLEAR: train on the +tofu configs (faces + the authors' text QA)")
    seed: int = Field(0, description="CLEAR: seed of the MCQ option order")

    @model_validator(mode="after")
    def _forget_percent(self) -> BenchmarkSpec:
        allowed = FORGET_PERCENTS[self.name]
        if self.forget not in allowed:
            raise ValueError(
                f"forget={self.forget} is not a published {self.name} split; choose one of {list(allowed)}"
            )
        return self


class EvalSpec(_Section):
    """How models are evaluated (the benchmark's own metrics; see :mod:`forgetlab.benchmarks`)."""

    protocol: Literal["loglik", "generate"] = Field(
        "loglik", description="MCQ protocol: 'generate' is the reference (greedy letter), 'loglik' the fast one"
    )
    generation: bool = Field(True, description="also score open generation (ROUGE/BLEU, cloze, captions)")
    max_new_tokens: int = Field(32, ge=1)
    batch_size: int = Field(16, ge=1)
    bf16: bool = Field(True, description="on CUDA, evaluate under bf16 autocast (fp32 matmuls are ~15x slower)")


class RelearnSpec(_Section):
    """The relearning attack (SPEC §6): fine-tune on a seeded part of the forget people, measure recovery."""

    enabled: bool = True
    fraction: float = Field(0.5, gt=0, lt=1, description="share of the forget people relearned; the rest are held out")
    lr: float = Field(1e-4, gt=0)
    epochs: int = Field(1, ge=1)
    batch_size: int = Field(8, ge=1)
    modality: Modality | None = Field(None, description="training samples; default vqa (qa for TOFU)")
    seed: int = 0
    save_model: bool = Field(True, description="save the relearned model (the probe compares it too)")


class ProbeSpec(_Section):
    """Layer-wise representation diagnostics of the unlearned (and relearned) model vs the original."""

    enabled: bool = True
    per_group: int = Field(24, ge=4, description="probe samples per group (forget / retain / unrelated)")
    fisher: bool = Field(True, description="also compare per-layer diagonal Fisher")
    fisher_examples: int = Field(24, ge=1)
    batch_size: int = Field(8, ge=1)
    dtype: DType = "float32"
    seed: int = 0


class RunConfig(_Section):
    """One experiment. ``unlearn.forget_ratio`` is set from ``benchmark.forget`` (MLLMU-Bench) and
    must not be given; for CLEAR and TOFU the samples come from the benchmark's own splits."""

    name: str = Field(description="experiment name (report title)")
    output: Path = Field(description="output folder")
    model: ModelSpec
    benchmark: BenchmarkSpec
    unlearn: UnlearnConfig
    eval: EvalSpec = Field(default_factory=EvalSpec)
    relearn: RelearnSpec = Field(default_factory=RelearnSpec)
    probe: ProbeSpec = Field(default_factory=ProbeSpec)

    @model_validator(mode="before")
    @classmethod
    def _fill_unlearn(cls, data: Any) -> Any:
        """Benchmark-dependent defaults of the ``unlearn`` section, set before it is validated."""
        if not isinstance(data, dict) or not isinstance(data.get("unlearn"), dict):
            return data
        bench = data.get("benchmark") if isinstance(data.get("benchmark"), dict) else {}
        unlearn = dict(data["unlearn"])
        if "forget_ratio" in unlearn:
            raise ValueError("unlearn.forget_ratio: set the forget split with benchmark.forget instead")
        forget = bench.get("forget")
        unlearn["forget_ratio"] = forget if bench.get("name") == "mllmu" and isinstance(forget, int) else 10
        if bench.get("name") == "tofu":
            unlearn.setdefault("forget_modality", "qa")
            unlearn.setdefault("retain_modality", "qa")
        return {**data, "unlearn": unlearn}

    @model_validator(mode="after")
    def _cross_fields(self) -> RunConfig:
        u = self.unlearn
        if self.benchmark.name == "tofu":
            if u.forget_modality == "vqa":
                raise ValueError("unlearn.forget_modality: TOFU is text-only; use 'qa'")
            if isinstance(u.build_method(), MMUnlearner) and u.mask is None:
                raise ValueError(
                    "unlearn.method: mmunlearner computes its mask on forget VQA, which text-only TOFU does not "
                    "have; give a precomputed unlearn.mask or pick another method"
                )
            if self.relearn.modality == "vqa":
                raise ValueError("relearn.modality: TOFU is text-only; use 'qa'")
        return self

    def warnings(self) -> list[str]:
        """Settings that are valid but probably not what a careful run wants."""
        out = []
        if self.model.dtype != "float32" and self.unlearn.lora is None:
            out.append(
                f"model.dtype={self.model.dtype}: AdamW on {self.model.dtype} weights rounds away updates smaller "
                f"than ~0.4% of a weight (at lr={self.unlearn.lr:g} most of them); prefer model.dtype=float32 with "
                "unlearn.bf16=true (docs/reproduce-paper-gpu.md)"
            )
        return out

    @property
    def relearn_modality(self) -> str:
        return self.relearn.modality or ("qa" if self.benchmark.name == "tofu" else "vqa")

    def resolved(self) -> dict[str, Any]:
        """JSON-able config with every default filled in (the unlearn method's config included)."""
        return self.model_dump(mode="json") | {"unlearn": self.unlearn.resolved()}


def _set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    node = data
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ValueError(f"--set {key}: {part!r} is not a section")
        node = child
    node[parts[-1]] = value


def load_config(path: Path | str, overrides: dict[str, Any] | None = None) -> RunConfig:
    """Read and validate a YAML run config; ``overrides`` maps dotted keys (``unlearn.lr``) to values."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ValueError(f"{path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: the top level must be a mapping of sections (name, model, benchmark, unlearn, ...)")
    for key, value in (overrides or {}).items():
        _set_dotted(data, key, value)
    return RunConfig.model_validate(data)


def check_paths(config: RunConfig) -> None:
    """The model and benchmark folders exist and hold what the run needs (before anything loads)."""
    from forgetlab.benchmarks import check_folder
    from forgetlab.models.load import ModelPathError, _check_folder

    path, source = config.model.path, config.model.source
    if source and not path.exists():
        raise ModelPathError(
            f"model.path: model folder {path} does not exist; forgetlab never downloads weights. Its source is "
            f"{source}: on a machine with network access run `huggingface-cli download {source} --local-dir {path}` "
            "(and fine-tune it first if the config expects a fine-tuned model, see docs/reproduce-paper-gpu.md)"
        )
    try:
        _check_folder(path)
    except ModelPathError as exc:
        raise ModelPathError(f"model.path: {exc}") from None
    check_folder(config.benchmark.name, config.benchmark.path, config.benchmark.forget)


def run_command(
    config: Annotated[Path, typer.Argument(help="YAML run config (see configs/paper/)")],
    out: Annotated[Path | None, typer.Option(help="output folder (default: the config's output)")] = None,
    check: Annotated[bool, typer.Option("--check", help="validate the config and folders, run nothing")] = False,
    overrides: Annotated[
        list[str] | None, typer.Option("--set", help="override a config field, e.g. --set unlearn.lr=1e-5")
    ] = None,
) -> None:
    """Run one experiment from a config: unlearn -> eval -> relearn -> probe -> report."""
    from forgetlab.train.commands import clean_errors, lazy_progress, parse_overrides, set_threads

    set_threads()
    with clean_errors():
        cfg = load_config(config, parse_overrides(overrides))
        if out is not None:
            cfg = cfg.model_copy(update={"output": out})
        check_paths(cfg)
        for warning in cfg.warnings():
            typer.echo(f"warning: {warning}", err=True)
        if check:
            typer.echo(f"{config}: valid ({cfg.unlearn.method} on {cfg.benchmark.name} forget {cfg.benchmark.forget})")
            return
        from forgetlab.experiment import run_experiment

        with lazy_progress(cfg.name) as update:
            summary = run_experiment(cfg, progress=update)
    typer.echo(f"report: {cfg.output / 'report.html'}  metrics: {cfg.output / 'metrics.json'}", err=True)
    typer.echo(f"{summary['seconds']} s", err=True)
