"""A study is one YAML file: benchmark, forget ratio, model, runs, selection, verification, report.

Every section maps 1:1 onto a pydantic model below, every default lives here, and unknown keys are
errors naming the key. Validation happens before any model loads and reports every error at once
(``runs.2.lrs: ...``). ``forgetlab run STUDY [--set key=value]`` runs it; ``configs/demo.yaml`` is the
demo's study. Example::

    name: my-study
    benchmark: {kind: mllmu, path: data/MLLMU-Bench}     # or {kind: embedded, people: 100, seed: 0}
    forget_ratio: 10
    model: {source: path, path: models/llava-1.5-7b-finetuned}   # or source: shipped / finetune
    schedule: {epochs: 1, batch_size: 8, span: full, forget_modality: vqa}
    runs:
      - {method: ga, lrs: [1.0e-5, 3.0e-5]}
      - {method: mmunlearner, lrs: [1.0e-5], args: {groups: language}}
    selection: {target: 0.40}
    verify: {models: chosen, relearn: {lr: 1.0e-4}, probe: {per_group: 24}}

``schedule`` holds :class:`~forgetlab.train.unlearn_config.UnlearnConfig` fields shared by every run
(a run's own ``schedule`` overrides them); ``args`` are the method's config fields.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from forgetlab.train.finetune import FinetuneConfig
from forgetlab.train.unlearn_config import UnlearnConfig
from forgetlab.verify.assess import VerifySettings

#: UnlearnConfig fields a study sets itself (not through ``schedule``)
RUN_FIELDS = frozenset({"method", "method_args", "lr", "forget_ratio", "mask"})
#: forget percentages each benchmark publishes (the embedded one has MLLMU-Bench's)
FORGET_PERCENTS: dict[str, tuple[int, ...]] = {"embedded": (5, 10, 15), "mllmu": (5, 10, 15), "clear": (1, 5, 10),
                                               "tofu": (1, 5, 10)}  # fmt: skip


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class EmbeddedBenchmark(_Section):
    """The synthetic benchmark in MLLMU-Bench's format, generated into ``<out>/data``."""

    kind: Literal["embedded"] = "embedded"
    people: int = Field(100, ge=10, description="fictitious people")
    seed: int = Field(0, description="generator seed (faces, profiles, splits)")
    train_views: int = Field(8, ge=1, description="training renderings per person")


class FolderBenchmark(_Section):
    """A local copy of MLLMU-Bench, CLEAR or TOFU (never downloaded)."""

    kind: Literal["mllmu", "clear", "tofu"]
    path: Path = Field(description="the benchmark folder")
    text: bool = Field(True, description="CLEAR: train on the +tofu configs (faces + the authors' text QA)")
    seed: int = Field(0, description="CLEAR: seed of the MCQ option order")


Benchmark = Annotated[EmbeddedBenchmark | FolderBenchmark, Field(discriminator="kind")]


class ModelSpec(_Section):
    """The original model: the one shipped with forgetlab, one fine-tuned here, or a local folder."""

    source: Literal["shipped", "finetune", "path"] = Field(
        "shipped",
        description="shipped: the embedded benchmark's original shipped with forgetlab (trained here when its "
        "config or data differ); finetune: knowledge injection on the benchmark; path: a local model folder",
    )
    path: Path | None = Field(None, description="source=path: the model folder (config.json + safetensors)")
    gold_path: Path | None = Field(
        None, description="source=path: a retain-only (retrained) model folder, the yardstick of Forget Quality, "
        "PrivLeak and the gap to retraining (other sources retrain it here, or ship it)",
    )  # fmt: skip
    hub_id: str | None = Field(None, description="where to obtain the folder (named in the missing-folder error)")
    finetune: FinetuneConfig | None = Field(
        None, description="knowledge-injection settings (default: seed = benchmark's)"
    )

    @model_validator(mode="after")
    def _path(self) -> ModelSpec:
        if (self.source == "path") != (self.path is not None):
            raise ValueError("model.path is required with source=path and only then")
        if self.gold_path is not None and self.source != "path":
            raise ValueError("model.gold_path is for source=path; other sources retrain the gold model themselves")
        return self


