"""Models as the pipeline sees them: any timm model with numbered layers, its input handling and a head.

A :class:`StirModel` wraps a timm model (``model.net``) and takes images (N, 3, H, W) with values
in [0, 1] at any size: resizing to the model's input size and the input normalisation are part
of the model, so inversions live in image space. Its layers are numbered 1..L and found from
timm's own description of the model (``feature_info``, the modules ``forward_intermediates``
returns the outputs of):

* ``VisionTransformer`` (ViT, DeiT, ...): blocks ``blocks.0``.., kind ``block``, outputs (N, T, D);
* ``ResNet``: stages ``layer1``..``layer4``, kind ``stage``, outputs (N, C, H, W);
* ``ConvNeXt``: stages ``stages.0``.., kind ``stage``, outputs (N, C, H, W);
* ``SwinTransformer``: stages ``layers.0``.., kind ``stage``, outputs (N, H, W, C);
* any other (BEiT, EVA, EfficientNet, ...): every ``feature_info`` entry, kind ``block`` for
  token outputs (N, T, D), else ``stage`` (N, C, H, W).

The first four run their layers one after another on their stem's output: there,
:meth:`StirModel.layer_outputs` runs only as many layers
as asked for (an inversion of layer i never pays for layers i+1..L) and
:meth:`StirModel.exit_outputs` lets samples leave the pass after their own layer. Other models
(BEiT's blocks share a relative position bias computed outside them) go through timm's
``forward_intermediates(..., stop_early=True)``, once per exit layer.

:class:`StirViT` is the VisionTransformer case, the only one with a reconstruction head. Every
model is built from a plain dict of constructor arguments (:func:`create_model`), which each
checkpoint stores beside the weights, so :func:`load_checkpoint` is all a user needs.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import os
import re
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .checkpoints import CheckpointError, check_weight_file, read_checkpoint, save_checkpoint

__all__ = [
    "StirModel",
    "StirViT",
    "LayerPlan",
    "plan_layers",
    "describe_timm_model",
    "create_model",
    "load_checkpoint",
    "save_checkpoint",
    "layer_representation",
    "block_representation",
    "pool_layer",
    "pool_tokens",
    "REPRESENTATIONS",
    "TASKS",
    "CheckpointError",
    "initial_model",
    "prepare_for_inversion",
    "set_fused_attention",
    "read_checkpoint",
]

TASKS = ("classification", "reconstruction")
REPRESENTATIONS = ("tokens", "cls", "mean")


# --------------------------------------------------------------------------- layers of a timm model

@dataclass(frozen=True)
class LayerPlan:
    """Where a timm model's layers are and how to run them.

    ``modules``: the module path of layer 1..L in the timm model (``blocks.0``, ``layer1``, ...);
    ``kind``: ``block`` (transformer blocks) or ``stage`` (stages of a hierarchical model or CNN);
    ``layout``: a layer output's shape, ``NLC`` (N, tokens, D), ``NCHW`` or ``NHWC``;
    ``sequential``: the layers can be called one after another on the stem's output
    (else timm's ``forward_intermediates`` runs them); ``feature_offset``: the
    ``forward_intermediates`` index of layer 1 (ResNet's index 0 is its stem).
    """

    family: str
    kind: str
    modules: tuple[str, ...]
    layout: str
    sequential: bool
    feature_offset: int = 0

    @property
    def depth(self) -> int:
        return len(self.modules)


def _vit_stem(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return net.norm_pre(net.patch_drop(net._pos_embed(net.patch_embed(x))))


def _resnet_stem(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return net.maxpool(net.act1(net.bn1(net.conv1(x))))


# timm class → (stem, layer module paths, layout, kind, feature_offset). Each stem is what the
# class's own forward_intermediates runs before its first layer; plan_layers checks the layer
# paths against the model's feature_info before using them.
_SEQUENTIAL: dict[str, tuple[Callable, Callable[[nn.Module], list[str]], str, str, int]] = {
    "VisionTransformer": (_vit_stem, lambda net: [f"blocks.{i}" for i in range(len(net.blocks))], "NLC", "block", 0),
    "ResNet": (_resnet_stem, lambda net: ["layer1", "layer2", "layer3", "layer4"], "NCHW", "stage", 1),
    "ConvNeXt": (lambda net, x: net.stem(x), lambda net: [f"stages.{i}" for i in range(len(net.stages))],
                 "NCHW", "stage", 0),
    "SwinTransformer": (lambda net, x: net.patch_embed(x), lambda net: [f"layers.{i}" for i in range(len(net.layers))],
                        "NHWC", "stage", 0),
}


def _sequential_family(net: nn.Module) -> str | None:
    """The :data:`_SEQUENTIAL` entry of ``net``'s class or of a timm base class (DeiT's distilled ViT)."""
    for cls in type(net).__mro__:
        if cls.__name__ in _SEQUENTIAL and cls.__module__.startswith("timm."):
            return cls.__name__
    return None


def plan_layers(net: nn.Module) -> LayerPlan:
    """The :class:`LayerPlan` of a timm model (built on any device, the meta device included)."""
    info = getattr(net, "feature_info", None)
    modules = [f["module"] for f in info] if isinstance(info, list) else None
    if not modules or not hasattr(net, "forward_intermediates"):
        raise ValueError(f"{type(net).__name__}: timm does not expose this model's intermediate layers "
                         f"(no feature_info / forward_intermediates)")
    family = _sequential_family(net)
    if family is not None:
        _, layer_paths, layout, kind, offset = _SEQUENTIAL[family]
        paths = layer_paths(net)
        if modules[offset:] == paths:
            return LayerPlan(family, kind, tuple(paths), layout, True, offset)
        logging.getLogger(__name__).warning("%s: feature_info lists %s, not %s; using forward_intermediates",
                                            type(net).__name__, modules, paths)
    layout = "NLC" if _takes(net.forward_intermediates, "return_prefix_tokens") else "NCHW"
    return LayerPlan(type(net).__name__, "block" if layout == "NLC" else "stage", tuple(modules), layout, False)


def _takes(fn: Callable, name: str) -> bool:
    return name in inspect.signature(fn).parameters


def pool_layer(h: torch.Tensor, representation: str, layout: str = "NLC", num_prefix_tokens: int = 0) -> torch.Tensor:
    """A layer output → representation (N, F).

    ``tokens``: the whole output flattened (for a ViT every token, CLS included: what the paper's
    code used); ``cls``: the class token (models with one); ``mean``: the mean over the patch tokens
    or the spatial positions (F = channels).
    """
    if representation == "tokens":
        return h.flatten(1)
    if representation == "cls":
        if layout != "NLC" or num_prefix_tokens == 0:
            raise ValueError("representation 'cls' needs a model with a class token")
        return h[:, 0]
    if representation == "mean":
        if layout == "NLC":
            return h[:, num_prefix_tokens:].mean(dim=1)
        return h.mean(dim=(2, 3) if layout == "NCHW" else (1, 2))
    raise ValueError(f"unknown representation {representation!r}; expected one of {REPRESENTATIONS}")


def pool_tokens(tokens: torch.Tensor, representation: str, num_prefix_tokens: int) -> torch.Tensor:
    """A ViT block output (N, T, D) → representation (N, F) (:func:`pool_layer` for tokens)."""
    return pool_layer(tokens, representation, "NLC", num_prefix_tokens)


# --------------------------------------------------------------------------- the model

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


def _upgrade_state_dict(module: nn.Module, state_dict: dict, prefix: str, *args: Any) -> None:
    """Load hook: checkpoints written before the wrapper held any timm model kept it at ``vit.``."""
    old, new = prefix + "vit.", prefix + "net."
    if any(k.startswith(new) for k in state_dict):
        return
    for key in [k for k in state_dict if k.startswith(old)]:
        state_dict[new + key[len(old):]] = state_dict.pop(key)


class StirModel(nn.Module):
    """A timm model with resizing, normalisation and numbered layers (see the module docstring).

    Args:
        net: the timm model (its own head is used for classification).
        task: ``"classification"`` (``"reconstruction"`` needs a :class:`StirViT`).
        mean, std: per-channel input normalisation applied after resizing.
        input_size: (H, W) images are resized to; default: the model's fixed input size (a patch
            embedding's ``img_size``), or none for a convolutional model (images at their own size).
    """

    def __init__(self, net: nn.Module, task: str, mean: Sequence[float], std: Sequence[float],
                 input_size: Sequence[int] | None = None):
        super().__init__()
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")
        if task == "reconstruction" and not isinstance(self, StirViT):
            raise ValueError(f"task 'reconstruction' needs a VisionTransformer; {type(net).__name__} is not one")
        self.net = net
        self.task = task
        self.plan = plan_layers(net)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        fixed = getattr(getattr(net, "patch_embed", None), "img_size", None)
        size = input_size if input_size is not None else fixed
        self.img_size: tuple[int, int] | None = None if size is None else tuple(int(s) for s in (
            (size, size) if isinstance(size, int) else size))
        self.register_load_state_dict_pre_hook(_upgrade_state_dict)

    # ------------------------------------------------------------------ what the layers are

    @property
    def depth(self) -> int:
        """Number of layers L."""
        return self.plan.depth

    @property
    def layer_kind(self) -> str:
        """``block`` (transformer blocks) or ``stage``."""
        return self.plan.kind

    @property
    def num_prefix_tokens(self) -> int:
        """Class (and distillation, register) tokens before the patch tokens; 0 without tokens."""
        return int(getattr(self.net, "num_prefix_tokens", 0)) if self.plan.layout == "NLC" else 0

    @property
    def layers(self) -> list[nn.Module]:
        """The layer modules 1..L (``model.layers[i - 1]`` is layer i) of a sequential model."""
        if not self.plan.sequential:
            raise AttributeError(f"{type(self.net).__name__}'s layers cannot be run one after another")
        return [self.net.get_submodule(m) for m in self.plan.modules]

    def describe(self) -> dict[str, Any]:
        """What the layers are, as plain data (for files): model class, kind, module paths, layout."""
        return {"model": type(self.net).__name__, "layer_kind": self.layer_kind,
                "layer_modules": list(self.plan.modules), "layout": self.plan.layout,
                "sequential": self.plan.sequential}

    # ------------------------------------------------------------------ running them

    def resize(self, x: torch.Tensor) -> torch.Tensor:
        """Images (N, 3, H, W) in [0, 1] → (N, 3, *img_size), bilinear (identity at the right size or
        without a fixed size)."""
        if self.img_size is None or tuple(x.shape[-2:]) == self.img_size:
            return x
        return F.interpolate(x, size=self.img_size, mode="bilinear", align_corners=False, antialias=True)

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] → the timm model's input: resized, then normalised per channel."""
        return (self.resize(x) - self.mean) / self.std

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Images (N, 3, H, W) in [0, 1] → what enters layer 1 (a sequential model's stem output)."""
        if not self.plan.sequential:
            raise AttributeError(f"{type(self.net).__name__} has no stem to run apart from its layers")
        return _SEQUENTIAL[self.plan.family][0](self.net, self.normalise(x))

    def _check_depth(self, depth: int) -> None:
        if not 0 < depth <= self.depth:
            raise ValueError(f"{self.layer_kind} {depth} is out of range: the model has "
                             f"{self.layer_kind}s 1..{self.depth}")

    def layer_outputs(self, x: torch.Tensor, depth: int | None = None) -> list[torch.Tensor]:
        """Outputs of layers 1..depth (shaped as ``plan.layout``); layers past ``depth`` are not run."""
        depth = self.depth if depth is None else depth
        self._check_depth(depth)
        if not self.plan.sequential:
            return self._intermediates(self.normalise(x), list(range(depth)))
        h = self.embed(x)
        outputs = []
        for layer in self.layers[:depth]:
            h = layer(h)
            outputs.append(h)
        return outputs

    block_outputs = layer_outputs  # the name from when every model was a ViT

    def exit_outputs(self, x: torch.Tensor, exit_counts: Mapping[int, int]) -> list[torch.Tensor]:
        """One pass in which samples leave after their own layer.

        ``x`` (N, 3, H, W) is stacked by exit layer, shallowest first: the first
        ``exit_counts[d1]`` samples leave after layer d1, the next ``exit_counts[d2]`` after d2 > d1,
        and so on (N = the sum). Returns each group's output at its exit layer, in that order. A
        sequential model runs every layer once on the samples still in the pass (slices, never
        masks: no gather/scatter in the backward pass, no host sync); another model runs timm's
        ``forward_intermediates`` once per group, stopping at the group's layer.
        """
        exits = sorted(exit_counts)
        for d in exits:
            self._check_depth(d)
        if not self.plan.sequential:
            outputs, lo = [], 0
            for d in exits:
                outputs += self._intermediates(self.normalise(x[lo:lo + exit_counts[d]]), [d - 1])
                lo += exit_counts[d]
            return outputs
        h, outputs = self.embed(x), []
        for depth, layer in enumerate(self.layers[:exits[-1]], start=1):
            h = layer(h)
            k = exit_counts.get(depth, 0)
            if k:
                outputs.append(h[:k])
                h = h[k:]  # these samples are done: stop their forward pass
        return outputs

    def _intermediates(self, x: torch.Tensor, layers: list[int]) -> list[torch.Tensor]:
        """timm's ``forward_intermediates`` at the 0-based ``layers``, stopping after the last; token
        outputs come back whole (prefix tokens first), as a sequential ViT's blocks give them."""
        indices = [self.plan.feature_offset + i for i in layers]
        if self.plan.layout == "NLC":
            out = self.net.forward_intermediates(x, indices=indices, return_prefix_tokens=True, output_fmt="NLC",
                                                 stop_early=True, intermediates_only=True)
            # (patch tokens, prefix tokens) pairs, or the patch tokens alone for a model without prefix tokens
            return [torch.cat([item[1], item[0]], dim=1) if isinstance(item, tuple) else item for item in out]
        return list(self.net.forward_intermediates(x, indices=indices, stop_early=True, intermediates_only=True))

    def pool(self, h: torch.Tensor, representation: str = "tokens") -> torch.Tensor:
        """A layer output → representation (N, F) (:func:`pool_layer` in this model's layout)."""
        return pool_layer(h, representation, self.plan.layout, self.num_prefix_tokens)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N, num_classes) (with ``num_classes`` 0, the pooled features)."""
        return self.net(self.normalise(x))


class StirViT(StirModel):
    """A timm VisionTransformer: layers are its blocks, and a reconstruction head is available.

    Reconstruction: the final tokens without prefix tokens as a patch grid, a 1×1 convolution to
    patch²·3 channels and a PixelShuffle (DESIGN §3); ``forward`` then returns images (N, 3, *img_size).
    """

    def __init__(self, net: nn.Module, task: str, mean: Sequence[float], std: Sequence[float],
                 input_size: Sequence[int] | None = None):
        super().__init__(net, task, mean, std, input_size)
        self.patch_size: int = int(net.patch_embed.patch_size[0])
        self.decoder = (ReconstructionHead(net.embed_dim, self.patch_size, tuple(net.patch_embed.grid_size))
                        if task == "reconstruction" else None)

    @property
    def vit(self) -> nn.Module:
        """The timm VisionTransformer (``model.net``)."""
        return self.net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Classification: logits (N, num_classes). Reconstruction: images (N, 3, *img_size)."""
        if self.decoder is None:
            return self.net(self.normalise(x))
        return self.decoder(self.net.forward_features(self.normalise(x))[:, self.num_prefix_tokens:])


def layer_representation(model: StirModel, layer: int, representation: str = "tokens") -> Callable[[torch.Tensor], torch.Tensor]:
    """``fn(images (N, 3, H, W) in [0, 1]) → (N, F)``: layer ``layer``'s output (1-based), pooled.

    ``fn.model`` is ``model``, so that :func:`~stirflow.inversion.invert_fn` can run it in eval mode.
    """
    model._check_depth(layer)
    if representation not in REPRESENTATIONS:
        raise ValueError(f"unknown representation {representation!r}; expected one of {REPRESENTATIONS}")

    def fn(images: torch.Tensor) -> torch.Tensor:
        return model.pool(model.layer_outputs(images, layer)[-1], representation)

    fn.model = model  # lets the inversion put the model in eval mode for its duration
    return fn


block_representation = layer_representation  # the name from when every model was a ViT


# --------------------------------------------------------------------------- construction

def _kwargs(spec: Mapping[str, Any]) -> dict[str, Any]:
    """The model's constructor keyword arguments: ``kwargs``, or ``vit`` (their older name)."""
    return dict(spec.get("kwargs", spec.get("vit")) or {})


def _classifier(net: nn.Module) -> str:
    """The module path of the timm model's classifier (``head``, ``fc``, ``head.fc``)."""
    cfg = getattr(net, "pretrained_cfg", None) or {}
    name = cfg.get("classifier", "head")
    return name[0] if isinstance(name, (list, tuple)) else name


def _build_net(spec: Mapping[str, Any], num_classes: int, pretrained: bool = False,
               weights_file: str | None = None) -> nn.Module:
    import timm

    kwargs = _kwargs(spec)
    kwargs["num_classes"] = num_classes
    name = spec.get("timm_name")
    if not name:
        from timm.models.vision_transformer import VisionTransformer

        return VisionTransformer(**kwargs)
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
            net = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay, **kwargs)
        except (RuntimeError, KeyError, ValueError, OSError) as err:
            if weights_file:
                raise CheckpointError(f"{weights_file}: cannot load these weights into {name} "
                                      f"({type(err).__name__}: {err})") from err
            raise CheckpointError(f"{source}: cannot get them ({type(err).__name__}: {err}); without network, "
                                  f"fetch them first on a machine with network (docs/reproducing.md) "
                                  f"or set pretrain.weights.file") from err
    # timm loads non-strictly when the classifier is replaced and only logs what was missing:
    # any missing encoder weight means the file does not fit the model.
    missing = [k for k in missing if not k.startswith(_classifier(net) + ".")]
    if missing:
        raise CheckpointError(f"{source}: the weights do not fit {name}: missing {missing[:5]}"
                              f"{' ...' if len(missing) > 5 else ''} ({len(missing)} tensors)")
    return net


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


