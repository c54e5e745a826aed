"""Inversion throughput on a GPU for ViT-B/32 at 224 px, and whether bf16 / torch.compile change STIR.

A prepared device check (a few minutes on one H100). It measures, with warm-up and
``torch.cuda.synchronize`` around the timed region:

1. ``invert_fn`` through the whole model (block 12): images × steps per second in fp32 (TF32 off),
   fp32 with TF32 matmuls, and bf16 autocast;
2. ``invert_blocks`` over all 12 blocks in one batched pass: (images × blocks) × steps per second;
3. achieved FLOP/s and the fraction of the GPU's dense peak for the arithmetic in use. FLOPs are
   counted with ``torch.utils.flop_counter.FlopCounterMode`` over whole inversions of 1 and 2
   steps (their difference is one step): an inversion step is one forward and one backward pass
   to the *input* only (parameters are frozen), so it costs about 2× the forward FLOPs, not the
   3× of a training step;
4. STIR agreement: the flow matrices STIR(B_j | A_i) and STIR(A_j | B_i) of two ViT-B/32s on 64
   images computed in fp32, TF32, bf16 autocast, with CUDA graphs and with the compiled stack; the
   largest absolute differences from fp32 (the switches stay off by default until these are ≤ 0.01).

The models are timm ``vit_base_patch32_224`` with random weights (nothing is downloaded), or
trained briefly on procedural shapes with ``--train-steps`` (a few hundred steps leave the
initialisation, whose near-identity blocks would flatter the agreement).
``--small`` runs the same code on a tiny ViT, on any device, as a smoke test of this script.

    python benchmarks/gpu_inversion.py --out results/gpu      # on the GPU machine
    python benchmarks/gpu_inversion.py --small                # anywhere, seconds
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from stirflow.data import make_shapes, to_tensor
from stirflow.inversion import invert_blocks, invert_fn
from stirflow.models import block_representation, create_model, prepare_for_inversion
from stirflow.invariance import pair_scores

# Dense (no sparsity) peaks of the H100 SXM5 from NVIDIA's data sheet, in FLOP/s. The H200 has the
# same GH100 compute, so the same peaks apply.
H100_PEAKS = {"fp32": 66.9e12, "tf32": 494.7e12, "bf16": 989.4e12}
PEAK_NAMES = {"fp32": "FP32 (no tensor cores) 66.9 TFLOP/s", "tf32": "TF32 tensor core 494.7 TFLOP/s",
              "bf16": "BF16 tensor core 989.4 TFLOP/s"}
MODES = ("fp32", "tf32", "bf16")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def precision(mode: str, device: torch.device):
    """fp32: TF32 off everywhere; tf32: TF32 matmuls and convolutions; bf16: autocast to bfloat16."""
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = mode == "tf32"
    try:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=mode == "bf16"):
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def make_vit(seed: int, small: bool, device: torch.device, train_steps: int = 0) -> torch.nn.Module:
    """ViT-B/32 at 224 px, or a tiny ViT with ``small``: random weights, or trained ``train_steps``
    AdamW steps (batch 32, lr 1e-4) on procedural shape images, enough to leave the initialisation;
    then eval mode, frozen."""
    torch.manual_seed(seed)
    if small:
        spec = {"num_classes": 10, "vit": dict(img_size=32, patch_size=8, embed_dim=64, depth=4, num_heads=4)}
    else:
        spec = {"timm_name": "vit_base_patch32_224", "num_classes": 10}
    model = create_model(spec).to(device)
    if train_steps:
        size = model.img_size[0]
        images, labels = make_shapes(32 * min(train_steps, 20), size, seed=seed)
        x, y = to_tensor(images).to(device), torch.as_tensor(labels, device=device).long()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        model.train()
        for step in range(train_steps):
            batch = torch.randint(len(x), (32,), generator=torch.Generator().manual_seed(seed * 100_003 + step))
            loss = torch.nn.functional.cross_entropy(model(x[batch.to(device)]), y[batch.to(device)])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        print(f"# model {seed}: {train_steps} training steps, last loss {float(loss.detach()):.3f}", flush=True)
    return prepare_for_inversion(model)


def timed(fn: Callable[[], Any], device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def step_flops(run: Callable[[int], Any]) -> tuple[float, float]:
    """(FLOPs of one descent step, FLOPs outside the steps) of ``run(steps)``, counted by running it."""
    counts = []
    for steps in (1, 2):
        with FlopCounterMode(display=False) as counter:
            run(steps)
        counts.append(counter.get_total_flops())
    per_step = counts[1] - counts[0]
    return float(per_step), float(counts[0] - per_step)


def throughput(name: str, run: Callable[[int], Any], samples: int, steps: int, device: torch.device,
               flops: tuple[float, float], peak_ok: bool) -> list[dict[str, Any]]:
    """Time ``run(steps)`` in every precision mode after a warm-up; one row per mode."""
    rows = []
    per_step, fixed = flops
    for mode in MODES:
        with precision(mode, device):
            run(2)  # warm-up: kernels, autotuning, allocator
            seconds = timed(lambda: run(steps), device)
        achieved = (fixed + steps * per_step) / seconds
        peak = H100_PEAKS[mode] if peak_ok else float("nan")
        rows.append({"what": name, "mode": mode, "samples": samples, "steps": steps, "seconds": seconds,
                     "sample_steps_per_s": samples * steps / seconds, "tflops": achieved / 1e12,
                     "peak_tflops": peak / 1e12, "fraction_of_peak": achieved / peak,
                     "peak": PEAK_NAMES[mode] if peak_ok else "n/a"})
        r = rows[-1]
        print(f"{name:<34} {mode:<5} {r['sample_steps_per_s']:>12.0f} {r['tflops']:>9.1f} "
              f"{r['fraction_of_peak']:>8.1%}   {r['peak']}", flush=True)
    return rows


def matmul_peak(device: torch.device, dtype: torch.dtype, n: int = 8192, reps: int = 10) -> float:
    """Measured FLOP/s of an n×n×n matmul: what this GPU reaches at best, beside the data sheet."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    seconds = timed(lambda: [a @ b for _ in range(reps)], device)
    return 2 * n**3 * reps / seconds


