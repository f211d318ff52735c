"""The run manifest: what a run folder holds and how it was made.

``manifest.json`` records the run's configuration, the library versions and thread count
(floating-point results depend on both), the benchmark's content hash and the seeds, and
one entry per finished stage. It is rewritten atomically after every stage, so a run
killed at any point leaves the manifest of its last finished stage. A rerun with the same
configuration reads it to tell which stages are already done; their results are then
served from the stage caches rather than recomputed.
"""

from __future__ import annotations

import json
import platform
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from forgetlab.io import write_json

PACKAGES = ("forgetlab", "torch", "transformers", "accelerate", "peft", "numpy", "safetensors")


def environment() -> dict[str, Any]:
    """Versions and the torch thread count: what a bit-identical rerun needs to match."""
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {"versions": versions, "torch_threads": torch.get_num_threads(), "platform": platform.platform()}


class RunManifest:
    """``<run>/manifest.json``: configuration, environment, data hash, seeds, finished stages.

    A manifest written for another configuration is replaced (its stages do not count);
    one written in another environment keeps its stages, and the difference is recorded
    under ``environment_changes`` so a reader can tell which numbers came from where.
    """

    def __init__(self, run_dir: Path, config: dict[str, Any], seeds: dict[str, int]) -> None:
        self.path = Path(run_dir) / "manifest.json"
        self.config = json.loads(json.dumps(config))
        env = environment()
        previous = json.loads(self.path.read_text()) if self.path.exists() else None
        if previous and previous.get("config") == self.config:
            self.data = previous
            if previous.get("environment") != env:
                self.data.setdefault("environment_changes", []).append(
                    {"at": _now(), "was": previous.get("environment"), "now": env}
                )
                self.data["environment"] = env
        else:
            self.data = {
                "format": 1,
                "created": _now(),
                "config": self.config,
                "seeds": seeds,
                "environment": env,
                "data": {},
                "stages": {},
            }
        self.resumed = sorted(self.data["stages"])
        self._write()

    def done(self, stage: str) -> bool:
        return stage in self.data["stages"]

    def record_data(self, name: str, digest: str) -> None:
        """The content hash of an input; a changed hash invalidates every finished stage."""
        if self.data["data"].get(name) not in (None, digest):
            self.data["stages"] = {}
        self.data["data"][name] = digest
        self._write()

    def finish(self, stage: str, seconds: float, **info: Any) -> None:
        """Mark ``stage`` finished; a stage finished earlier keeps its first record."""
        if stage not in self.data["stages"]:
            self.data["stages"][stage] = {"finished": _now(), "seconds": round(seconds, 1)} | info
            self._write()

    def _write(self) -> None:
        self.data["updated"] = _now()
        write_json(self.path, self.data)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")
