"""The unlearning engine on a GPU: CPU/GPU agreement, masked freezing, and MMUnlearner's cost against GA's
on a LLaVA of about a billion parameters.

Run on a CUDA machine: ``python bench/bench_gpu.py [--steps 20] [--repeats 3]`` (exits with a message where no
GPU is visible; CI has none). A script, not a test. It reports:

1. agreement: the tiny LLaVA's importance (I_f on forget VQA), and its weights after 10 MMUnlearner steps in fp32,
   computed on the CPU and on the GPU (relative difference; ideally float-rounding small);
2. masked freezing on the GPU: forget-only MMUnlearner steps with AdamW momentum and weight decay, fp32 and bf16
   autocast; every masked-out element must be bit-identical afterwards;
3. cost, on a LLaVA with a 12-layer 1024-wide CLIP tower and a 16-layer 2048-wide Llama (random weights, the
   embedded benchmark's vocabulary), bf16 autocast: step time (CUDA-synchronised) and peak allocated GPU
   memory of MMUnlearner (mask over both groups) relative to GA, best of ``--repeats`` alternating runs
   (goals as on the CPU: <= 1.05x time, <= 1.10x memory), and the importance pass against one forward+backward
   epoch over the same examples (goal <= 1.2x).
"""

from __future__ import annotations

import argparse
import copy
import gc
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import add_common_args, emit, quiet_hf, row, times  # noqa: E402


def _config(method: str, **over):
    from forgetlab.train.unlearn import UnlearnConfig

    return UnlearnConfig(method=method, epochs=50, batch_size=8, **over)


def _recipe(model, processor, forget, retain, config, mask=None):
    from forgetlab.train.unlearn import UnlearnRecipe

    recipe = UnlearnRecipe(config)
    recipe.setup(model, processor, forget, retain, mask=mask)
    return recipe


def ten_steps(root: Path) -> dict[str, torch.Tensor]:
    """10 fp32 MMUnlearner steps from the model, data and mask saved under ``root``, on the engine's device."""
    from forgetlab.data.mllmu import load_training
    from forgetlab.masks import Mask
    from forgetlab.models.load import load

    model, processor = load(root / "model")
    forget, retain = load_training(root / "data", "forget_10"), load_training(root / "data", "retain_90")
    cfg = _config("mmunlearner", lr=1e-3, max_steps=10)
    recipe = _recipe(model, processor, forget, retain, cfg, Mask.load(root / "mask.safetensors"))
    for i, step in enumerate(recipe.steps[:10]):
        recipe.run_step(i, step)
    return {n: p.detach().float().cpu().contiguous() for n, p in recipe.model.named_parameters()}


def agreement(root: Path, model, processor, forget, retain) -> dict:
    """Importance, and 10 fp32 MMUnlearner steps, on the CPU and on the GPU from the same weights (the CPU
    steps in a child process that sees no GPU, since the engine takes the device accelerate finds)."""
    from safetensors.torch import load_file

    from forgetlab.train.masking import group_importance, mask_from_samples

    imp = {}
    for device in ("cpu", "cuda"):
        found = group_importance(copy.deepcopy(model).to(device), processor, forget, retain)
        imp[device] = {n: t.cpu() for n, t in found.forget.items()}
        ratio = {n: found.forget[n] >= found.preserve[n] for n in found.forget}  # the mask rule at gamma 1
        imp[device + "_mask"] = {n: m.cpu() for n, m in ratio.items()}
    cpu, gpu = imp["cpu"], imp["cuda"]
    diff = {n: float((gpu[n] - cpu[n]).norm() / cpu[n].norm().clamp_min(1e-30)) for n in cpu}
    worst = max(diff, key=diff.get)
    total = sum(float((gpu[n] - cpu[n]).norm()) for n in cpu) / sum(float(cpu[n].norm()) for n in cpu)
    same = sum(int((imp["cpu_mask"][n] == imp["cuda_mask"][n]).sum()) for n in cpu)
    agree = same / sum(imp["cpu_mask"][n].numel() for n in cpu)
    mask_from_samples(model, processor, forget, retain, groups="both").save(root / "mask.safetensors")
    env = os.environ | {"CUDA_VISIBLE_DEVICES": ""}
    subprocess.run([sys.executable, __file__, "--cpu-steps", str(root)], check=True, env=env)
    weights_cpu, weights_gpu = load_file(root / "cpu.safetensors"), ten_steps(root)
    start = {n: p.detach() for n, p in model.named_parameters()}
    update = sum(float((weights_cpu[n] - start[n]).norm()) for n in start)
    diff_w = sum(float((weights_gpu[n] - weights_cpu[n]).norm()) for n in start)
    return {
        "importance_rel_diff": total,
        "worst": (worst, diff[worst], float(cpu[worst].norm())),
        "mask_agreement": agree,
        "update_rel_diff": diff_w / update,
    }


