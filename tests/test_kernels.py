"""Inversion kernels as switches, each against the reference (eager attention, eager step loop, fp32).

On the CPU: fused attention (timm's SDPA path) against timm's eager attention; the step loop on
fixed buffers (``cuda_graphs``, captured only on a GPU) against :func:`descend`, bit for bit;
``torch.compile`` of the truncated stack with static shapes (one graph per chunk pattern, then
inductor's numbers); chunk sizes from a memory budget; bf16 inversions of briefly trained models
against fp32 STIR. The CUDA-only checks (capture, the memory probe) skip without a GPU.
"""

from __future__ import annotations

import copy
import time

import numpy as np
import pytest
import torch

from conftest import jobs_by_rule, snakemake, write_config
from stirflow.data import ImageSet, make_digits, make_shapes, to_tensor
from stirflow.inversion import (
    NonFiniteLossError,
    chunk_size_for_memory,
    descend,
    descend_graphed,
    invert_blocks,
    inversion_start,
    load_inversion,
    relative_loss,
)
from stirflow.invariance import pair_scores
from stirflow.models import block_representation, create_model, prepare_for_inversion, set_fused_attention

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def tiny_vit(seed: int = 0, depth: int = 3, **prepare) -> torch.nn.Module:
    """A seeded 16 px StirViT (patch 4, width 32), prepared for inversion with ``prepare``'s switches."""
    torch.manual_seed(seed)
    vit = dict(img_size=16, patch_size=4, embed_dim=32, depth=depth, num_heads=2)
    return prepare_for_inversion(create_model({"num_classes": 10, "vit": vit}), **prepare)


@pytest.fixture(scope="module", autouse=True)
def one_thread(one_torch_thread):
    """Every test here runs torch on one thread (see conftest.one_torch_thread)."""


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    """8 procedural shape images (8, 3, 16, 16) in [0, 1]."""
    return to_tensor(make_shapes(8, 16, seed=0)[0])


def assert_same_inversions(a: dict, b: dict, atol: float = 0.0) -> None:
    assert sorted(a) == sorted(b)
    for block in a:
        for key in ("images", "losses", "start_losses", "curve"):
            torch.testing.assert_close(getattr(b[block], key), getattr(a[block], key), atol=atol, rtol=0,
                                       msg=lambda m, k=key, blk=block: f"block {blk} {k}: {m}")
        assert a[block].curve_steps == b[block].curve_steps


