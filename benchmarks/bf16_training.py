"""bf16 autocast in training and evaluation against fp32, on small trained models.

For each seed, the same model (same initialisation, same batches and augmentation draws) is
finetuned twice with :func:`stirflow.training.train`, once in fp32 and once with ``bf16: true``
(autocast for the forward passes; weights, gradients and optimizer state stay fp32), on
scikit-learn's bundled digits. Prints per seed: the final test accuracy of both, their
difference, and the accuracy the fp32-trained model gets when evaluated under bf16 autocast
(:func:`stirflow.training.evaluate` with ``bf16=True``), and the training seconds of each.
"Within noise" is judged against the spread between seeds of the fp32 runs.

    python benchmarks/bf16_training.py                         # 2 seeds, 16 px, 10 epochs, CPU
    python benchmarks/bf16_training.py --device cuda --seeds 0 1 2 --epochs 20
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from stirflow.data import ImageSet, make_digits
from stirflow.models import create_model
from stirflow.training import evaluate, train


def finetune(spec: dict, cfg: dict, train_set: ImageSet, test_set: ImageSet, seed: int, device: str,
             work: Path) -> tuple[torch.nn.Module, list[dict], float]:
    """The model trained with ``cfg`` from the initialisation drawn with ``seed``; its history and seconds."""
    torch.manual_seed(seed)
    model = create_model(spec)
    checkpoints = [work / f"epoch_{e:03d}.pt" for e in range(cfg["epochs"] + 1)]
    start = time.perf_counter()
    history = train(model, spec, train_set, test_set, {**cfg, "seed": seed}, checkpoints=checkpoints,
                    resume_dir=work / "resume", run=f"seed{seed}-{'bf16' if cfg['bf16'] else 'fp32'}", device=device)
    return model, history, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--image-size", type=int, default=16)
    parser.add_argument("--patch-size", type=int, default=4)
    parser.add_argument("--dim", type=int, default=48)
    parser.add_argument("--depth", type=int, default=2)
    parser.add_argument("--heads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.005, help="AdamW learning rate")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    split = make_digits(args.image_size, 0.25, seed=0)
    train_set = ImageSet(*split["train"], {"num_classes": 10})
    test_set = ImageSet(*split["test"], {"num_classes": 10})
    spec = {"task": "classification", "num_classes": 10,
            "vit": {"img_size": args.image_size, "patch_size": args.patch_size, "embed_dim": args.dim,
                    "depth": args.depth, "num_heads": args.heads, "mlp_ratio": 2.0}}
    cfg = {"epochs": args.epochs, "batch_size": args.batch_size, "eval_batch_size": 512,
           "optimizer": {"name": "adamw", "lr": args.lr, "weight_decay": 0.05},
           "schedule": "cosine", "warmup_epochs": 1, "augment": {"crop_padding": 1}}
    x_test, y_test = torch.from_numpy(test_set.images), torch.from_numpy(test_set.labels)

    rows = []
    print(f"# digits {args.image_size} px, ViT depth {args.depth} width {args.dim}, {args.epochs} epochs, "
          f"{len(train_set)} training / {len(test_set)} test images, device {args.device}")
    print(f"{'seed':>4}  {'fp32 acc':>8}  {'bf16 acc':>8}  {'diff':>7}  {'fp32 model, bf16 eval':>21}  "
          f"{'fp32 s':>7}  {'bf16 s':>7}")
    for seed in args.seeds:
        with tempfile.TemporaryDirectory() as tmp:
            fp32_model, fp32, fp32_s = finetune(spec, {**cfg, "bf16": False}, train_set, test_set, seed, args.device,
                                                Path(tmp) / "fp32")
            _, bf16, bf16_s = finetune(spec, {**cfg, "bf16": True}, train_set, test_set, seed, args.device,
                                       Path(tmp) / "bf16")
        eval_bf16 = evaluate(fp32_model, x_test, y_test, 512, bf16=True)["accuracy"]
        row = {"seed": seed, "fp32_accuracy": fp32[-1]["test_accuracy"], "bf16_accuracy": bf16[-1]["test_accuracy"],
               "fp32_model_bf16_eval_accuracy": eval_bf16, "fp32_seconds": fp32_s, "bf16_seconds": bf16_s}
        rows.append(row)
        print(f"{seed:>4}  {row['fp32_accuracy']:>8.4f}  {row['bf16_accuracy']:>8.4f}  "
              f"{row['bf16_accuracy'] - row['fp32_accuracy']:>+7.4f}  {eval_bf16:>21.4f}  {fp32_s:>7.1f}  {bf16_s:>7.1f}")
    fp32_acc = np.array([r["fp32_accuracy"] for r in rows])
    diffs = np.array([r["bf16_accuracy"] - r["fp32_accuracy"] for r in rows])
    spread = float(fp32_acc.max() - fp32_acc.min()) if len(rows) > 1 else float("nan")
    print(f"# mean bf16 - fp32: {diffs.mean():+.4f}; largest |diff| {np.abs(diffs).max():.4f}; "
          f"fp32 spread over seeds {spread:.4f}")
    if args.json:
        args.json.write_text(json.dumps({"runs": rows, "fp32_spread": spread}, indent=1))


if __name__ == "__main__":
    main()
