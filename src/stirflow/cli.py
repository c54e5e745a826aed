"""The ``stirflow`` command line.

``stirflow compare`` measures shared invariance between two models, A and B, the way the pipeline
does (DESIGN §2), with :func:`stirflow.compare`: each model's blocks are inverted once, batched,
and every score is a forward pass over those inversions. It writes :func:`stirflow.compare`'s
Dataset to one NetCDF file:

* ``flow[i, j]`` = STIR(B_j | A_i): X' inverted through A's block i, scored at B's block j;
* ``flow_reverse[i, j]`` = STIR(A_j | B_i): X' inverted through B's block i, scored at A's block j;
* ``cka[i, j]`` = CKA(A_i(X), B_j(X));
* ``forgetting`` / ``learning`` (read A as the model before finetuning), the within-model matrices
  ``within_ref`` (A) and ``within_eval`` (B), the inversions' losses and loss curves, and with
  ``--check-steps`` the convergence check;

and a PNG of the three matrices on one 0–1 colour scale next to it::

    stirflow compare --model-a pre.pt --model-b ft.pt --images data/cifar10/test.h5 --out ab.nc
    stirflow compare --model-a vit_base_patch32_224 --weights-a vit_b32.safetensors \\
        --model-b finetuned.pt --images photos/ --blocks 1-12 --out ab.nc

``stirflow convert-checkpoint old.pt [--dtype bfloat16]`` rewrites a checkpoint in the current
format (:func:`~stirflow.checkpoints.convert_checkpoint`), reading it without running code.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from .loading import CompareError, load_images, load_model

__all__ = ["main", "CompareError", "load_model", "load_images", "parse_blocks", "compare", "convert"]


# --------------------------------------------------------------------------- inputs

def parse_blocks(text: str, depth: int, kind: str = "block") -> list[int]:
    """``"all"`` → 1..depth; ``"1,3,5"`` and ranges ``"2-6"`` → sorted unique layers, each checked.

    ``kind`` names the layers in messages (``block``, ``stage``, ``layer``)."""
    if text.strip().lower() == "all":
        return list(range(1, depth + 1))
    blocks: set[int] = set()
    try:
        for part in text.split(","):
            lo, _, hi = part.strip().partition("-")
            blocks.update(range(int(lo), int(hi or lo) + 1))
    except ValueError:
        raise CompareError(f"--blocks: {text!r} is not 'all' or a list such as '1,2,3' or '1-4'") from None
    bad = sorted(b for b in blocks if not 1 <= b <= depth)
    if bad or not blocks:
        raise CompareError(f"--blocks: {bad or text} out of range: {kind}s 1..{depth} exist in both models")
    return sorted(blocks)


# --------------------------------------------------------------------------- the comparison

def compare(args: argparse.Namespace) -> Path:
    """Run ``stirflow compare``; returns the NetCDF path (the PNG has the same stem)."""
    from tqdm import tqdm

    from .comparison import compare as compare_models
    from .files import atomic_path
    from .models import prepare_for_inversion
    from .workflow import pick_device

    out = Path(args.out)
    if out.suffix.lower() not in (".nc", ".nc4", ".h5"):
        raise CompareError(f"--out: {out} should end in .nc")
    if args.check_steps and args.check_steps <= args.steps:
        raise CompareError(f"--check-steps: {args.check_steps} must exceed --steps ({args.steps})")
    if not 0 <= args.memory_fraction <= 1:
        raise CompareError(f"--memory-fraction: {args.memory_fraction} must lie in (0, 1] (0: --chunk-size)")
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        device = pick_device(args.device)
    except RuntimeError as err:
        raise CompareError(f"--device: {err}") from err
    model_a, info_a = load_model(args.model_a, args.weights_a, args.img_size, device, "--model-a", args.seed)
    model_b, info_b = load_model(args.model_b, args.weights_b, args.img_size, device, "--model-b", args.seed)
    depth = min(model_a.depth, model_b.depth)
    kind = model_a.layer_kind if model_a.layer_kind == model_b.layer_kind else "layer"
    blocks = parse_blocks(args.blocks, depth, kind)
    fixed = [s for m in (model_a, model_b) if m.img_size for s in m.img_size]
    size = max(fixed) if fixed else (args.img_size or 224)  # a folder's images for two convolutional models
    x, index, image_info = load_images(args.images, args.n_images or None, args.image_seed, size)
    similarity_options = {"kind": args.similarity, "debiased": args.debiased, "batch_size": args.cka_batch_size}
    if args.similarity == "minibatch" and not args.cka_batch_size:
        raise CompareError("--similarity minibatch needs --cka-batch-size")
    for model in (model_a, model_b):
        prepare_for_inversion(model, compile=args.compile, fused_attention=False if args.eager_attention else None)

    chunk = args.chunk_size or len(x) * len(blocks)
    passes = math.ceil(len(x) * len(blocks) / chunk)
    total = 2 * passes * (args.steps + (args.check_steps or 0))
    start = time.perf_counter()
    with tqdm(total=total, desc=f"inverting A and B ({len(blocks)} blocks)", unit="step", disable=args.quiet,
              file=sys.stderr, dynamic_ncols=True) as bar, \
            torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16):
        ds = compare_models(model_a, model_b, x.to(device), blocks=blocks, steps=args.steps, step_size=args.step_size,
                            step_schedule=args.step_schedule, final_step_size=args.final_step_size, seed=args.seed,
                            start=args.start, representation=args.representation, norm_p=args.norm_p,
                            similarity=similarity_options, chunk_size=args.chunk_size or None,
                            cuda_graphs=args.cuda_graphs, memory_fraction=args.memory_fraction or None,
                            check_steps=args.check_steps or None, progress=bar.update)
    ds["image_index"].values[:] = index
    ds.attrs.update(_settings(args, info_a, info_b, image_info, device, time.perf_counter() - start))
    for name, model in (("a", model_a), ("b", model_b)):  # what a layer is in each model
        ds.attrs[f"layer_kind_{name}"] = model.layer_kind
        ds.attrs[f"layer_modules_{name}"] = json.dumps([model.plan.modules[b - 1] for b in blocks])
    with atomic_path(out) as tmp:
        ds.to_netcdf(tmp, engine="h5netcdf")
    draw_heatmaps(ds, out.with_suffix(".png"))
    if not args.quiet:
        print(_summary(ds, out), file=sys.stderr)
    return out


def _settings(args: argparse.Namespace, info_a: dict, info_b: dict, image_info: dict, device: torch.device,
              seconds: float) -> dict[str, Any]:
    """NetCDF attributes beside :func:`stirflow.compare`'s own: where the models and images came from."""
    import timm

    from . import __version__

    return {
        "title": "stirflow compare: shared invariance (STIR) and CKA between models A and B",
        "model_a": args.model_a, "model_b": args.model_b,
        "model_a_info": json.dumps(info_a), "model_b_info": json.dumps(info_b),
        "images": args.images, "images_info": json.dumps(image_info),
        "image_seed": args.image_seed, "device": str(device), "chunk_size": args.chunk_size,
        "bf16": int(args.bf16), "compile": int(args.compile), "cuda_graphs": int(args.cuda_graphs),
        "eager_attention": int(args.eager_attention), "seconds": round(seconds, 3),
        "stirflow_version": str(__version__), "torch_version": str(torch.__version__),
        "timm_version": str(timm.__version__),
    }


