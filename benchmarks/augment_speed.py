"""Per-image augmentation of a training batch, three ways: the seconds per batch of each.

The released code's recipe — RandomResizedCrop to the model's input size, horizontal flip,
ColorJitter(0.25, 0.25, 0.25), RandomRotation(2) — with its own parameters for every image:

* ours: :func:`stirflow.augmentation.augment`, parameters from a CPU generator, each operation
  once per batch (``grid_sample`` for the crop and the rotation, blends for the colour);
* torchvision per image: the same parameters, applied image by image with torchvision's
  functional API (``torchvision.transforms.v2.functional``), the way to draw per-image
  parameters with torchvision (its transforms draw one set per call);
* kornia: ``kornia.augmentation`` with ``same_on_batch=False`` (batched, per-image parameters
  from torch's global generator), when kornia is importable.

Prints the median seconds per batch over ``--repeats`` timed runs after one warm-up run.

    python benchmarks/augment_speed.py                          # CPU: 64 images, 32 px -> 64 px
    python benchmarks/augment_speed.py --device cuda --n 256 --out-size 224
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import time

import torch

from stirflow.augmentation import augment, resized_crop_boxes

CFG = {"random_resized_crop": {"scale": (0.08, 1.0), "ratio": (3 / 4, 4 / 3)}, "hflip": True,
       "color_jitter": {"brightness": 0.25, "contrast": 0.25, "saturation": 0.25}, "rotation": 2.0}


def ours(x: torch.Tensor, gen: torch.Generator, size: int) -> torch.Tensor:
    return augment(x, CFG, gen, size=(size, size))


def torchvision_per_image(x: torch.Tensor, gen: torch.Generator, size: int) -> torch.Tensor:
    import torchvision.transforms.v2.functional as TF
    from torchvision.transforms import InterpolationMode

    n = len(x)
    boxes = resized_crop_boxes(n, x.shape[-2], x.shape[-1], gen).tolist()
    flips = (torch.rand(n, generator=gen) < 0.5).tolist()
    order = torch.rand(n, 3, generator=gen).argsort(1).tolist()
    factors = torch.empty(n, 3).uniform_(0.75, 1.25, generator=gen).tolist()
    angles = torch.empty(n).uniform_(-2, 2, generator=gen).tolist()
    adjust = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation)
    out = []
    for i in range(n):
        y = TF.resized_crop(x[i], *boxes[i], [size, size], antialias=True)
        if flips[i]:
            y = TF.horizontal_flip(y)
        for k in order[i]:
            y = adjust[k](y, factors[i][k])
        out.append(TF.rotate(y, angles[i], interpolation=InterpolationMode.NEAREST))
    return torch.stack(out)


def kornia_pipeline(size: int):
    import kornia.augmentation as K

    return torch.nn.Sequential(
        K.RandomResizedCrop((size, size), scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), cropping_mode="resample"),
        K.RandomHorizontalFlip(),
        K.ColorJiggle(0.25, 0.25, 0.25, p=1.0),  # ColorJiggle: the adjustments in a random order, as torchvision
        K.RandomRotation(2.0, resample="nearest", p=1.0),
    )


def timed(fn, sync, repeats: int) -> float:
    fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=64, help="images per batch")
    parser.add_argument("--in-size", type=int, default=32, help="stored image size")
    parser.add_argument("--out-size", type=int, default=64, help="the model's input size (the crop's output)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    x = torch.rand(args.n, 3, args.in_size, args.in_size, generator=torch.Generator().manual_seed(0)).to(device)
    gen = torch.Generator().manual_seed(0)

    ways = {"ours (batched, per-image parameters)": lambda: ours(x, gen, args.out_size),
            "torchvision functional, image by image": lambda: torchvision_per_image(x, gen, args.out_size)}
    if importlib.util.find_spec("kornia") is not None:
        pipeline = kornia_pipeline(args.out_size).to(device)
        ways["kornia.augmentation (batched)"] = lambda: pipeline(x)
    print(f"# {args.n} images {args.in_size} px -> {args.out_size} px on {device}, {args.threads} thread(s), "
          f"median of {args.repeats}")
    print(f"{'way':<42} {'s per batch':>12} {'images/s':>10}")
    for name, fn in ways.items():
        seconds = timed(fn, sync, args.repeats)
        print(f"{name:<42} {seconds:>12.4f} {args.n / seconds:>10.0f}")
    if "kornia.augmentation (batched)" not in ways:
        print("# kornia not installed: not timed")


if __name__ == "__main__":
    main()