def freezing(model, processor, forget, retain, bf16: bool) -> dict:
    """Forget-only MMUnlearner steps on the GPU with a random half mask, AdamW momentum and weight decay."""
    from forgetlab.masks import Mask

    g = torch.Generator().manual_seed(0)
    named = dict(model.named_parameters())
    keys = [n for n in named if "layers.0" in n or "lm_head" in n or "linear_1" in n]
    mask = Mask({n: torch.rand(named[n].shape, generator=g) < 0.5 for n in keys})
    cfg = _config("mmunlearner", lr=1e-2, weight_decay=0.1, retain_weight=0, bf16=bf16, max_steps=20)
    recipe = _recipe(copy.deepcopy(model), processor, forget, retain, cfg, mask)
    before = {n: p.detach().cpu().clone() for n, p in recipe.model.named_parameters()}
    for i, step in enumerate(recipe.steps[:20]):
        recipe.run_step(i, step)
    after = {n: p.detach().cpu() for n, p in recipe.model.named_parameters()}  # masks live on the CPU
    frozen_ok = all(torch.equal(after[n], before[n]) for n in after if n not in mask.tensors)
    masked_out_ok = all(torch.equal(after[n][~m], before[n][~m]) for n, m in mask.tensors.items())
    moved = sum(int((after[n][m] != before[n][m]).sum()) for n, m in mask.tensors.items()) / mask.selected
    return {"absent_frozen": frozen_ok, "masked_out_bit_identical": masked_out_ok, "selected_moved": moved}


def big_llava(processor_model):
    """A LLaVA of about a billion parameters with the tiny model's processor and vocabulary."""
    from transformers import LlavaForConditionalGeneration

    cfg = copy.deepcopy(processor_model.config)
    cfg.vision_config.update({"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 12,
                              "num_attention_heads": 16, "projection_dim": 1024})  # fmt: skip
    cfg.text_config.update({"hidden_size": 2048, "intermediate_size": 5632, "num_hidden_layers": 16,
                            "num_attention_heads": 16, "num_key_value_heads": 16})  # fmt: skip
    torch.manual_seed(0)
    return LlavaForConditionalGeneration(cfg)