def heatmap_figure(ds):
    """STIR(B | A), STIR(A | B) and CKA(A, B) side by side on one 0–1 colour scale, oriented as the
    pipeline's flow matrices (:func:`stirflow.plots.matrix_figure`: row i from the bottom up)."""
    from .plots import matrix_figure

    label_a, label_b = (f"{m} {ds.attrs.get(f'layer_kind_{m.lower()}', 'block')}" for m in "AB")  # "A stage"
    panels = [("flow", "STIR(B | A)", f"{label_a} i (inverted)", f"{label_b} j"),
              ("flow_reverse", "STIR(A | B)", f"{label_b} i (inverted)", f"{label_a} j"),
              ("cka", "CKA(A, B)", f"{label_a} i", f"{label_b} j")]
    return matrix_figure([ds[name].values for name, *_ in panels], [int(b) for b in ds["layer_ref"].values],
                         titles=[p[1] for p in panels], ylabels=[p[2] for p in panels],
                         xlabels=[p[3] for p in panels],
                         suptitle=f"A = {ds.attrs.get('model_a', 'A')}   B = {ds.attrs.get('model_b', 'B')}")


def draw_heatmaps(ds, path: Path) -> Path:
    """:func:`heatmap_figure` as a PNG at ``path``."""
    import matplotlib.pyplot as plt

    fig = heatmap_figure(ds)
    try:
        fig.savefig(path, dpi=150, bbox_inches="tight")
    finally:
        plt.close(fig)
    return path


