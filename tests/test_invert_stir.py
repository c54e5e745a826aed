"""Inversion and STIR on tiny ViTs: the method of DESIGN §3, its options, and the reuse/truncation machinery.

Models are timm VisionTransformers at 16 px (patch 4, width 32, depth 3–4) so the whole file runs
in well under a minute on two CPU cores.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from stirflow.cka import linear_cka
from stirflow.data import make_shapes, to_tensor
from stirflow.inversion import (
    START_TYPES,
    NonFiniteLossError,
    descend,
    invert,
    invert_blocks,
    invert_fn,
    inversion_start,
    relative_loss,
)
from stirflow.models import REPRESENTATIONS, block_representation, create_model, prepare_for_inversion
from stirflow.invariance import block_features, pair_scores, stir


def tiny_vit(seed: int, depth: int = 3, prepare: bool = True, **vit_kwargs) -> torch.nn.Module:
    """A seeded 16 px StirViT with ``depth`` blocks (eval mode, frozen parameters when ``prepare``)."""
    torch.manual_seed(seed)
    vit = dict(img_size=16, patch_size=4, embed_dim=32, depth=depth, num_heads=2, **vit_kwargs)
    model = create_model({"num_classes": 10, "vit": vit})
    return prepare_for_inversion(model) if prepare else model.eval()


@pytest.fixture(scope="module", autouse=True)
def one_thread(one_torch_thread):
    """Every test here runs torch on one thread (see conftest.one_torch_thread)."""


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    """12 procedural shape images (12, 3, 16, 16) in [0, 1]."""
    return to_tensor(make_shapes(12, 16, seed=0)[0])


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return tiny_vit(0)


# --------------------------------------------------------------------------- the method itself

def test_invert_lowers_relative_loss_far_below_start(model, images):
    result = invert_fn(block_representation(model, 2), images, steps=50)
    assert result.images.shape == images.shape
    assert result.start_losses.min() > 1.0  # noise is far from the target representation
    assert float(result.losses.mean()) < 0.1 * float(result.start_losses.mean())
    assert torch.all(result.losses < result.start_losses)


def test_relative_loss_is_per_sample_relative_norm():
    rep, target = torch.randn(5, 7), torch.randn(5, 7)
    expected = (rep - target).norm(dim=1) / target.norm(dim=1)
    torch.testing.assert_close(relative_loss(rep, target), expected)
    l1 = (rep - target).abs().sum(1) / target.abs().sum(1)
    torch.testing.assert_close(relative_loss(rep, target, p=1), l1)


def test_descend_takes_per_sample_normalised_clamped_steps():
    """One step moves each sample by exactly η·g/‖g‖, whatever its gradient's scale, then clamps to
    [0, 1]: the step is large enough that the unclamped iterate leaves [0, 1] on both sides."""
    x0 = torch.full((3, 1, 4, 4), 0.5)
    weights = torch.tensor([1.0, 10.0, 1000.0])  # wildly different gradient scales per sample
    g = torch.arange(16.0) - 7.5  # pushes some pixels down, others up

    def loss_fn(z: torch.Tensor) -> torch.Tensor:
        return weights * (z.flatten(1) * g).sum(1)

    result = descend(loss_fn, x0, steps=1, step_size=2.0)
    unclamped = 0.5 - 2.0 * g / g.norm()
    assert unclamped.min() < -0.25 and unclamped.max() > 1.25  # the clamp acts at both ends
    for k in range(3):
        torch.testing.assert_close(result.images[k].flatten(), unclamped.clamp(0, 1))


def test_descent_stays_in_the_box_and_reaches_its_corner():
    """A linear loss has no minimum: only the clamp keeps the iterates in [0, 1], where the best one
    is the box's corner (0 where the gradient is positive, 1 where it is negative)."""
    k = torch.arange(48.0)
    g = ((-1) ** k * (1 + k / 48)).view(1, 3, 4, 4)  # both signs, each pixel reaches its bound in < 25 steps
    x0 = inversion_start(torch.zeros(2, 3, 4, 4), "noise", 0)  # raw noise, partly outside [0, 1]

    def loss_fn(z: torch.Tensor) -> torch.Tensor:
        return (z * g).flatten(1).sum(1)

    result = descend(loss_fn, x0, steps=60, step_size=0.5)
    corner = (g < 0).float().expand_as(x0)
    torch.testing.assert_close(result.images, corner)
    torch.testing.assert_close(result.losses, loss_fn(corner))