def cost(model, processor, forget, retain, steps: int, repeats: int) -> dict:
    """Step time and peak GPU memory of GA and MMUnlearner; importance pass against one epoch."""
    from bench_unlearn import preserve_epoch

    from forgetlab.train.masking import group_importance, mask_from_samples

    state = {k: v.clone() for k, v in model.state_dict().items()}
    model.cuda()
    t0 = time.perf_counter()
    mask = mask_from_samples(model, processor, forget, retain, groups="both")
    mask_s = time.perf_counter() - t0
    runs: dict[str, list[dict]] = {"ga": [], "mmunlearner": []}
    for _ in range(repeats):
        for method in runs:
            model.load_state_dict(state)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            cfg = _config(method, bf16=True, max_steps=steps + 3)
            recipe = _recipe(model, processor, forget, retain, cfg, mask if method == "mmunlearner" else None)
            for i in range(3):
                recipe.run_step(i, recipe.steps[i])
            torch.cuda.synchronize()
            t = time.perf_counter()
            for i in range(3, steps + 3):
                recipe.run_step(i, recipe.steps[i])
            torch.cuda.synchronize()
            runs[method].append({"step_s": (time.perf_counter() - t) / steps,
                                 "peak_extra": torch.cuda.max_memory_allocated() - base})  # fmt: skip
            del recipe
            gc.collect()
    best = {m: {k: min(r[k] for r in rs) for k in rs[0]} for m, rs in runs.items()}

    model.load_state_dict(state)

    def epoch() -> None:
        preserve_epoch(model, processor, forget, retain, lambda: torch.autocast("cuda", dtype=torch.bfloat16))
        torch.cuda.synchronize()

    def importance() -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            group_importance(model, processor, forget, retain, groups="both", batch_size=8)
        torch.cuda.synchronize()

    times: dict[str, list[float]] = {"epoch": [], "importance": []}
    epoch()
    for _ in range(repeats):
        for name, fn in (("epoch", epoch), ("importance", importance)):
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    params = sum(p.numel() for p in model.parameters())
    return {
        "params": params,
        "mask_fraction": mask.fraction,
        "mask_s": mask_s,
        "ga": best["ga"],
        "mmu": best["mmunlearner"],
        "importance_s": min(times["importance"]),
        "epoch_s": min(times["epoch"]),
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--people", type=int, default=20)
    ap.add_argument("--cpu-steps", type=Path, default=None, help=argparse.SUPPRESS)
    add_common_args(ap, threads=None)  # what bench/run_all.py passes (--quick changes nothing here)
    args = ap.parse_args(argv)
    quiet_hf()
    if args.cpu_steps is not None:  # the child of agreement()
        from safetensors.torch import save_file

        assert not torch.cuda.is_available()
        save_file(ten_steps(args.cpu_steps), args.cpu_steps / "cpu.safetensors")
        return
    if not torch.cuda.is_available():  # make bench on a CPU machine: one row that says so, not a failure
        print("bench_gpu.py needs a CUDA GPU; none is visible")
        emit(
            args, [row("GPU (bench_gpu.py)", "all", "no GPU", note="run `python bench/bench_gpu.py` on a CUDA machine")]
        )
        return
    from forgetlab.data.mllmu import load_training
    from forgetlab.data.synth import write_benchmark
    from forgetlab.models.tiny import build_tiny_model, save_model
    from forgetlab.train.finetune import benchmark_texts

    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = write_benchmark(root / "data", people=args.people, celebrities=4, perception_train=2,
                               perception_test=2)  # fmt: skip
        model, processor = build_tiny_model("llava", benchmark_texts(data), image_size=32)
        save_model(model, processor, root / "model")
        forget, retain = load_training(data, "forget_10"), load_training(data, "retain_90")
        a = agreement(root, model, processor, forget, retain)
        name, worst, norm = a["worst"]
        print(f"CPU vs GPU (tiny LLaVA, fp32): importance I_f differs by {a['importance_rel_diff']:.2e} of its norm "
              f"(most: {name}, {worst:.2e} of a norm of {norm:.1e}); the gamma=1 mask rule agrees on "
              f"{a['mask_agreement']:.4%} of elements; after 10 "
              f"MMUnlearner steps the GPU weights differ from the CPU ones by {a['update_rel_diff']:.2e} of the "
              "update", flush=True)  # fmt: skip
        for bf16 in (False, True):
            f = freezing(model, processor, forget, retain, bf16)
            print(f"masked freezing on the GPU ({'bf16' if bf16 else 'fp32'}, AdamW wd 0.1, 20 forget-only steps): "
                  f"absent frozen {f['absent_frozen']}, masked-out bit-identical {f['masked_out_bit_identical']}, "
                  f"selected moved {f['selected_moved']:.1%}", flush=True)  # fmt: skip
        res = cost(big_llava(model), processor, forget, retain, args.steps, args.repeats)
    ga, mmu, gib = res["ga"], res["mmu"], 2**30
    print(
        f"LLaVA {res['params'] / 1e9:.2f} B params, bf16 autocast, batch 8, {args.steps} steps, best of "
        f"{args.repeats}; mask selects {res['mask_fraction']:.1%} (built in {res['mask_s']:.1f} s)"
    )
    print(
        f"step time    GA {ga['step_s'] * 1e3:.1f} ms   MMUnlearner {mmu['step_s'] * 1e3:.1f} ms   "
        f"ratio {mmu['step_s'] / ga['step_s']:.3f}x (goal <= 1.05x)"
    )
    print(
        f"peak memory  GA +{ga['peak_extra'] / gib:.2f} GiB   MMUnlearner +{mmu['peak_extra'] / gib:.2f} GiB   "
        f"ratio {mmu['peak_extra'] / ga['peak_extra']:.3f}x above the weights (goal <= 1.10x)"
    )
    print(
        f"importance   {res['importance_s']:.2f} s vs one forward+backward epoch {res['epoch_s']:.2f} s: "
        f"{res['importance_s'] / res['epoch_s']:.3f}x (goal <= 1.2x)",
        flush=True,
    )
    name, t_ratio = "GPU: MMUnlearner vs GA", mmu["step_s"] / ga["step_s"]
    m_ratio, i_ratio = mmu["peak_extra"] / ga["peak_extra"], res["importance_s"] / res["epoch_s"]
    setting = f"{res['params'] / 1e9:.2f} B LLaVA, bf16, batch 8, {args.steps} steps, {torch.cuda.get_device_name()}"
    agree = f"after 10 fp32 steps, share of the update; the mask rule agrees on {a['mask_agreement']:.4%}"
    rows = [
        row(name, "step time, MMUnlearner / GA", times(t_ratio), "≤ 1.05×", t_ratio <= 1.05, setting, ratio=t_ratio),
        row(name, "peak GPU memory above weights", times(m_ratio), "≤ 1.10×", m_ratio <= 1.10, setting, ratio=m_ratio),
        row(name, "importance pass / one epoch", times(i_ratio), "≤ 1.2×", i_ratio <= 1.2, setting, ratio=i_ratio),
        row(name, "GPU vs CPU weights", f"{a['update_rel_diff']:.1e}", "", None, agree, ratio=a["update_rel_diff"]),
    ]
    emit(args, rows)


if __name__ == "__main__":
    main()