def _wrapper(net: nn.Module) -> type[StirModel]:
    return StirViT if _sequential_family(net) == "VisionTransformer" else StirModel


def create_model(spec: Mapping[str, Any], *, pretrained: bool = False,
                 weights_file: str | os.PathLike | None = None) -> StirModel:
    """Build a :class:`StirModel` (a :class:`StirViT` for a VisionTransformer) from its constructor arguments.

    ``spec`` keys: ``task``, ``num_classes`` (classification), ``mean``, ``std``, ``input_size``
    (optional, see :class:`StirModel`), and either ``timm_name`` (a timm model name, with
    ``kwargs`` — or ``vit``, the older name — holding extra keyword arguments such as
    ``img_size``) or ``kwargs`` alone (keyword arguments of timm's ``VisionTransformer``).
    ``pretrained`` loads timm's weights for ``timm_name``; ``weights_file`` loads a local file
    through timm's pretrained-config override (position embeddings are resampled when the
    image size differs). Checkpoints store ``spec`` and the weights, never these two flags.
    """
    task = spec.get("task", "classification")
    num_classes = int(spec.get("num_classes", 0)) if task == "classification" else 0
    net = _build_net(spec, num_classes, pretrained=pretrained, weights_file=str(weights_file) if weights_file else None)
    return _wrapper(net)(net, task, tuple(spec.get("mean", (0.5, 0.5, 0.5))), tuple(spec.get("std", (0.5, 0.5, 0.5))),
                         spec.get("input_size"))