def stir_values(a, b, x: torch.Tensor, blocks: list[int], steps: int, mode: str,
                device: torch.device, **options) -> dict[str, np.ndarray]:
    """Flow matrices of A and B under one precision mode (inversions only; CKA is float64 always);
    ``options``: invert_blocks' kernel switches (``cuda_graphs``)."""
    with precision(mode, device):
        inv_a = {k: r.images for k, r in invert_blocks(a, x, blocks, steps=steps, **options).items()}
        inv_b = {k: r.images for k, r in invert_blocks(b, x, blocks, steps=steps, **options).items()}
    with precision("fp32", device):
        return pair_scores(a, b, x, inv_a, inv_b)


def throughputs(a, x: torch.Tensor, batch: int, blocks_batch: int, steps: int, device: torch.device,
                on_h100: bool) -> list[dict[str, Any]]:
    """Inversion throughput of model ``a`` in every precision: one block alone, and all blocks batched."""
    depth = a.depth
    fn_last = block_representation(a, depth)
    print(f"{'what':<34} {'mode':<5} {'img·steps/s':>12} {'TFLOP/s':>9} {'of peak':>8}   peak compared against")
    xs = x[:batch]
    run_fn = lambda s: invert_fn(fn_last, xs, steps=s)  # noqa: E731
    rows = throughput(f"invert_fn, block {depth}, {batch} images", run_fn, batch, steps, device,
                      step_flops(run_fn), on_h100)
    xb = x[:blocks_batch]
    all_blocks = list(range(1, depth + 1))
    run_blocks = lambda s: invert_blocks(a, xb, all_blocks, steps=s)  # noqa: E731
    rows += throughput(f"invert_blocks, {depth} blocks × {blocks_batch}", run_blocks, blocks_batch * depth, steps,
                       device, step_flops(run_blocks), on_h100)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="tiny ViT, small batch: a quick smoke test anywhere")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, help="images for invert_fn throughput (default 256; 8 with --small)")
    parser.add_argument("--blocks-batch", type=int, help="images × 12 blocks for invert_blocks (default 64; 4 with --small)")
    parser.add_argument("--steps", type=int, help="timed steps (default 20; 3 with --small)")
    parser.add_argument("--stir-images", type=int, help="images for the STIR agreement check (default 64; 8 with --small)")
    parser.add_argument("--stir-steps", type=int, help="steps for the STIR agreement check (default 50; 5 with --small)")
    parser.add_argument("--skip-compile", action="store_true", help="leave out the torch.compile check")
    parser.add_argument("--skip-throughput", action="store_true", help="only the STIR agreement check")
    parser.add_argument("--train-steps", type=int, default=0,
                        help="train both models this many steps first (default 0: random weights)")
    parser.add_argument("--threads", type=int, help="CPU threads for torch")
    parser.add_argument("--out", help="folder for gpu_inversion.json")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    small = args.small
    batch = args.batch or (8 if small else 256)
    blocks_batch = args.blocks_batch or (4 if small else 64)
    steps = args.steps or (3 if small else 20)
    stir_images = args.stir_images or (8 if small else 64)
    stir_steps = args.stir_steps or (5 if small else 50)

    t0 = time.perf_counter()
    device = torch.device(args.device)
    on_h100 = device.type == "cuda" and any(k in torch.cuda.get_device_name(device) for k in ("H100", "H200"))
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"# {where}, torch {torch.__version__}; {'tiny ViT (--small)' if small else 'ViT-B/32 at 224 px'}", flush=True)
    results: dict[str, Any] = {"device": where, "torch": torch.__version__, "small": small}

    a = make_vit(0, small, device, args.train_steps)
    depth, size = a.depth, a.img_size[0]
    x = to_tensor(make_shapes(max(batch, stir_images, blocks_batch), size, seed=0)[0]).to(device)
    fn_last = block_representation(a, depth)
    with torch.no_grad():
        fwd_flops = FlopCounterMode(display=False)
        with fwd_flops:
            fn_last(x[:1])
    print(f"# forward FLOPs per image (all {depth} blocks): {fwd_flops.get_total_flops() / 1e9:.2f} GFLOP", flush=True)
    results["forward_gflop_per_image"] = fwd_flops.get_total_flops() / 1e9

    if device.type == "cuda":
        results["matmul_tflops"] = {"bf16": matmul_peak(device, torch.bfloat16) / 1e12}
        with precision("fp32", device):
            results["matmul_tflops"]["fp32"] = matmul_peak(device, torch.float32, n=4096) / 1e12
        with precision("tf32", device):
            results["matmul_tflops"]["tf32"] = matmul_peak(device, torch.float32) / 1e12
        print("# measured matmul peaks (TFLOP/s): " + ", ".join(f"{k} {v:.0f}" for k, v in results["matmul_tflops"].items()),
              flush=True)

    rows = [] if args.skip_throughput else throughputs(a, x, batch, blocks_batch, steps, device, on_h100)
    results["throughput"] = rows
    print(f"# ({time.perf_counter() - t0:.0f} s so far)", flush=True)

    # STIR agreement between precisions and with the kernel switches
    b = make_vit(1, small, device, args.train_steps)
    stir_blocks = sorted({1, depth // 4, depth // 2, 3 * depth // 4, depth} - {0})
    xs = x[:stir_images]
    reference = stir_values(a, b, xs, stir_blocks, stir_steps, "fp32", device)
    agreement = {}
    variants: list[tuple[str, Callable[[], dict[str, np.ndarray]]]] = [
        ("tf32", lambda: stir_values(a, b, xs, stir_blocks, stir_steps, "tf32", device)),
        ("bf16", lambda: stir_values(a, b, xs, stir_blocks, stir_steps, "bf16", device)),
        ("cuda_graphs", lambda: stir_values(a, b, xs, stir_blocks, stir_steps, "fp32", device, cuda_graphs=True)),
        ("bf16+cuda_graphs", lambda: stir_values(a, b, xs, stir_blocks, stir_steps, "bf16", device, cuda_graphs=True)),
    ]
    if not args.skip_compile:
        def compiled() -> dict[str, np.ndarray]:
            ca = prepare_for_inversion(copy.deepcopy(a), compile=True)
            cb = prepare_for_inversion(copy.deepcopy(b), compile=True)
            return stir_values(ca, cb, xs, stir_blocks, stir_steps, "fp32", device)
        variants.append(("compile", compiled))
    print(f"# STIR agreement: blocks {stir_blocks}, {stir_images} images, {stir_steps} steps; "
          f"fp32 diag STIR(B|A) = {np.round(np.diag(reference['flow']), 4).tolist()}", flush=True)
    for name, run in variants:
        start = time.perf_counter()
        try:
            values = run()
        except Exception as err:  # report, keep the other results
            agreement[name] = {"error": f"{type(err).__name__}: {err}"[:500]}
            print(f"{name:<8} failed: {agreement[name]['error']}", flush=True)
            continue
        diffs = {k: float(np.abs(values[k] - reference[k]).max()) for k in ("flow", "flow_reverse", "cka")}
        worst = max(diffs["flow"], diffs["flow_reverse"])
        agreement[name] = {**diffs, "max_abs_stir_diff": worst, "within_0.01": worst <= 0.01,
                           "seconds": time.perf_counter() - start}
        print(f"{name:<8} max |ΔSTIR| vs fp32 = {worst:.2e} (flow {diffs['flow']:.2e}, reverse "
              f"{diffs['flow_reverse']:.2e}; CKA {diffs['cka']:.1e}) {'≤' if worst <= 0.01 else '>'} 0.01  "
              f"[{agreement[name]['seconds']:.0f} s]", flush=True)
    results["stir_agreement"] = {"blocks": stir_blocks, "images": stir_images, "steps": stir_steps,
                                 "fp32_flow": reference["flow"].tolist(), **agreement}
    results["seconds"] = time.perf_counter() - t0
    print(f"# done in {results['seconds']:.0f} s", flush=True)
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "gpu_inversion.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