def _summary(ds, out: Path) -> str:
    """A table per block: both STIR directions, CKA, the inversions' final losses and, with
    --check-steps, how far learning and forgetting moved."""
    check = "convergence_delta_learning" in ds
    head = f"{'block':>5} {'STIR(B|A)':>10} {'STIR(A|B)':>10} {'CKA':>7} {'loss A':>8} {'loss B':>8}"
    rows = [head + (f" {'|Δ learn|':>10} {'|Δ forget|':>10}" if check else "")]
    for k, b in enumerate(ds["layer"].values):
        row = (f"{int(b):>5} {1 - ds['forgetting'].values[k]:>10.4f} {1 - ds['learning'].values[k]:>10.4f} "
               f"{ds['cka'].values[k, k]:>7.4f} {ds['inversion_loss_a'].values[k]:>8.4f} "
               f"{ds['inversion_loss_b'].values[k]:>8.4f}")
        if check:
            row += (f" {ds['convergence_delta_learning'].values[k]:>10.4f}"
                    f" {ds['convergence_delta_forgetting'].values[k]:>10.4f}")
        rows.append(row)
    if check:
        worst = float(max(ds["convergence_delta_learning"].max(), ds["convergence_delta_forgetting"].max()))
        rows.append(f"convergence check with {ds.attrs['check_steps']} steps: largest |Δ| {worst:.4f}")
    return "\n".join(rows + [f"wrote {out} and {out.with_suffix('.png')}"])


# --------------------------------------------------------------------------- argument parsing

