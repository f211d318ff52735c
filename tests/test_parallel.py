"""The job runner of the demo: follow-up jobs start as their inputs finish, inline and on worker processes."""

from __future__ import annotations

import math
import operator

import pytest

from forgetlab.parallel import run_jobs, worker_pool


def _graph_then(seen: list[str]):
    """A two-level graph: 'sum' and 'product' run first; 'scaled' needs 'sum', 'both' needs both results."""
    results: dict[str, int] = {}

    def then(name: str, result: int) -> dict:
        seen.append(name)
        results[name] = result
        more = {}
        if name == "sum":
            more["scaled"] = (operator.mul, (result, 10))
        if name in ("sum", "product") and {"sum", "product"} <= results.keys():
            more["both"] = (operator.add, (results["sum"], results["product"]))
        return more

    return then


@pytest.mark.parametrize("workers", [1, 2])
def test_follow_up_jobs_run_with_their_inputs_results(workers: int) -> None:
    seen: list[str] = []
    progress: list[tuple[str, int, int]] = []
    jobs = {"sum": (operator.add, (2, 3)), "product": (operator.mul, (4, 5))}
    spans: dict[str, tuple[float, float]] = {}
    with worker_pool(workers) as pool:
        out = run_jobs(pool, jobs, lambda *a: progress.append(a), _graph_then(seen), spans)
    assert out == {"sum": 5, "product": 20, "scaled": 50, "both": 25}
    assert set(spans) == set(out) and all(start <= end for start, end in spans.values())
    assert spans["scaled"][0] >= spans["sum"][1]  # a follow-up starts after the job it follows
    assert list(out)[:2] == ["sum", "product"]  # submission order, follow-ups after
    assert sorted(seen) == sorted(out) and seen.index("sum") < seen.index("scaled")
    assert progress[-1] == ("done", 4, 4)


@pytest.mark.parametrize("workers", [1, 2])
def test_a_failing_job_is_named(workers: int) -> None:
    jobs = {"fine": (operator.add, (1, 1)), "broken": (math.sqrt, (-1.0,))}
    with worker_pool(workers) as pool, pytest.raises(ValueError, match="math domain error") as err:
        run_jobs(pool, jobs)
    assert "in job 'broken'" in err.value.__notes__


def test_a_follow_up_may_not_reuse_a_name() -> None:
    with pytest.raises(ValueError, match="already used"):
        run_jobs(None, {"a": (operator.add, (1, 1))}, then=lambda name, r: {"a": (operator.add, (r, 1))})
