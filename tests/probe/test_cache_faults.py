"""A damaged feature-cache entry is a cache miss (recomputed and rewritten), never a crash."""

from __future__ import annotations

import torch

from forgetlab.probe.capture import Features, cache_file, cached_features, save_features


def test_truncated_or_foreign_cache_entries_are_misses(tmp_path) -> None:
    model_key, probe_key = "m" * 64, "p" * 64
    path = cache_file(tmp_path, model_key, probe_key, "mean")
    feats = Features("mean", ["language.0"], {"language.0": torch.ones(2, 3)}, {"language.0": torch.arange(2)}, 2,
                     {"model_key": model_key, "probe_key": probe_key})  # fmt: skip
    save_features(path, feats)
    assert set(cached_features(tmp_path, model_key, probe_key, ["mean"])) == {"mean"}
    good = path.read_bytes()
    for damaged in (good[: len(good) // 2], b"\x80\x04 a pickle, not safetensors", b""):
        path.write_bytes(damaged)
        assert cached_features(tmp_path, model_key, probe_key, ["mean"]) == {}