def test_best_iterate_is_kept_per_sample(model, images):
    fn = block_representation(model, 1)
    with torch.no_grad():
        target = fn(images)
    seen: list[torch.Tensor] = []

    def loss_fn(z: torch.Tensor) -> torch.Tensor:
        loss = relative_loss(fn(z), target)
        seen.append(loss.detach().clone())
        return loss

    # a large step makes the loss bounce, so the last iterate is not always the best one
    result = descend(loss_fn, inversion_start(images, "noise", 0), steps=15, step_size=4.0)
    history = torch.stack(seen[1:])  # iterates 1..steps (the raw start may lie outside [0, 1])
    torch.testing.assert_close(result.losses, history.min(0).values)
    assert torch.all(result.losses <= history[-1])
    assert torch.any(result.losses < history[-1])
    assert 0.0 <= float(result.images.min()) and float(result.images.max()) <= 1.0
    with torch.no_grad():  # the kept images really have the kept losses
        torch.testing.assert_close(relative_loss(fn(result.images), target), result.losses, atol=1e-5, rtol=1e-5)


def test_stir_of_a_function_with_itself_is_near_one(model, images):
    """Near 1 because X' reproduces fn(X) from far away: an inversion that returned X itself would
    score 1 but fail the distance, one that left the start noise would fail the score."""
    fn = block_representation(model, 2)
    assert stir(fn, fn, images, steps=40) > 0.98
    inverted = invert(fn, images, steps=40)  # the X' that stir scored (same seed)
    start = inversion_start(images, "noise", 0).clamp(0, 1)
    distance = lambda a, b: float((a - b).abs().mean())  # noqa: E731
    assert distance(inverted, images) > 0.25 * distance(start, images)  # measured: 0.20 against 0.44
    with torch.no_grad():
        assert linear_cka(fn(images), fn(start)) < 0.9  # measured: 0.68


def test_constructed_invariance_gives_directional_stir(images):
    """fn_ref ignores the right half of the image, fn_eval sees all of it.

    Inverting fn_ref leaves the right half as noise, which fn_eval notices: STIR(eval | ref) is
    clearly below 1. Inverting fn_eval recovers the whole image, so fn_ref's view matches:
    STIR(ref | eval) is near 1.
    """
    torch.manual_seed(0)
    patchify = torch.nn.Conv2d(3, 8, kernel_size=4, stride=4)
    mask = torch.ones(1, 1, 16, 16)
    mask[..., 8:] = 0

    def fn_eval(z: torch.Tensor) -> torch.Tensor:
        return torch.tanh(patchify(z)).flatten(1)

    def fn_ref(z: torch.Tensor) -> torch.Tensor:
        return fn_eval(z * mask)

    eval_given_ref = stir(fn_ref, fn_eval, images, steps=30)
    ref_given_eval = stir(fn_eval, fn_ref, images, steps=30)
    assert eval_given_ref < 0.9
    assert ref_given_eval > 0.98
    assert ref_given_eval - eval_given_ref > 0.1


def test_stir_works_inside_no_grad(model, images):
    fn = block_representation(model, 1)
    expected = stir(fn, fn, images, steps=5)
    with torch.no_grad():
        assert stir(fn, fn, images, steps=5) == expected


# --------------------------------------------------------------------------- reproducibility

def test_same_seed_same_result_other_seed_different(model, images):
    fn = block_representation(model, 2)
    a = invert_fn(fn, images, steps=10, seed=3)
    b = invert_fn(fn, images, steps=10, seed=3)
    c = invert_fn(fn, images, steps=10, seed=4)
    assert torch.equal(a.images, b.images) and torch.equal(a.losses, b.losses)
    assert not torch.allclose(a.images, c.images)
    assert stir(fn, fn, images, steps=5, seed=3) == stir(fn, fn, images, steps=5, seed=3)