def _positive_or_zero(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    from .cka import SIMILARITY_KINDS
    from .inversion import START_TYPES, STEP_SCHEDULES
    from .models import REPRESENTATIONS

    parser = argparse.ArgumentParser(prog="stirflow", description="stirflow: invariances of vision transformers.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    p = sub.add_parser("compare", help="STIR both ways, the flow and CKA matrices between two models",
                       description="STIR(B|A), STIR(A|B) and CKA(A, B) over blocks, written to NetCDF plus a heatmap PNG. "
                                   "Defaults follow the pipeline's config defaults.")
    models = p.add_argument_group("models")
    models.add_argument("--model-a", required=True, help="stirflow checkpoint (.pt) or timm model name")
    models.add_argument("--model-b", required=True, help="stirflow checkpoint (.pt) or timm model name")
    models.add_argument("--weights-a", help="for a timm name: local weight file, or 'random' (default: timm's "
                                            "pretrained weights, downloaded)")
    models.add_argument("--weights-b", help="as --weights-a, for model B")
    models.add_argument("--img-size", type=int, help="input size for timm models (default: the model's own)")
    data = p.add_argument_group("images")
    data.add_argument("--images", required=True, help="HDF5 image set (prepare_dataset) or a folder of images")
    data.add_argument("--n-images", type=_positive_or_zero, default=128, help="images to use, 0 = all (default 128)")
    data.add_argument("--image-seed", type=int, default=0, help="seed of the image selection (default 0)")
    inv = p.add_argument_group("inversion and scoring")
    inv.add_argument("--blocks", default="all", help="'all', '1,2,3' or '1-6' (default all)")
    inv.add_argument("--steps", type=_positive_or_zero, default=100, help="inversion steps (default 100)")
    inv.add_argument("--step-size", type=float, default=0.5, help="normalised step size η (default 0.5)")
    inv.add_argument("--step-schedule", choices=STEP_SCHEDULES, default="constant",
                     help="η over the steps: constant (the reference) or lowered to --final-step-size (default constant)")
    inv.add_argument("--final-step-size", type=float, help="last η under a schedule (default: step size / 100)")
    inv.add_argument("--check-steps", type=_positive_or_zero, default=0,
                     help="convergence check: also invert with this many steps and report how far learning and "
                          "forgetting move (default: no check)")
    inv.add_argument("--start", choices=START_TYPES, default="noise", help="inversion start (default noise)")
    inv.add_argument("--seed", type=int, default=0, help="seed of the inversion start (default 0)")
    inv.add_argument("--representation", choices=REPRESENTATIONS, default="tokens",
                     help="block representation (default tokens: all tokens flattened)")
    inv.add_argument("--norm-p", type=float, default=2.0, help="norm of the relative loss (default 2)")
    inv.add_argument("--similarity", choices=SIMILARITY_KINDS, default="linear", help="CKA kind (default linear)")
    inv.add_argument("--debiased", action="store_true", help="debiased HSIC estimator")
    inv.add_argument("--cka-batch-size", type=int, help="batch size of minibatch CKA")
    compute = p.add_argument_group("compute")
    compute.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N")
    compute.add_argument("--chunk-size", type=_positive_or_zero, default=0,
                         help="images × blocks per inversion pass, 0 = all in one (default 0)")
    compute.add_argument("--bf16", action="store_true", help="bf16 autocast for the inversions")
    compute.add_argument("--compile", action="store_true",
                         help="torch.compile the truncated layer stack for the inversions (static shapes)")
    compute.add_argument("--cuda-graphs", action="store_true",
                         help="replay each inversion chunk's steps as one CUDA graph (CUDA devices)")
    compute.add_argument("--eager-attention", action="store_true",
                         help="timm's eager softmax attention instead of its fused kernel")
    compute.add_argument("--memory-fraction", type=float, default=0.0, metavar="F",
                         help="CUDA: chunks sized to fill this fraction of the free GPU memory (instead of --chunk-size)")
    compute.add_argument("--threads", type=int, help="CPU threads for torch")
    p.add_argument("--out", required=True, help="NetCDF output path (.nc); the PNG is written next to it")
    p.add_argument("--quiet", action="store_true", help="no progress bar or summary")

    from .checkpoints import CHECKPOINT_DTYPES

    c = sub.add_parser("convert-checkpoint", help="rewrite checkpoints in the current format, without running code",
                       description="Rewrite stirflow checkpoints in the current format (in place unless --out). "
                                   "Files are read with PyTorch's restricted unpickler; NumPy values in them become "
                                   "plain numbers and tensors. A file referring to any other Python object is "
                                   "refused, and nothing in it is executed.")
    c.add_argument("checkpoints", nargs="+", metavar="CHECKPOINT", help="checkpoint files (.pt)")
    c.add_argument("--out", help="output path (one checkpoint only; default: replace the file)")
    c.add_argument("--dtype", choices=CHECKPOINT_DTYPES,
                   help="store the weights in this type (default: as stored); they load as float32")
    return parser


def convert(args: argparse.Namespace) -> list[Path]:
    """Run ``stirflow convert-checkpoint``; returns the paths written."""
    from .checkpoints import convert_checkpoint

    if args.out and len(args.checkpoints) > 1:
        raise CompareError("--out takes one checkpoint; without it each file is rewritten in place")
    written = [convert_checkpoint(path, args.out, dtype=args.dtype) for path in args.checkpoints]
    for path in written:
        print(f"wrote {path}", file=sys.stderr)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``stirflow`` console script."""
    from .data import DataFileError
    from .models import CheckpointError

    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        {"compare": compare, "convert-checkpoint": convert}[args.command](args)
    except (CompareError, CheckpointError, DataFileError) as err:
        print(f"stirflow {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