class RunSpec(_Section):
    """One method over a learning-rate grid, in each of its arms."""

    method: str = Field(description="registered method name")
    lrs: list[Annotated[float, Field(gt=0)]] = Field(min_length=1, description="learning rates to try")
    args: dict[str, Any] = Field(default_factory=dict, description="the method's config fields")
    arms: list[str] | None = Field(None, description="the study's arms this method runs in (default: every arm)")
    schedule: dict[str, Any] = Field(
        default_factory=dict,
        description="UnlearnConfig fields for this method only; a fair comparison leaves it empty (the study's "
        "schedule and arms apply alike to every method)",
    )


class ArmSpec(_Section):
    """A schedule every method of the arm shares (e.g. forget-only, or with interleaved retain steps)."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$", description="short name, part of each run's name")
    schedule: dict[str, Any] = Field(default_factory=dict, description="UnlearnConfig fields over the study's")


class Selection(_Section):
    """How each method's chosen run is picked among its runs (default per benchmark)."""

    forget_metric: str | None = Field(
        None, description="the forgetting metric (default forget_vqa_acc; TOFU forget_prob)"
    )
    target: float | None = Field(None, description="runs at or below this forget metric qualify (default 0.40)")
    kept: list[str] | None = Field(None, description="metrics whose sum the chosen run keeps most of")
    seeds: int = Field(1, ge=1, description="seeds the chosen setting runs with (intervals need at least 3)")
    equal_budget: bool = Field(True, description="require the same number of learning rates for every method")


#: a regime's ``expected`` when the source paper reports nothing for it (a cell it did not run)
NOT_REPORTED = "not reported"


class RegimeSpec(_Section):
    """A reference unlearning regime (MLLMU-Bench layouts): a method, LR and number of sequential requests."""

    name: str
    title: str
    expected: str = Field(
        NOT_REPORTED, description=f"what the source paper reports for it ('{NOT_REPORTED}': compared with nothing)"
    )
    method: str = "ga"
    lr: float = Field(gt=0)
    requests: int = Field(1, ge=1)
    schedule: dict[str, Any] = Field(default_factory=dict)


class VerifySpec(VerifySettings):
    """Which models are verified, and how (the relearning attack, MIA and probe settings)."""

    enabled: bool = True
    models: Literal["chosen", "all"] = Field("chosen", description="each method's chosen run, or every run")
    regimes: list[RegimeSpec] = Field(default_factory=list, description="reference regimes, verified like runs")
    twins: bool = Field(True, description="also verify the chosen runs of the '-nomask' twins (the mask ablation)")
    regime_mia: bool = Field(True, description="membership inference on the regimes too (else only on the runs)")
    regime_seeds: int = Field(
        1, ge=1, description="each regime runs (and is verified) at this many seeds, the schedule's first (named "
        "like the regime) then the next ones ('<regime>-s<seed>'), and is pooled over them with 95% intervals",
    )  # fmt: skip

    def settings(self, plots: bool = False, regime: bool = False) -> VerifySettings:
        """The settings :func:`forgetlab.verify.assess.verify_model` records (what its cache keys on); ``regime``:
        a regime's (no membership inference unless ``regime_mia``)."""
        fields = {k: getattr(self, k) for k in VerifySettings.model_fields}
        fields["probe"] = self.probe.model_copy(update={"plots": plots})
        if regime and not self.regime_mia:
            fields["mia"] = False
        return VerifySettings(**fields)


class EvalSpec(_Section):
    """How models are evaluated (the benchmark's own metrics, :func:`forgetlab.benchmarks.evaluate_benchmark`)."""

    protocol: Literal["loglik", "generate"] = Field(
        "loglik", description="MCQ protocol: 'generate' is the reference (greedy letter), 'loglik' the fast one"
    )
    generation: bool = Field(True, description="score open generation (ROUGE/BLEU, cloze) for the original model")
    max_new_tokens: int = Field(8, ge=1)
    batch_size: int = Field(32, ge=1)
    compare: list[Literal["loglik", "generate"]] = Field(
        default_factory=list,
        description="other MCQ protocols the original is also scored with (MCQ accuracies and the share of "
        "questions on which both protocols pick the same letter), under models.original.<protocol>",
    )

    def settings(self) -> dict[str, Any]:
        """The keyword arguments of :func:`forgetlab.benchmarks.evaluate_benchmark`."""
        return self.model_dump(exclude={"compare"})