@functools.lru_cache(maxsize=32)
def _describe_cached(name: str | None, kwargs_items: str) -> dict[str, Any]:
    import json

    kwargs = json.loads(kwargs_items)
    with torch.device("meta"):  # allocates nothing: even ViT-H costs no memory here
        net = _build_net({"timm_name": name, "kwargs": kwargs}, 0)
    plan = plan_layers(net)
    return {"model": name or "VisionTransformer", "family": plan.family, "layer_kind": plan.kind,
            "layer_modules": list(plan.modules), "depth": plan.depth, "layout": plan.layout,
            "sequential": plan.sequential, "class_token": int(getattr(net, "num_prefix_tokens", 0)) > 0
            and plan.layout == "NLC", "vision_transformer": _wrapper(net) is StirViT,
            "fixed_input_size": getattr(getattr(net, "patch_embed", None), "img_size", None) is not None}


def describe_timm_model(name: str | None, kwargs: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """What the layers of timm model ``name`` (``None``: timm's VisionTransformer) built with
    ``kwargs`` are, without allocating it: ``depth``, ``layer_kind``, ``layer_modules``,
    ``layout``, ``sequential``, ``class_token``, ``vision_transformer`` (reconstruction possible),
    ``fixed_input_size`` (the model takes ``img_size``; others take any size)."""
    import json

    return dict(_describe_cached(name, json.dumps(dict(kwargs or {}), sort_keys=True)))


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> StirModel:
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


def _new_head(model: StirModel, spec: Mapping[str, Any]) -> None:
    """Replace the task head with a fresh one drawn from the current random state."""
    if isinstance(model, StirViT) and model.decoder is not None:
        net = model.net
        model.decoder = ReconstructionHead(net.embed_dim, model.patch_size, tuple(net.patch_embed.grid_size))
    elif spec.get("num_classes"):
        model.net.reset_classifier(int(spec["num_classes"]))


def initial_model(spec: Mapping[str, Any], init: str, *, seed: int = 0,
                  init_checkpoint: str | os.PathLike | None = None,
                  weights: Mapping[str, Any] | None = None) -> StirModel:
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
        source = dict(read_checkpoint(init_checkpoint)["state_dict"])
        _upgrade_state_dict(model, source, "")
        head = (f"net.{_classifier(model.net)}.", "decoder.")
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
    _new_head(model, spec)
    return model


def set_fused_attention(model: nn.Module, enabled: bool) -> int:
    """Switch timm's attention modules between the fused kernel (``F.scaled_dot_product_attention``:
    flash or memory-efficient attention on a GPU) and the eager softmax(QKᵀ)V; the number of modules
    switched. Both compute the same function up to rounding."""
    count = 0
    for module in model.modules():
        if isinstance(getattr(module, "fused_attn", None), bool):
            module.fused_attn = bool(enabled)
            count += 1
    return count


def prepare_for_inversion(model: StirModel, compile: bool | str | Callable = False,
                          fused_attention: bool | None = None) -> StirModel:
    """Eval mode, no parameter gradients (only the input is optimised), and the inversion kernels.

    ``fused_attention``: True / False switches timm's attention to the fused kernel or the eager
    one (:func:`set_fused_attention`); None leaves what timm chose. ``compile``: True (inductor), a
    ``torch.compile`` backend (name or callable), or False. A sequential model's whole truncated
    stack (:meth:`StirModel.exit_outputs`) is compiled with static shapes: one graph per pattern of
    exits, which a job's chunks repeat at every step, so each is traced once. A model run through
    ``forward_intermediates`` is not compiled.
    """
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    if fused_attention is not None:
        set_fused_attention(model, fused_attention)
    if compile and model.plan.sequential:
        import torch._dynamo

        # A job's chunks have up to one exit pattern each (a chunk of a block-major stack): allow as
        # many graphs as a large job has chunks instead of falling back to eager after eight.
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 256)
        backend = "inductor" if compile is True else compile
        model.exit_outputs = torch.compile(model.exit_outputs, backend=backend, dynamic=False)
    return model
