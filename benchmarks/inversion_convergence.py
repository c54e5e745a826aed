"""How many inversion steps each step-size schedule needs for converged learning and forgetting.

For a pair of checkpoints (the model before finetuning, ``--reference``, and a finetuned one,
``--model``), learning and forgetting of every block are measured with the reference's fixed step
(``constant``) at ``--reference-steps`` (default 3000): the converged values. Then each schedule
is run at each step count of ``--steps``, and the script prints the largest |Δ| over blocks
against the converged values, the wall time, and for each schedule the fewest steps whose
learning and forgetting are all within ``--tolerance`` (default 0.005)::

    python benchmarks/inversion_convergence.py \\
        --reference results/runs/digits-pretrained/checkpoints/epoch_000.pt \\
        --model results/runs/digits-pretrained/checkpoints/epoch_012.pt \\
        --images data/digits/test.h5 --n-images 128

Times are wall seconds on this machine (CPU unless CUDA is present), one run each; compare them as
ratios. ``--tiny`` runs a few steps on random models and images (a test that the script works).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from stirflow.comparison import compare
from stirflow.data import read_image_h5, select_indices, to_tensor
from stirflow.inversion import STEP_SCHEDULES
from stirflow.models import create_model, load_checkpoint, prepare_for_inversion


def measure(a, b, x, *, steps: int, schedule: str, step_size: float, final_step_size: float | None,
            seed: int) -> tuple[dict, float]:
    start = time.perf_counter()
    ds = compare(a, b, x, steps=steps, step_size=step_size, step_schedule=schedule, final_step_size=final_step_size,
                 seed=seed)
    return {k: ds[k].values for k in ("learning", "forgetting")}, time.perf_counter() - start


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reference", help="checkpoint of the model before finetuning (epoch 0)")
    parser.add_argument("--model", help="checkpoint of a finetuned model")
    parser.add_argument("--images", help="HDF5 image set (the run's target test set)")
    parser.add_argument("--n-images", type=int, default=128)
    parser.add_argument("--reference-steps", type=int, default=3000)
    parser.add_argument("--steps", type=int, nargs="+", default=[100, 200, 300, 500, 1000])
    parser.add_argument("--schedules", nargs="+", choices=STEP_SCHEDULES, default=list(STEP_SCHEDULES))
    parser.add_argument("--step-size", type=float, default=0.5, help="η of the reference and of constant steps")
    parser.add_argument("--schedule-step-size", type=float, default=None,
                        help="first η of the decaying schedules (default: --step-size)")
    parser.add_argument("--final-step-size", type=float, default=None, help="last η of the decaying schedules")
    parser.add_argument("--tolerance", type=float, default=0.005)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--tiny", action="store_true", help="random tiny models and images, few steps")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.tiny:
        spec = {"num_classes": 10, "vit": dict(img_size=16, patch_size=8, embed_dim=32, depth=2, num_heads=2)}
        torch.manual_seed(0)
        a, b = create_model(spec).eval(), create_model(spec).eval()
        x = torch.rand(8, 3, 16, 16)
        args.reference_steps, args.steps = 40, [5, 10]
    else:
        a, b = (load_checkpoint(p) for p in (args.reference, args.model))
        test = read_image_h5(args.images)
        x = to_tensor(test.images[select_indices(len(test), args.n_images, 0)])
    a, b = prepare_for_inversion(a), prepare_for_inversion(b)

    truth, seconds = measure(a, b, x, steps=args.reference_steps, schedule="constant", step_size=args.step_size,
                             final_step_size=None, seed=args.seed)
    print(f"converged values: constant step {args.step_size}, {args.reference_steps} steps ({seconds:.0f} s); "
          f"schedules start at {args.schedule_step_size or args.step_size}"
          + (f" and end at {args.final_step_size}" if args.final_step_size else ""))
    for name, values in truth.items():
        print(f"  {name:<10} " + "  ".join(f"{v:.4f}" for v in values))
    rows = []
    print(f"\n{'schedule':<10} {'steps':>6} {'max |Δ learning|':>17} {'max |Δ forgetting|':>19} {'seconds':>8}")
    for schedule in args.schedules:
        for steps in args.steps:
            eta = args.step_size if schedule == "constant" else (args.schedule_step_size or args.step_size)
            got, seconds = measure(a, b, x, steps=steps, schedule=schedule, step_size=eta,
                                   final_step_size=args.final_step_size, seed=args.seed)
            row = {"schedule": schedule, "steps": steps, "seconds": seconds,
                   **{f"delta_{k}": float(np.max(np.abs(got[k] - truth[k]))) for k in truth}}
            rows.append(row)
            print(f"{schedule:<10} {steps:>6} {row['delta_learning']:>17.4f} {row['delta_forgetting']:>19.4f} "
                  f"{seconds:>8.1f}")
    print(f"\nfewest steps within {args.tolerance} of the converged values:")
    for schedule in args.schedules:
        ok = [r for r in rows if r["schedule"] == schedule
              and max(r["delta_learning"], r["delta_forgetting"]) <= args.tolerance]
        best = min(ok, key=lambda r: r["steps"]) if ok else None
        print(f"  {schedule:<10} " + (f"{best['steps']} steps, {best['seconds']:.1f} s" if best
                                      else f"not within {max(args.steps)} steps"))
    return rows


if __name__ == "__main__":
    main()