def test_chunked_inversion_equals_unchunked(model, images):
    fn = block_representation(model, 3)
    whole = invert_fn(fn, images, steps=10)
    chunked = invert_fn(fn, images, steps=10, batch_size=5)  # 5 + 5 + 2
    torch.testing.assert_close(chunked.images, whole.images, atol=1e-5, rtol=0)
    torch.testing.assert_close(chunked.losses, whole.losses, atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------- options

@pytest.mark.parametrize("start", START_TYPES)
def test_inversion_start_types(start, images):
    x0 = inversion_start(images, start, seed=1)
    assert x0.shape == images.shape and x0.dtype == images.dtype
    if start == "noise":
        assert not torch.allclose(x0[0], x0[1]) and float(x0.min()) < 0 < 1 < float(x0.max())
    elif start == "shared_noise":
        assert torch.equal(x0, x0[:1].expand_as(x0))
    elif start == "uniform":
        assert 0 <= float(x0.min()) and float(x0.max()) <= 1 and not torch.allclose(x0[0], x0[1])
    else:
        assert torch.all(x0 == (0.0 if start == "black" else 1.0))
    assert torch.equal(x0, inversion_start(images, start, seed=1))


def test_unknown_start_is_an_error(images):
    with pytest.raises(ValueError, match="unknown inversion start"):
        inversion_start(images, "gray")


@pytest.mark.parametrize("start", START_TYPES)
def test_every_start_type_inverts(start, model, images):
    result = invert_fn(block_representation(model, 1), images[:6], steps=8, start=start)
    assert torch.isfinite(result.losses).all()
    assert torch.all(result.losses < result.start_losses)
    assert 0.0 <= float(result.images.min()) and float(result.images.max()) <= 1.0


@pytest.mark.parametrize("representation", REPRESENTATIONS)
@pytest.mark.parametrize("norm_p", [1.0, 2.0, math.inf])
def test_every_representation_and_norm_inverts(representation, norm_p, model, images):
    x = images[:6]
    fn = block_representation(model, 2, representation)
    result = invert_fn(fn, x, steps=8, norm_p=norm_p)
    assert torch.all(result.losses < result.start_losses)
    batched = invert_blocks(model, x, [2], steps=8, representation=representation, norm_p=norm_p)[2]
    torch.testing.assert_close(batched.images, result.images, atol=1e-5, rtol=0)
    value = stir(fn, fn, x, steps=8, norm_p=norm_p)
    assert 0.0 <= value <= 1.0 + 1e-9


# --------------------------------------------------------------------------- batched blocks and truncation

def test_invert_blocks_equals_separate_inversions(model, images):
    batched = invert_blocks(model, images, [1, 2, 3], steps=15, seed=2)
    chunked = invert_blocks(model, images, [3, 1, 2], steps=15, seed=2, chunk_size=7)  # chunks straddle blocks
    for block in (1, 2, 3):
        single = invert_fn(block_representation(model, block), images, steps=15, seed=2)
        for result in (batched[block], chunked[block]):
            torch.testing.assert_close(result.images, single.images, atol=1e-5, rtol=0)
            torch.testing.assert_close(result.losses, single.losses, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(result.start_losses, single.start_losses, atol=1e-5, rtol=1e-5)


def _count_block_samples(model) -> tuple[list[int], list]:
    """Forward hooks adding up how many samples pass through each block (1-based list index 0..L-1)."""
    counts = [0] * model.depth
    handles = [block.register_forward_hook(lambda mod, inp, out, k=k: counts.__setitem__(k, counts[k] + len(inp[0])))
               for k, block in enumerate(model.vit.blocks)]
    return counts, handles


def test_inversion_runs_no_block_beyond_its_own():
    model, n, steps = tiny_vit(0, depth=4), 4, 3
    x = to_tensor(make_shapes(n, 16, seed=1)[0])
    counts, handles = _count_block_samples(model)
    try:
        invert_blocks(model, x, [1, 3], steps=steps)
        forwards = steps + 1  # the descent evaluates iterates 0..steps
        # block 1 sees both stacked copies; blocks 2–3 only the block-3 copy; block 4 nothing.
        # The extra n is the single no-grad pass that computes the targets.
        assert counts == [2 * n * forwards + n, n * forwards + n, n * forwards + n, 0]
        counts[:] = [0] * 4
        invert_fn(block_representation(model, 2), x, steps=steps)
        assert counts == [n * (forwards + 1), n * (forwards + 1), 0, 0]
    finally:
        for handle in handles:
            handle.remove()


def test_invert_blocks_rejects_blocks_out_of_range(model, images):
    for blocks in ([0, 1], [4], []):
        with pytest.raises(ValueError, match="out of range"):
            invert_blocks(model, images, blocks, steps=1)


# --------------------------------------------------------------------------- what the inversion may touch

def test_gradients_only_with_respect_to_the_input(images):
    model = tiny_vit(0, prepare=False)  # parameters still require grad: the inversion must not fill .grad
    assert all(p.requires_grad for p in model.parameters())
    invert_fn(block_representation(model, 2), images[:4], steps=3)
    invert_blocks(model, images[:4], [1, 2], steps=3)
    assert all(p.grad is None for p in model.parameters())


def test_eval_mode_is_enforced_and_restored(images):
    x = images[:6]
    dropout = dict(drop_rate=0.5, proj_drop_rate=0.5, attn_drop_rate=0.5)
    reference = invert_fn(block_representation(tiny_vit(0, **dropout), 2), x, steps=5)
    model = tiny_vit(0, **dropout).train()
    modes = []
    handle = model.vit.blocks[0].register_forward_hook(lambda mod, inp, out: modes.append(mod.training))
    try:
        single = invert_fn(block_representation(model, 2), x, steps=5)
        batched = invert_blocks(model, x, [2], steps=5)[2]
    finally:
        handle.remove()
    assert modes and not any(modes)
    assert model.training  # the caller's mode comes back
    torch.testing.assert_close(single.images, reference.images, atol=0, rtol=0)
    torch.testing.assert_close(batched.images, reference.images, atol=1e-5, rtol=0)
    feats = block_features(model, x, [1, 2])  # scoring is in eval mode too: dropout would make these random
    torch.testing.assert_close(feats[2], block_features(model, x, [2])[2])


def test_non_finite_loss_raises(images):
    calls = {"n": 0}

    def fn(z: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1
        rep = z.flatten(1)
        return rep * float("nan") if calls["n"] > 3 else rep  # call 1 makes the target, then steps 0, 1, 2

    with pytest.raises(NonFiniteLossError, match="step 2"):
        invert_fn(fn, images[:3], steps=10)
    with pytest.raises(NonFiniteLossError, match="step 0"):
        descend(lambda z: z.flatten(1).sum(1) * float("inf"), images[:3], steps=2)


# --------------------------------------------------------------------------- scores

@pytest.fixture(scope="module")
def two_models_scores(images):
    p, f = tiny_vit(0), tiny_vit(1)
    blocks = [1, 2, 3]
    inv_p = {b: r.images for b, r in invert_blocks(p, images, blocks, steps=15).items()}
    inv_f = {b: r.images for b, r in invert_blocks(f, images, blocks, steps=15).items()}
    return p, f, inv_p, inv_f, pair_scores(p, f, images, inv_p, inv_f)


def test_pair_scores_relations(two_models_scores, images):
    p, f, inv_p, inv_f, s = two_models_scores
    for key in ("flow", "flow_reverse", "cka", "within_ref", "within_eval"):
        assert s[key].shape == (3, 3)
        assert np.all(s[key] >= 0) and np.all(s[key] <= 1 + 1e-9)
    np.testing.assert_allclose(s["forgetting"], 1 - np.diag(s["flow"]))
    np.testing.assert_allclose(s["learning"], 1 - np.diag(s["flow_reverse"]))
    # each entry is exactly the one-pair STIR from the same inversion
    fj = block_representation(f, 2)
    with torch.no_grad():
        from stirflow.cka import linear_cka
        assert s["flow"][0, 1] == pytest.approx(linear_cka(fj(images), fj(inv_p[1])), abs=1e-10)
    # STIR(f_2 | p_1) computed from scratch by stir() agrees
    assert s["flow"][0, 1] == pytest.approx(stir(block_representation(p, 1), fj, images, steps=15), abs=1e-6)


def test_pair_scores_of_a_model_with_itself_is_symmetric(two_models_scores, images):
    p, _, inv_p, _, _ = two_models_scores
    s = pair_scores(p, p, images, inv_p, inv_p)
    np.testing.assert_allclose(np.diag(s["flow"]), np.diag(s["flow_reverse"]))
    np.testing.assert_allclose(s["flow"], s["within_ref"])
    np.testing.assert_allclose(np.diag(s["cka"]), 1.0, atol=1e-9)
    assert np.all(np.diag(s["flow"]) > 0.9)


def test_pair_scores_rejects_mismatched_blocks(two_models_scores, images):
    p, f, inv_p, inv_f, _ = two_models_scores
    with pytest.raises(ValueError, match="different blocks"):
        pair_scores(p, f, images, inv_p, {1: inv_f[1]})


# --------------------------------------------------------------------------- devices

@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_gives_the_same_stir_as_cpu(images):
    torch.backends.cuda.matmul.allow_tf32 = False  # compare fp32 with fp32
    torch.backends.cudnn.allow_tf32 = False
    p, f = tiny_vit(0), tiny_vit(1)
    blocks = [1, 2, 3]
    values = {}
    for device in ("cpu", "cuda"):
        pd, fd, x = p.to(device), f.to(device), images.to(device)
        inv_p = {b: r.images for b, r in invert_blocks(pd, x, blocks, steps=20).items()}
        inv_f = {b: r.images for b, r in invert_blocks(fd, x, blocks, steps=20).items()}
        values[device] = pair_scores(pd, fd, x, inv_p, inv_f)
        single = stir(block_representation(pd, 2), block_representation(fd, 2), x, steps=20)
        values[device]["single"] = np.array(single)
    for key in ("flow", "flow_reverse", "cka", "single"):
        np.testing.assert_allclose(values["cuda"][key], values["cpu"][key], atol=1e-3, rtol=0, err_msg=key)
