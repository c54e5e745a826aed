"""Throughput of every corruption of stirflow.corruptions, in images per second.

Prints one row per corruption: images per second averaged over severities 1..5 (after one
warm-up call per corruption), and the mean time per batch.

    python benchmarks/corruptions_speed.py --image-size 32 --batch 256 --device cpu
"""

from __future__ import annotations

import argparse
import time

import torch

from stirflow.corruptions import CORRUPTIONS, corrupt


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_corruption(images: torch.Tensor, name: str, repeats: int = 1) -> float:
    """Mean seconds per call of ``corrupt`` over severities 1..5, after one warm-up call."""
    corrupt(images, name, 1)
    _sync(images.device)
    start = time.perf_counter()
    for _ in range(repeats):
        for severity in range(1, 6):
            corrupt(images, name, severity, seed=severity)
    _sync(images.device)
    return (time.perf_counter() - start) / (5 * repeats)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=32, help="height and width in pixels (default 32)")
    parser.add_argument("--batch", type=int, default=256, help="images per call (default 256)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--repeats", type=int, default=1, help="timed passes over the 5 severities (default 1)")
    parser.add_argument("--only", nargs="*", choices=CORRUPTIONS, metavar="NAME", help="time only these corruptions")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(args.batch, 3, args.image_size, args.image_size, generator=generator).to(device)
    threads = torch.get_num_threads()
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu, {threads} thread{'s' * (threads != 1)}"
    print(f"# {args.batch} images of {args.image_size}x{args.image_size} px on {device} ({where}), torch {torch.__version__}")
    print(f"{'corruption':<18} {'images/s':>12} {'ms/batch':>10}")
    for name in args.only or CORRUPTIONS:
        seconds = time_corruption(images, name, args.repeats)
        print(f"{name:<18} {args.batch / seconds:>12,.0f} {1000 * seconds:>10.1f}", flush=True)


if __name__ == "__main__":
    main()
