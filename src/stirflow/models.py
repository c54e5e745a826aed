"""Vision transformers as the pipeline sees them: a timm ViT, its input handling and a task head.

A :class:`StirViT` takes images (N, 3, H, W) with values in [0, 1] at any size: resizing to the
ViT's input size and the input normalisation are part of the model, so inversions live in image
space. Its blocks are numbered 1..L; :meth:`StirViT.block_outputs` runs only as many blocks as
asked for (an inversion of block i never pays for blocks i+1..L).

Every model is built from a plain dict of constructor arguments (:func:`create_model`), which
each checkpoint stores beside the weights, so :func:`load_checkpoint` is all a user needs.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from .checkpoints import CheckpointError, check_weight_file, read_checkpoint, save_checkpoint

__all__ = [
    "StirViT",
    "create_model",
    "load_checkpoint",
    "save_checkpoint",
    "block_representation",
    "pool_tokens",
    "REPRESENTATIONS",
    "TASKS",
    "CheckpointError",
    "initial_model",
    "prepare_for_inversion",
    "read_checkpoint",
]

TASKS = ("classification", "reconstruction")
REPRESENTATIONS = ("tokens", "cls", "mean")


class ReconstructionHead(nn.Module):
    """Patch tokens → image: tokens as a grid, 1×1 conv to patch²·3 channels, PixelShuffle(patch)."""

    def __init__(self, embed_dim: int, patch_size: int, grid_size: tuple[int, int]):
        super().__init__()
        self.grid_size = grid_size
        self.proj = nn.Conv2d(embed_dim, patch_size * patch_size * 3, kernel_size=1)
        self.shuffle = nn.PixelShuffle(patch_size)

    def forward(self, patch_tokens: torch.Tensor) -> torch.Tensor:
        """(N, gh·gw, D) → (N, 3, gh·patch, gw·patch)."""
        n, _, d = patch_tokens.shape
        grid = patch_tokens.transpose(1, 2).reshape(n, d, *self.grid_size)
        return self.shuffle(self.proj(grid))


class StirViT(nn.Module):
    """A timm VisionTransformer with resizing, normalisation and a classification or reconstruction head.

    Args:
        vit: the timm ViT (its own head is used for classification; for reconstruction it has none).
        task: ``"classification"`` or ``"reconstruction"``.
        mean, std: per-channel input normalisation applied after resizing.
    """

    def __init__(self, vit: nn.Module, task: str, mean: tuple[float, ...], std: tuple[float, ...]):
        super().__init__()
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")
        self.vit = vit
        self.task = task
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.img_size: tuple[int, int] = tuple(vit.patch_embed.img_size)
        self.patch_size: int = int(vit.patch_embed.patch_size[0])
        self.decoder = (ReconstructionHead(vit.embed_dim, self.patch_size, tuple(vit.patch_embed.grid_size))
                        if task == "reconstruction" else None)

    @property
    def depth(self) -> int:
        return len(self.vit.blocks)

    @property
    def num_prefix_tokens(self) -> int:
        return int(self.vit.num_prefix_tokens)

    def resize(self, x: torch.Tensor) -> torch.Tensor:
        """Images (N, 3, H, W) in [0, 1] → (N, 3, *img_size), bilinear (identity at the right size)."""
        if tuple(x.shape[-2:]) == self.img_size:
            return x
        return F.interpolate(x, size=self.img_size, mode="bilinear", align_corners=False, antialias=True)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Images (N, 3, H, W) in [0, 1] → tokens (N, T, D) entering block 1."""
        x = (self.resize(x) - self.mean) / self.std
        vit = self.vit
        return vit.norm_pre(vit.patch_drop(vit._pos_embed(vit.patch_embed(x))))

    def block_outputs(self, x: torch.Tensor, depth: int | None = None) -> list[torch.Tensor]:
        """Outputs of blocks 1..depth, each (N, T, D); blocks past ``depth`` are not run."""
        depth = self.depth if depth is None else depth
        if not 0 < depth <= self.depth:
            raise ValueError(f"block {depth} is out of range: the model has blocks 1..{self.depth}")
        h = self.embed(x)
        outputs = []
        for block in self.vit.blocks[:depth]:
            h = block(h)
            outputs.append(h)
        return outputs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Classification: logits (N, num_classes). Reconstruction: images (N, 3, *img_size)."""
        h = self.block_outputs(x)[-1]
        h = self.vit.norm(h)
        if self.decoder is not None:
            return self.decoder(h[:, self.num_prefix_tokens:])
        return self.vit.forward_head(h)


def pool_tokens(tokens: torch.Tensor, representation: str, num_prefix_tokens: int) -> torch.Tensor:
    """Block output (N, T, D) → representation (N, F).

    ``tokens``: every token, CLS included, flattened (F = T·D; what the paper's code used);
    ``cls``: the first token (F = D); ``mean``: the mean of the patch tokens (F = D).
    """
    if representation == "tokens":
        return tokens.flatten(1)
    if representation == "cls":
        if num_prefix_tokens == 0:
            raise ValueError("representation 'cls' needs a model with a class token")
        return tokens[:, 0]
    if representation == "mean":
        return tokens[:, num_prefix_tokens:].mean(dim=1)
    raise ValueError(f"unknown representation {representation!r}; expected one of {REPRESENTATIONS}")


def block_representation(model: StirViT, block: int, representation: str = "tokens") -> Callable[[torch.Tensor], torch.Tensor]:
    """``fn(images (N, 3, H, W) in [0, 1]) → (N, F)``: block ``block``'s output (1-based), pooled.

    ``fn.model`` is ``model``, so that :func:`~stirflow.inversion.invert_fn` can run it in eval mode.
    """
    if not 0 < block <= model.depth:
        raise ValueError(f"block {block} is out of range: the model has blocks 1..{model.depth}")
    if representation not in REPRESENTATIONS:
        raise ValueError(f"unknown representation {representation!r}; expected one of {REPRESENTATIONS}")

    def fn(images: torch.Tensor) -> torch.Tensor:
        return pool_tokens(model.block_outputs(images, block)[-1], representation, model.num_prefix_tokens)

    fn.model = model  # lets the inversion put the model in eval mode for its duration
    return fn


# --------------------------------------------------------------------------- construction

def _build_vit(spec: dict[str, Any], num_classes: int, pretrained: bool = False,
               weights_file: str | None = None) -> nn.Module:
    import timm

    kwargs = dict(spec.get("vit") or {})
    kwargs["num_classes"] = num_classes
    name = spec.get("timm_name")
    if name:
        if not timm.is_model(name.split(".")[0]):
            raise ValueError(f"model.timm_name: {name!r} is not a timm model")
        if not (pretrained or weights_file):
            return timm.create_model(name, pretrained=False, **kwargs)
        overlay = None
        if weights_file:  # refuses a file whose pickle would run code before timm opens it
            check_weight_file(weights_file, "pretrained weights file", "pretrain.weights.file")
            # A state dict (.pth, .bin, .safetensors) goes through the model's checkpoint filter, which
            # resamples the position embeddings to the configured image size; an .npz is the original
            # JAX release (timm's custom loader, which resamples them too).
            overlay = {"file": str(weights_file), "custom_load": str(weights_file).endswith(".npz")}
        source = weights_file or f"timm's pretrained weights for {name}"
        with _timm_missing_keys() as missing:
            try:
                vit = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay, **kwargs)
            except (RuntimeError, KeyError, ValueError, OSError) as err:
                if weights_file:
                    raise CheckpointError(f"{weights_file}: cannot load these weights into {name} "
                                          f"({type(err).__name__}: {err})") from err
                raise CheckpointError(f"{source}: cannot get them ({type(err).__name__}: {err}); without network, "
                                      f"fetch them first on a machine with network (docs/reproducing.md) "
                                      f"or set pretrain.weights.file") from err
        # timm loads non-strictly when the classifier is replaced and only logs what was missing:
        # any missing encoder weight means the file does not fit the model.
        missing = [k for k in missing if not k.startswith("head.")]
        if missing:
            raise CheckpointError(f"{source}: the weights do not fit {name}: missing {missing[:5]}"
                                  f"{' ...' if len(missing) > 5 else ''} ({len(missing)} tensors)")
        return vit
    from timm.models.vision_transformer import VisionTransformer

    return VisionTransformer(**kwargs)


@contextlib.contextmanager
def _timm_missing_keys():
    """Collect the keys timm reports missing while loading pretrained weights (it only logs them)."""
    keys: list[str] = []
    logger = logging.getLogger("timm.models._builder")
    level, propagate, threshold = logger.level, logger.propagate, logger.getEffectiveLevel()
    quiet = threshold > logging.INFO

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            match = re.match(r"Missing keys \((.*)\) discovered", record.getMessage())
            if match:
                keys.extend(k.strip() for k in match.group(1).split(","))
            if quiet and propagate and record.levelno >= threshold and logger.parent is not None:
                logger.parent.handle(record)  # what propagation would have passed on

    handler = Collect(logging.INFO)
    logger.addHandler(handler)
    if quiet:  # see the INFO record without passing it to handlers that would not have seen it
        logger.setLevel(logging.INFO)
        logger.propagate = False
    try:
        yield keys
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate


def create_model(spec: dict[str, Any], *, pretrained: bool = False, weights_file: str | os.PathLike | None = None) -> StirViT:
    """Build a :class:`StirViT` from its constructor arguments.

    ``spec`` keys: ``task``, ``num_classes`` (classification), ``mean``, ``std``, and either
    ``timm_name`` (a timm model name, with ``vit`` holding extra keyword arguments such as
    ``img_size``) or ``vit`` alone (keyword arguments of timm's ``VisionTransformer``).
    ``pretrained`` loads timm's weights for ``timm_name``; ``weights_file`` loads a local file
    through timm's pretrained-config override (position embeddings are resampled when the
    image size differs). Checkpoints store ``spec`` and the weights, never these two flags.
    """
    task = spec.get("task", "classification")
    num_classes = int(spec.get("num_classes", 0)) if task == "classification" else 0
    vit = _build_vit(spec, num_classes, pretrained=pretrained,
                     weights_file=str(weights_file) if weights_file else None)
    return StirViT(vit, task, tuple(spec.get("mean", (0.5, 0.5, 0.5))), tuple(spec.get("std", (0.5, 0.5, 0.5))))


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> StirViT:
    """Load a checkpoint written by the pipeline: the model in eval mode, on ``map_location``.

    The checkpoint's other entries (``epoch``, ``run``, ``metrics``) are at ``model.checkpoint_info``.
    """
    ckpt = read_checkpoint(path, map_location)
    model = create_model(ckpt["spec"])
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as err:
        raise CheckpointError(f"{path}: weights do not match the stored model spec ({err})") from err
    model.checkpoint_info = {k: v for k, v in ckpt.items() if k not in ("state_dict", "optimizer", "scheduler")}
    return model.to(map_location).eval()


def initial_model(spec: dict[str, Any], init: str, *, seed: int = 0, init_checkpoint: str | os.PathLike | None = None,
                  weights: dict[str, Any] | None = None) -> StirViT:
    """The model a finetuning run starts from (its epoch 0).

    ``scratch``: a random initialisation drawn with ``seed``. ``pretrained``: the encoder of
    ``init_checkpoint`` (a stirflow checkpoint from pretraining) or of ``weights``
    (``{"timm_pretrained": True}`` or ``{"file": path}``, loaded through timm), with a new head
    initialised with ``seed``.
    """
    torch.manual_seed(seed)
    if init == "scratch":
        return create_model(spec)
    if init != "pretrained":
        raise ValueError(f"unknown init {init!r}; expected 'pretrained' or 'scratch'")
    if init_checkpoint is not None and not (weights and weights.get("file")):
        model = create_model(spec)
        source = read_checkpoint(init_checkpoint)["state_dict"]
        head = ("vit.head.", "decoder.")
        encoder = {k: v for k, v in source.items() if not k.startswith(head)}
        missing, unexpected = model.load_state_dict(encoder, strict=False)
        missing = [k for k in missing if not k.startswith(head)]
        if missing or unexpected:
            raise CheckpointError(f"{init_checkpoint}: encoder does not fit the configured model "
                                  f"(missing {missing[:5]}, unexpected {unexpected[:5]})")
        return model
    if not weights:
        raise ValueError("a pretrained init needs a pretraining checkpoint or pretrain.weights")
    model = create_model(spec, pretrained=bool(weights.get("timm_pretrained")), weights_file=weights.get("file"))
    torch.manual_seed(seed)  # the new head's draw must not depend on how timm loaded the weights
    if model.decoder is not None:
        model.decoder = ReconstructionHead(model.vit.embed_dim, model.patch_size, tuple(model.vit.patch_embed.grid_size))
    elif spec.get("num_classes"):
        model.vit.reset_classifier(int(spec["num_classes"]))
    return model


def prepare_for_inversion(model: StirViT, compile: bool = False) -> StirViT:
    """Eval mode, no parameter gradients (only the input is optimised), optionally compiled blocks."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    if compile:
        for block in model.vit.blocks:
            block.compile(dynamic=True)
    return model