def torch_calls(model: torch.nn.Module, x: torch.Tensor) -> set[str]:
    """The names of the torch functions and tensor methods one forward pass calls."""
    names: set[str] = set()

    class Record(torch.overrides.TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            names.add(getattr(func, "__name__", str(func)))
            return func(*args, **(kwargs or {}))

    with torch.no_grad(), Record():
        model.layer_outputs(x, model.depth)
    return names


# --------------------------------------------------------------------------- fused attention

def test_fused_attention_switch_changes_the_kernel_not_the_inversion(images):
    eager, fused = tiny_vit(fused_attention=False), tiny_vit(fused_attention=True)
    assert set_fused_attention(copy.deepcopy(eager), False) == 3  # one attention module per block
    calls_eager, calls_fused = torch_calls(eager, images[:2]), torch_calls(fused, images[:2])
    assert "scaled_dot_product_attention" in calls_fused and "softmax" not in calls_fused
    assert "scaled_dot_product_attention" not in calls_eager and "softmax" in calls_eager
    options = dict(steps=15, log_every=5, chunk_size=10)
    reference = invert_blocks(eager, images, [1, 2, 3], **options)
    assert_same_inversions(reference, invert_blocks(fused, images, [1, 2, 3], **options), atol=1e-5)


def test_fused_attention_none_leaves_timms_choice():
    model = tiny_vit(fused_attention=False)
    prepare_for_inversion(model)  # no switch given: what was set stays
    assert all(not block.attn.fused_attn for block in model.layers)


# --------------------------------------------------------------------------- the step loop on fixed buffers

@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_graphed_step_loop_equals_descend_bit_for_bit(images, schedule):
    """Without a GPU the loop runs uncaptured: the same arithmetic as descend, in the same order."""
    model = tiny_vit()
    options = dict(steps=12, log_every=4, chunk_size=10, step_schedule=schedule)
    calls = {"eager": 0, "graphed": 0}

    def counter(name):
        def progress(k):
            calls[name] += k
        return progress

    reference = invert_blocks(model, images, [1, 3], progress=counter("eager"), **options)
    graphed = invert_blocks(model, images, [1, 3], cuda_graphs=True, progress=counter("graphed"), **options)
    assert_same_inversions(reference, graphed)
    assert calls["eager"] == calls["graphed"] == 2 * 12  # 16 rows in chunks of 10: two chunks


@pytest.mark.parametrize("steps", [0, 1, 2])
def test_graphed_loop_handles_the_shortest_descents(images, steps):
    fn = block_representation(tiny_vit(), 2)
    with torch.no_grad():
        target = fn(images)
    x0 = inversion_start(images, "noise", 0)
    expected = descend(lambda z: relative_loss(fn(z), target), x0, steps=steps, log_every=1)
    got = descend_graphed(lambda z: relative_loss(fn(z), target), x0, steps=steps, log_every=1)
    for key in ("images", "losses", "start_losses", "curve"):
        assert torch.equal(getattr(got, key), getattr(expected, key)), key


def test_graphed_loop_names_the_step_of_a_non_finite_loss():
    x0 = torch.rand(4, 1, 3, 3)
    calls = {"n": 0}

    def loss_fn(z: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1
        loss = (z.flatten(1) ** 2).sum(1)
        return loss / 0 if calls["n"] > 3 else loss  # inf (0/0 = nan) from the fourth evaluation, step 3

    messages = []
    for run in (descend, descend_graphed):
        calls["n"] = 0
        with pytest.raises(NonFiniteLossError, match="not finite at step 3") as err:
            run(loss_fn, x0, steps=10, label="x: ")
        messages.append(str(err.value))
    assert messages[0] == messages[1]


# --------------------------------------------------------------------------- torch.compile with static shapes

def test_compile_traces_one_static_graph_per_chunk_pattern(images):
    """A counting backend sees what dynamo hands on: one whole graph (no graph breaks) per exit
    pattern, fixed shapes, nothing recompiled when the same passes run again."""
    graphs = []

    def backend(gm: torch.fx.GraphModule, example_inputs):
        graphs.append(example_inputs)
        return gm.forward

    eager = tiny_vit()
    compiled = tiny_vit(compile=backend)
    options = dict(steps=4, chunk_size=10)  # 3 blocks × 8 images = 24 rows: chunks of 10, 10 and 4
    reference = invert_blocks(eager, images, [1, 2, 3], **options)
    assert_same_inversions(reference, invert_blocks(compiled, images, [1, 2, 3], **options), atol=1e-6)
    assert len(graphs) == 3, [[getattr(t, "shape", t) for t in g] for g in graphs]
    assert all(isinstance(t, torch.Tensor) for g in graphs for t in g)  # static: no symbolic sizes passed in
    batches = sorted(t.shape[0] for g in graphs for t in g if t.dim() == 4 and t.shape[1:] == images.shape[1:])
    assert batches == [4, 10, 10], batches  # the images of each chunk
    invert_blocks(compiled, images, [1, 2, 3], **options)
    assert len(graphs) == 3  # the guards hold: no recompilation
    invert_blocks(compiled, images[:5], [2], steps=4, chunk_size=5)
    assert len(graphs) == 4  # a new exit pattern is a new graph


def test_compile_leaves_a_model_without_sequential_layers_alone():
    torch.manual_seed(0)
    model = create_model({"timm_name": "beit_base_patch16_224", "num_classes": 0,
                          "kwargs": {"img_size": 32, "depth": 2, "embed_dim": 32, "num_heads": 2}})
    assert not model.plan.sequential
    prepare_for_inversion(model, compile=True)
    assert "exit_outputs" not in vars(model)


@pytest.mark.slow  # inductor compiles C++ for the forward and backward graph: 100 s or more on a busy 2-core machine
def test_inductor_compiled_stack_matches_eager(images):
    eager, compiled = tiny_vit(depth=2), tiny_vit(depth=2, compile=True)
    options = dict(steps=8, log_every=4)  # one chunk: one graph to compile
    start = time.perf_counter()
    got = invert_blocks(compiled, images[:6], [1, 2], **options)
    print(f"inductor compile and 8 steps: {time.perf_counter() - start:.0f} s")
    assert_same_inversions(invert_blocks(eager, images[:6], [1, 2], **options), got, atol=1e-5)


# --------------------------------------------------------------------------- chunk sizes from memory

def test_chunk_size_for_memory_fills_the_budget():
    assert chunk_size_for_memory([10.0] * 100, budget=255.0) == 25  # 4 chunks of 25 rows
    assert chunk_size_for_memory([10.0] * 100, budget=355.0, fixed=50.0) == 25  # 30 fit: 4 chunks, evened out
    assert chunk_size_for_memory([10.0] * 100, budget=10_000.0) == 100


def test_chunk_size_for_memory_lets_every_chunk_fit_rows_of_growing_depth():
    rows = [float(d) for d in (1, 2, 3, 4) for _ in range(50)]  # block-major stack: deeper rows last
    budget = 300.0
    size = chunk_size_for_memory(rows, budget)
    chunks = [sum(rows[lo:lo + size]) for lo in range(0, len(rows), size)]
    assert max(chunks) <= budget
    assert size > budget / max(rows)  # more than the deepest rows alone would allow
    assert len(chunks) == len(range(0, len(rows), size)) and size * (len(chunks) - 1) < len(rows)
    bigger = size + 1
    assert max(sum(rows[lo:lo + bigger]) for lo in range(0, len(rows), bigger)) > budget \
        or -(-len(rows) // bigger) == len(chunks)  # one more row overflows, or it would not save a pass


def test_chunk_size_for_memory_refuses_a_row_that_cannot_fit():
    with pytest.raises(MemoryError, match="one row of an inversion pass needs"):
        chunk_size_for_memory([2.0**20] * 4, budget=2.0**20, fixed=1.0)


def test_memory_fraction_is_not_used_on_the_cpu(images, caplog):
    model = tiny_vit()
    reference = invert_blocks(model, images, [1, 2], steps=3, chunk_size=7)
    with caplog.at_level("INFO", logger="stirflow.inversion"):
        got = invert_blocks(model, images, [1, 2], steps=3, chunk_size=7, memory_fraction=0.5)
    assert_same_inversions(reference, got)
    assert "memory_fraction is for CUDA devices: chunks of 7" in caplog.text
    with pytest.raises(ValueError, match="memory_fraction 1.5"):
        invert_blocks(model, images, [1], steps=1, memory_fraction=1.5)


# --------------------------------------------------------------------------- the pipeline's switches

@pytest.mark.slow  # the smoke run, then two of its inversion jobs again
def test_invert_jobs_take_the_compute_switches(smoke_copy, tmp_path):
    """compute.cuda_graphs, fused_attention and chunk_memory_fraction rerun every inversion job (a
    dry run); two of them, run, record the switches and make what the reference made."""
    files = sorted(smoke_copy.glob("results/runs/*/inversions/*/*.h5"))
    assert files
    switches = {"cuda_graphs": True, "fused_attention": False, "chunk_memory_fraction": 0.5}
    config = write_config(tmp_path / "kernels.yaml", compute={"threads": 1, **switches})
    dry = snakemake(smoke_copy, "-n", "--until", "invert", configfile=config)
    assert jobs_by_rule(dry.stdout).get("invert") == len(files), dry.stdout[-3000:]
    files = [files[0], files[-1]]  # the first and last run's (scratch and pretrained) at their epochs
    before = {path: load_inversion(path)[0] for path in files}
    started = time.time()
    snakemake(smoke_copy, "--cores", "2", *(str(p.relative_to(smoke_copy)) for p in files), configfile=config)
    for path in files:
        results, info = load_inversion(path)
        assert {k: bool(info[k]) for k in switches if k in info} == {"cuda_graphs": True, "fused_attention": False}
        assert not bool(info["compile"]) and not bool(info["bf16"])
        for block, result in results.items():
            # Eager attention differs from SDPA by rounding only, but a hundred normalised steps
            # amplify rounding in a few pixels of a few images (measured: 1.6 % of the pixels move by
            # up to 0.14): the losses the images reach are what must agree.
            reference = before[path][block]
            image_change = float((result.images - reference.images).abs().mean())
            loss_change = float((result.losses - reference.losses).abs().max())
            print(f"{path.name} block {block}: mean |Δimage| {image_change:.1e}, max |Δloss| {loss_change:.1e}")
            assert image_change <= 2e-3 and loss_change <= 1e-4, (path, block, image_change, loss_change)
        assert path.stat().st_mtime >= started, f"{path} was not made again"


# --------------------------------------------------------------------------- on a GPU

@cuda
def test_cuda_graph_capture_matches_the_eager_loop(images):
    model = tiny_vit().cuda()
    x = images.cuda()
    options = dict(steps=20, log_every=5, chunk_size=10)
    reference = invert_blocks(model, x, [1, 2, 3], **options)
    assert_same_inversions(reference, invert_blocks(model, x, [1, 2, 3], cuda_graphs=True, **options), atol=1e-5)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        half = invert_blocks(model, x, [1, 2, 3], **options)
        assert_same_inversions(half, invert_blocks(model, x, [1, 2, 3], cuda_graphs=True, **options), atol=1e-3)


@cuda
def test_cuda_graphs_with_the_inductor_compiled_stack(images):
    eager, compiled = tiny_vit(depth=2).cuda(), tiny_vit(depth=2, compile=True).cuda()
    x = images.cuda()
    reference = invert_blocks(eager, x, [1, 2], steps=10)
    assert_same_inversions(reference, invert_blocks(compiled, x, [1, 2], steps=10, cuda_graphs=True), atol=1e-4)


@cuda
def test_memory_fraction_chooses_chunks_that_fit(images):
    model = tiny_vit().cuda()
    x = images.repeat(64, 1, 1, 1).cuda()  # 512 images × 3 blocks
    reference = invert_blocks(model, x, [1, 2, 3], steps=2)
    torch.cuda.empty_cache()
    free = torch.cuda.mem_get_info()[0]
    fraction = min(0.5, 64 * 2**20 / free)  # a small budget, so that it takes several chunks
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    got = invert_blocks(model, x, [1, 2, 3], steps=2, memory_fraction=fraction)
    assert torch.cuda.max_memory_allocated() - base <= fraction * free * 1.1
    assert_same_inversions(reference, got, atol=1e-5)


# --------------------------------------------------------------------------- bf16 on trained models

@pytest.fixture(scope="module")
def trained_pair(tmp_path_factory):
    """A tiny ViT pretrained on shapes (300 steps) and its finetuning on digits (105 steps): p and f."""
    from stirflow.training import train

    work = tmp_path_factory.mktemp("trained")
    spec = {"task": "classification", "num_classes": 10,
            "vit": dict(img_size=16, patch_size=4, embed_dim=32, depth=3, num_heads=2, mlp_ratio=2.0)}
    shapes_train, shapes_test = make_shapes(1280, 16, seed=0), make_shapes(256, 16, seed=1)
    cfg = {"epochs": 15, "batch_size": 64, "eval_batch_size": 512, "schedule": "cosine", "warmup_epochs": 1,
           "optimizer": {"name": "adamw", "lr": 0.002, "weight_decay": 0.05}, "augment": {}, "seed": 0}
    torch.manual_seed(0)
    p = create_model(spec)
    history_p = train(p, spec, ImageSet(*shapes_train, {"num_classes": 10}), ImageSet(*shapes_test, {"num_classes": 10}),
                      cfg, checkpoints=[work / f"p_{e:03d}.pt" for e in range(16)], resume_dir=work / "resume", run="p")
    digits = make_digits(16, 0.25, seed=0)
    digits_train, digits_test = (ImageSet(*digits[s], {"num_classes": 10}) for s in ("train", "test"))
    f = copy.deepcopy(p)
    torch.manual_seed(1)
    f.net.reset_classifier(10)
    finetune = {**cfg, "epochs": 5, "warmup_epochs": 0,
                "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 1e-4}}
    history_f = train(f, spec, digits_train, digits_test, finetune, checkpoints=[work / f"f_{e:03d}.pt" for e in range(6)],
                      resume_dir=work / "resume", run="f")
    print(f"trained: shapes test accuracy {history_p[-1]['test_accuracy']:.3f} (chance 0.1), "
          f"digits {history_f[-1]['test_accuracy']:.3f}")
    assert history_p[-1]["test_accuracy"] > 0.3 and history_f[-1]["test_accuracy"] > 0.2  # trained, not random
    return prepare_for_inversion(p), prepare_for_inversion(f), to_tensor(digits_test.images[:32])


@pytest.mark.slow  # bf16 runs slower than fp32 on a CPU: about a minute here
def test_bf16_inversions_of_trained_models_give_fp32_stir(trained_pair):
    p, f, x = trained_pair
    scores, losses = {}, {}
    for mode in ("fp32", "bf16"):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=mode == "bf16"):
            inv_p = invert_blocks(p, x, [1, 2, 3], steps=100)
            inv_f = invert_blocks(f, x, [1, 2, 3], steps=100)
        losses[mode] = inv_p[3].losses
        scores[mode] = pair_scores(p, f, x, {b: r.images for b, r in inv_p.items()},
                                   {b: r.images for b, r in inv_f.items()})
    assert not torch.equal(losses["fp32"], losses["bf16"]), "autocast had no effect"
    for key in ("flow", "flow_reverse", "within_ref", "within_eval"):
        diff = np.abs(scores["bf16"][key] - scores["fp32"][key]).max()
        print(f"{key}: max |bf16 - fp32| = {diff:.2e} (fp32 diagonal {np.round(np.diag(scores['fp32'][key]), 4)})")
        assert diff <= 0.01, (key, diff)