class ReportSpec(_Section):
    enabled: bool = True
    title: str | None = Field(None, description="default: the study's name")
    examples: int = Field(4, ge=0, description="MLLMU-Bench layouts: forgotten people shown with their answers")


class StudyConfig(_Section):
    """One study. See the module docstring for an example."""

    name: str
    output: Path | None = Field(None, description="run folder (default runs/<name>; --out overrides)")
    benchmark: Benchmark = Field(default_factory=EmbeddedBenchmark)
    benchmark_seeds: list[int] = Field(
        default_factory=list, description="embedded benchmark: run the whole study once per seed (a folder "
        "seed-<k> each, its own original and retrained models) and pool the draws (forgetlab.study.draws)",
    )  # fmt: skip
    forget_ratio: int = Field(10, description="forget percentage: 5/10/15 (MLLMU-Bench), 1/5/10 (CLEAR, TOFU)")
    model: ModelSpec = Field(default_factory=ModelSpec)
    schedule: dict[str, Any] = Field(default_factory=dict, description="UnlearnConfig fields shared by every run")
    arms: list[ArmSpec] = Field(default_factory=list, description="schedules every method runs under (none: one)")
    ablate_masks: bool = Field(
        False, description="also run every masked method with an all-ones mask on the same groups ('-nomask')"
    )
    runs: list[RunSpec] = Field(default_factory=list)
    selection: Selection = Field(default_factory=Selection)
    eval: EvalSpec = Field(default_factory=EvalSpec)
    verify: VerifySpec = Field(default_factory=VerifySpec)
    report: ReportSpec = Field(default_factory=ReportSpec)
    workers: int | None = Field(None, ge=1, description="parallel one-thread jobs (default one per core)")
    log_with: Literal["none", "tensorboard"] = Field("none", description="each run's training curves as event files")

    @model_validator(mode="after")
    def _cross_fields(self) -> StudyConfig:
        kind = self.benchmark.kind
        if self.forget_ratio not in FORGET_PERCENTS[kind]:
            raise ValueError(f"forget_ratio: {self.forget_ratio} is not a {kind} split; choose one of "
                             f"{list(FORGET_PERCENTS[kind])}")  # fmt: skip
        if kind == "embedded":
            n = round(self.benchmark.people * self.forget_ratio / 100)
            needed = max([2] + [r.requests for r in self.verify.regimes])
            if n < needed:
                raise ValueError(
                    f"benchmark.people: {self.benchmark.people} people at forget_ratio {self.forget_ratio} give {n} "
                    f"forget people; the relearning attack needs 2 and the regimes up to {needed} (one per request)"
                )
        if self.model.source == "shipped" and kind != "embedded":
            raise ValueError("model.source: 'shipped' is the embedded benchmark's original; use path or finetune")
        if self.model.source == "finetune" and kind not in ("embedded", "mllmu"):
            raise ValueError(f"model.source: knowledge injection needs an MLLMU-Bench layout, not {kind}")
        if self.verify.regimes and kind not in ("embedded", "mllmu"):
            raise ValueError(f"verify.regimes: continual regimes need an MLLMU-Bench layout, not {kind}")
        draws = self.benchmark_seeds
        if draws and (kind != "embedded" or len(set(draws)) < len(draws)):
            raise ValueError(f"benchmark_seeds: {draws} must be distinct seeds of the embedded benchmark")
        names = [r.method for r in self.runs]
        if len(set(names)) < len(names):
            raise ValueError(f"runs: a method appears twice ({names}); give one entry per method")
        arms = [a.name for a in self.arms]
        if len(set(arms)) < len(arms):
            raise ValueError(f"arms: an arm name appears twice ({arms})")
        sizes = {r.method: len(r.lrs) for r in self.runs}
        if self.selection.equal_budget and len(set(sizes.values())) > 1:
            raise ValueError(f"runs: learning-rate grids differ in size ({sizes}); every method gets the same tuning "
                             "budget (or set selection.equal_budget: false)")  # fmt: skip
        for i, run in enumerate(self.runs):
            unknown = sorted(set(run.arms or []) - set(arms))
            if unknown:
                raise ValueError(f"runs.{i}.arms: {unknown} are not arms of the study ({arms})")
            for arm in self.run_arms(run):
                self.unlearn_config(run, run.lrs[0], 0, arm=arm, where=f"runs.{i}")
        for i, regime in enumerate(self.verify.regimes):
            self.regime_config(regime, where=f"verify.regimes.{i}")
        return self

    def _unlearn(self, schedule: dict[str, Any], fields: dict[str, Any], where: str) -> UnlearnConfig:
        bad = sorted(RUN_FIELDS & schedule.keys())
        if bad:
            raise ValueError(f"{where}.schedule: {bad} are set by the study itself, not in schedule")
        ratio = self.forget_ratio if self.benchmark.kind in ("embedded", "mllmu") else 10
        modal = {"forget_modality": "qa", "retain_modality": "qa"} if self.benchmark.kind == "tofu" else {}
        try:
            return UnlearnConfig(**modal | schedule | fields | {"forget_ratio": ratio})
        except ValidationError as e:
            first = e.errors()[0]
            loc = ".".join(str(x) for x in first["loc"])
            raise ValueError(
                f"{where}: {loc + ': ' if loc else ''}{str(first['msg']).removeprefix('Value error, ')}"
            ) from None

    def unlearn_config(
        self, run: RunSpec, lr: float, seed: int, *, arm: str | None = None, where: str = "runs", **extra: Any
    ) -> UnlearnConfig:
        """The UnlearnConfig of one run: study schedule < the arm's < the run's < method, lr, seed, ``extra``."""
        fields = {"method": run.method, "method_args": dict(run.args), "lr": lr, "seed": seed} | extra
        arm_schedule = next((a.schedule for a in self.arms if a.name == arm), {}) if arm else {}
        return self._unlearn(self.schedule | arm_schedule | run.schedule, fields, where)

    def run_arms(self, run: RunSpec) -> list[str | None]:
        """The arms ``run`` runs in (``[None]`` in a study without arms)."""
        if not self.arms:
            return [None]
        return [a.name for a in self.arms if run.arms is None or a.name in run.arms]

    def regime_config(
        self, regime: RegimeSpec, seed: int | None = None, *, where: str = "verify.regimes"
    ) -> UnlearnConfig:
        """A regime's UnlearnConfig: study schedule < the regime's < method, lr (and ``seed`` when given)."""
        fields = {"method": regime.method, "lr": regime.lr} | ({"seed": seed} if seed is not None else {})
        return self._unlearn(self.schedule | regime.schedule, fields, where)

    def regime_runs(self) -> dict[str, tuple[RegimeSpec, int]]:
        """``{run name: (regime, seed)}``: each regime at ``verify.regime_seeds`` seeds (see that field)."""
        out: dict[str, tuple[RegimeSpec, int]] = {}
        for regime in self.verify.regimes:
            base = int((self.schedule | regime.schedule).get("seed", 0))
            for seed in range(base, base + self.verify.regime_seeds):
                out[regime.name if seed == base else f"{regime.name}-s{seed}"] = (regime, seed)
        return out

    def run_seeds(self) -> list[int]:
        """The seeds of a chosen setting: the schedule's seed first (the grid's), then the next ones."""
        base = int(self.schedule.get("seed", 0))
        return list(range(base, base + self.selection.seeds))


def _set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    node: Any = data
    parts = key.split(".")
    for part in parts[:-1]:
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ValueError(f"--set {key}: {part!r} is not an index of that list")
            node = node[int(part)]
            continue
        child = node.setdefault(part, {})
        if not isinstance(child, (dict, list)):
            raise ValueError(f"--set {key}: {part!r} is not a section")
        node = child
    if isinstance(node, list):
        node[int(parts[-1])] = value
    else:
        node[parts[-1]] = value


def read_study(path: Path | str, overrides: dict[str, Any] | None = None) -> StudyConfig:
    """Read and validate a study YAML; ``overrides`` maps dotted keys (``verify.relearn.lr``) to values."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"study file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ValueError(f"{path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: the top level must be a mapping (name, benchmark, model, runs, ...)")
    for key, value in (overrides or {}).items():
        _set_dotted(data, key, value)
    return StudyConfig.model_validate(data)


#: the demo's study, shipped inside the package (``configs/demo.yaml`` in the repository points to it)
DEMO_STUDY = Path(__file__).resolve().parent / "demo.yaml"
