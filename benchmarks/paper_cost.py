"""GPU-hours of a config, stage by stage, from timings on the device at hand (not from FLOP counts).

Every GPU stage of the DAG is timed on the config's own model and sizes, in each precision
(``fp32``: TF32 off; ``tf32``: TF32 matmuls; ``bf16``: autocast), with ``torch.cuda.synchronize``
around each timed region and after a warm-up; a timing is the difference between k + 1 units and
one unit of work, so fixed costs (the targets' forward pass, allocation) drop out:

* ``train``: one optimizer step (augmentation, forward, backward, update) at ``finetune.batch_size``;
* ``eval``: the forward pass per image, at the training evaluation's and at robustness' batch size;
* ``invert``: one inversion step per image at each STIR block (samples leaving after that block),
  and one step of the first ``invert`` job's whole pass (its blocks, ``stir.chunk_size``) per
  stored image size, in every precision and with each kernel switch (``compile``, ``cuda_graphs``);
  a job's time is its rows' per-block times, calibrated by the measured pass;
* ``scores``: one ``stir_scores`` job (stirflow.compare on stored inversions, image bootstrap included);
* ``pgd``: one PGD step per image (the ``adversarial`` stage); ``corrupt``: each corruption ×
  severity per image at each target's stored size (``corrupt_dataset``);
* ``startup``: a fresh Python importing torch, timm, Snakemake and stirflow, creating the device
  context and loading a checkpoint (what every job pays once), and loading one checkpoint.

The job counts and each job's work come from the config (``stirflow.config``: runs, epochs, block
groups, the convergence sample, robustness groups, corruptions), so the table follows the config.
Beside each measured figure stands the FLOP-derived one: the stage's FLOPs (counted with
``torch.utils.flop_counter.FlopCounterMode``) at this device's measured dense matmul rate in the
same precision, and the fraction of the H100/H200 data-sheet dense peak the stage reaches.

    python benchmarks/paper_cost.py --config configs/paper.yaml --out results/cost    # measure (GPU), price
    python benchmarks/paper_cost.py --config configs/paper.yaml --from-json results/cost/paper_cost.json
    python benchmarks/paper_cost.py --config configs/paper.yaml --plan                # jobs and work only
    python benchmarks/paper_cost.py --config configs/smoke.yaml --device cpu          # tiny sizes, any machine
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import copy
import json
import math
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from gpu_inversion import H100_PEAKS, MODES, matmul_peak, precision, sync, timed
from stirflow.config import (convergence_blocks, convergence_sample, convergence_steps, expand_runs, load_config,
                             model_spec, needs_pretraining, run_training, stir_blocks, stir_epochs)

#: Stored sizes of the downloaded kinds: (train images, test images, image size) before max_train/max_test.
PUBLIC_SIZES = {"cifar10": (50000, 10000, 32), "cifar100": (50000, 10000, 32), "oxford_pets": (3680, 3669, 224),
                "eurosat": (27000, None, 64)}
INVERT_VARIANTS = ("eager", "compile", "cuda_graphs", "compile+cuda_graphs")


# --------------------------------------------------------------------------- what the config runs

def dataset_size(config: dict, name: str) -> tuple[int, int, int]:
    """(train images, test images, stored image size) of data set ``name``: from its prepared files
    when they exist, else from its kind and settings."""
    spec = config["datasets"][name]
    folder = Path(config["data_dir"]) / name
    if (folder / "train.h5").is_file() and (folder / "test.h5").is_file():
        import h5py

        with h5py.File(folder / "train.h5") as tr, h5py.File(folder / "test.h5") as te:
            return len(tr["images"]), len(te["images"]), int(te["images"].shape[1])
    kind = spec["kind"]
    if kind == "shapes":
        n_train, n_test, size = spec.get("n_train", 6000), spec.get("n_test", 1000), spec.get("image_size", 16)
    elif kind == "photos":
        n_train, n_test, size = spec.get("n_train", 4000), spec.get("n_test", 1000), spec.get("image_size", 32)
    elif kind == "digits":
        n_test = math.ceil(1797 * spec.get("test_fraction", 0.25))
        n_train, size = 1797 - n_test, spec.get("image_size", 16)
    elif kind in PUBLIC_SIZES:
        n_train, n_test, size = PUBLIC_SIZES[kind]
        if n_test is None:  # a split of the whole set
            n_test = round(n_train * spec.get("test_fraction", 0.2))
            n_train -= n_test
        size = spec.get("image_size", size)
    else:
        raise ValueError(f"datasets.{name}: kind {kind!r} is not a training or test set")
    return min(n_train, spec.get("max_train", n_train)), min(n_test, spec.get("max_test", n_test)), int(size)


@dataclass
class Job:
    """One job's work: ``units`` of ``measure`` (a key of the measurements), and checkpoints it loads."""

    stage: str
    mode: str  # the precision the pipeline runs this stage in
    work: list[tuple[str, float]] = field(default_factory=list)  # (measurement key, how many)
    checkpoints: int = 0
    label: str = ""


def plan(config: dict) -> list[Job]:
    """Every GPU job of ``config``'s DAG with its work, as the rules and scripts run it."""
    compute = config["compute"]
    train_mode = "bf16" if compute["bf16"] else "fp32"
    runs = expand_runs(config)
    jobs: list[Job] = []
    size_of = {name: dataset_size(config, name) for name in {r["target"] for r in runs}}

    def training(stage: str, label: str, settings: dict, dataset: str, task: str) -> Job:
        n_train, n_test, size = dataset_size(config, dataset)
        n_train = int(n_train * float(settings.get("train_fraction", 1.0)))
        bs, epochs = int(settings["batch_size"]), int(settings["epochs"])
        eval_bs = int(settings.get("eval_batch_size", 256))
        mode = "bf16" if settings.get("bf16") else "fp32"
        return Job(stage, mode, [(f"train/{task}/{bs}", epochs * max(1, n_train // bs)),
                                 (f"eval/{eval_bs}", (epochs + 1) * n_test + n_train)], 0, label)

    if needs_pretraining(config):
        pre = {**config["pretrain"], "bf16": compute["bf16"]}
        jobs.append(training("pretrain", "pretrain", pre, config["pretrain"]["dataset"], "classification"))
    for run in runs:
        jobs.append(training("finetune", run["name"], run_training(config, run), run["target"], run["task"]))

    stir = config["stir"]
    blocks = stir_blocks(config)
    per_job = stir["blocks_per_job"] or len(blocks)
    groups = [blocks[i:i + per_job] for i in range(0, len(blocks), per_job)]
    chunk = stir["chunk_size"] or None

    def inversion(stage: str, label: str, target: str, group: list[int], steps: int) -> Job:
        n = min(stir["n_images"], size_of[target][1])
        return Job(stage, train_mode, [(f"invert/{size_of[target][2]}/{chunk}/{b}", n * steps) for b in group], 1, label)

    def scores(stage: str, label: str, target: str, score_blocks: list[int], bootstrap: int) -> Job:
        n = min(stir["n_images"], size_of[target][1])
        return Job(stage, "fp32", [(f"scores/{n}/{'-'.join(map(str, score_blocks))}/{bootstrap}", 1)], 2, label)

    for run in runs:
        for epoch in stir_epochs(config):
            for group in groups:
                jobs.append(inversion("invert", f"{run['name']} {epoch} {group}", run["target"], group, stir["steps"]))
            jobs.append(scores("stir_scores", f"{run['name']} {epoch}", run["target"], blocks, stir["image_bootstrap"]))
    sample = convergence_sample(config)
    target_of = {r["name"]: r["target"] for r in runs}
    for run, epoch in sorted(set(sample) | {(r, 0) for r, _ in sample}):
        jobs.append(inversion("invert_check", f"{run} {epoch}", target_of[run], convergence_blocks(config),
                              convergence_steps(config)))
    for run, epoch in sample:
        jobs.append(scores("stir_scores_check", f"{run} {epoch}", target_of[run], convergence_blocks(config), 0))

    rob = config["robustness"]
    epochs = int(config["finetune"]["epochs"]) + 1
    per_group = rob["checkpoints_per_job"] or epochs
    conditions = len(rob["corruptions"]) * len(rob["severities"])
    for run in runs:
        n = min(rob["n_images"], size_of[run["target"]][1])
        for first in range(0, epochs, per_group):
            count = min(first + per_group, epochs) - first
            jobs.append(Job("robustness", "fp32", [("eval/256", count * (1 + conditions) * n)], count,
                            f"{run['name']} {first}"))
    adv = config["adversarial"]
    if adv["enabled"]:
        for run in [r for r in runs if r["task"] == "classification"]:
            n = min(adv["n_images"], size_of[run["target"]][1])
            radii = [e for v in adv["eps"].values() for e in v]
            attacked = sum(e > 0 for e in radii)
            jobs.append(Job("adversarial", "fp32", [(f"pgd/{adv['batch_size']}", epochs * attacked * adv["steps"] * n),
                                                    (f"eval/{adv['batch_size']}", epochs * len(radii) * n)],
                            epochs, run["name"]))
    for target in sorted(size_of):
        n, size = min(rob["n_images"], size_of[target][1]), size_of[target][2]
        generated = not config["datasets"][target].get("corrupted")
        work = [(f"corrupt/{size}/{c}/{s}", n) for c in rob["corruptions"] for s in rob["severities"]] if generated else []
        jobs.append(Job("corrupt_dataset", "fp32", work, 0, target))
    return jobs


def job_counts(jobs: list[Job]) -> dict[str, int]:
    return dict(collections.Counter(j.stage for j in jobs))


# --------------------------------------------------------------------------- measuring

def per_unit(run: Callable[[int], Any], reps: int, device: torch.device) -> float:
    """Seconds per unit of ``run(k)`` (k units of work): (t(1 + reps) − t(1)) / reps, after a warm-up."""
    run(1)
    one = timed(lambda: run(1), device)
    more = timed(lambda: run(1 + reps), device)
    return max((more - one) / reps, 1e-9)


def flops_of(fn: Callable[[], Any]) -> float:
    with FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


def synthetic_images(n: int, size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


class Bench:
    """Measurements of one config's model on one device, stored by key (see :func:`plan`'s work keys)."""

    def __init__(self, config: dict, device: torch.device, modes: tuple[str, ...], reps: int, out: Path | None):
        self.config, self.device, self.modes, self.reps, self.out = config, device, modes, reps, out
        self.seconds: dict[str, dict[str, float]] = {}  # key → {mode or variant: seconds per unit}
        self.flops: dict[str, float] = {}  # key → FLOPs per unit
        self.info: dict[str, Any] = {}
        self.models: dict[str, torch.nn.Module] = {}

    def model(self, task: str) -> torch.nn.Module:
        from stirflow.models import create_model

        if task not in self.models:
            torch.manual_seed(0)
            spec = model_spec(self.config, task, 10 if task == "classification" else 0)
            self.models[task] = create_model(spec).to(self.device)
        return self.models[task]

    def frozen(self) -> torch.nn.Module:
        """The classification model prepared for inversion (eval mode, no parameter gradients), a copy."""
        from stirflow.models import prepare_for_inversion

        if "frozen" not in self.models:
            self.models["frozen"] = prepare_for_inversion(copy.deepcopy(self.model("classification")),
                                                          fused_attention=True)
        return self.models["frozen"]

    def record(self, key: str, mode: str, seconds: float) -> None:
        self.seconds.setdefault(key, {})[mode] = seconds
        print(f"  {key:<44} {mode:<20} {seconds * 1e3:>12.4f} ms/unit", flush=True)
        self.save()

    def save(self) -> None:
        if self.out is not None:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "paper_cost.json").write_text(json.dumps(self.measurements(), indent=1))

    def measurements(self) -> dict[str, Any]:
        return {"info": self.info, "seconds": self.seconds, "flops": self.flops}

    # ---------------------------------------------------------------- the stages

    def train(self, key: str, size: int) -> None:
        from stirflow.augmentation import augment
        from stirflow.training import make_optimizer, task_loss

        _, task, bs = key.split("/")
        bs = int(bs)
        settings = self.config["finetune"]
        base = self.model(task)
        x = torch.from_numpy(synthetic_images(bs, size))
        y = torch.randint(0, 10, (bs,))
        crop = getattr(base, "img_size", None)
        for mode in self.modes:
            model = copy.deepcopy(base).train()
            optimizer = make_optimizer(model, settings["optimizer"])
            gen = torch.Generator().manual_seed(0)

            def steps(k: int, m: str = mode) -> None:
                for _ in range(k):  # as training._train_epoch runs a step
                    xb = augment(x.to(self.device).permute(0, 3, 1, 2).float().div_(255), settings.get("augment", {}),
                                 gen, size=crop)
                    with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=m == "bf16"):
                        loss, _ = task_loss(model, xb, y.to(self.device))
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()

            with precision(mode, self.device):
                self.record(key, mode, per_unit(steps, self.reps, self.device))
        with precision("fp32", self.device):
            model = copy.deepcopy(base).train()
            xb = torch.rand(2, 3, size, size, device=self.device)
            yb = torch.zeros(2, dtype=torch.long, device=self.device)
            self.flops[key] = flops_of(lambda: task_loss(model, xb, yb)[0].backward())  # per step of 2 images
        self.flops[key] *= bs / 2

    def evaluate(self, key: str, size: int) -> None:
        from stirflow.training import evaluate

        bs = int(key.split("/")[1])
        model = self.model("classification").eval()
        x = synthetic_images(bs * (1 + self.reps), size)
        y = torch.zeros(len(x), dtype=torch.long)
        for mode in self.modes:
            with precision(mode, self.device):
                seconds = per_unit(lambda k, m=mode: evaluate(model, x[:k * bs], y[:k * bs], bs, bf16=m == "bf16"),
                                   self.reps, self.device)
            self.record(key, mode, seconds / bs)
        xb = torch.rand(1, 3, size, size, device=self.device)
        with torch.no_grad():
            self.flops[key] = flops_of(lambda: model(xb))

    def pgd(self, key: str, size: int) -> None:
        from stirflow.adversarial import pgd

        bs = min(int(key.split("/")[1]), self.config["adversarial"]["n_images"])
        model = self.frozen()  # autograd.grad takes the input's gradient alone either way
        x = torch.rand(bs, 3, size, size, device=self.device)
        y = torch.zeros(bs, dtype=torch.long, device=self.device)
        attack = lambda k, images=x, labels=y: pgd(model, images, labels, norm="linf", eps=0.01, steps=k,  # noqa: E731
                                                   step_size=0.0025)
        for mode in self.modes:
            with precision(mode, self.device):
                self.record(key, mode, per_unit(attack, self.reps, self.device) / bs)
        z = x[:1].clone().requires_grad_(True)

        def pgd_step() -> None:  # pgd's step with a non-leaf model input (the FLOP counter's hooks need one)
            torch.autograd.grad(torch.nn.functional.cross_entropy(model(z * 1), y[:1]), z)

        self.flops[key] = flops_of(pgd_step)

    def invert_blocks_of(self, size: int, chunk: int | None, blocks: list[int]) -> None:
        """Per-block step times at ``size``: every block alone, on up to 512 rows (a chunk's batch)."""
        from stirflow.inversion import invert_blocks

        model = self.frozen()
        n = min(self.config["stir"]["n_images"], chunk or 512, 512)
        x = torch.rand(n, 3, size, size, device=self.device)
        self.info["block_size"] = size
        for b in blocks:
            key = f"invert/{chunk}/{b}"
            for mode in self.modes:
                with precision(mode, self.device):
                    seconds = per_unit(lambda k, blk=b: invert_blocks(model, x, [blk], steps=k), self.reps, self.device)
                self.record(key, mode, seconds / n)
            one = x[:1]
            self.flops[key] = (flops_of(lambda blk=b: invert_blocks(model, one, [blk], steps=2))
                               - flops_of(lambda blk=b: invert_blocks(model, one, [blk], steps=1)))

    def invert_pass(self, size: int, chunk: int | None, group: list[int], n: int, variants: tuple[str, ...]) -> None:
        """One step of an ``invert`` job's whole pass (``n`` images × ``group``'s blocks, chunks of
        ``chunk``) per kernel variant."""
        from stirflow.inversion import invert_blocks
        from stirflow.models import prepare_for_inversion

        x = torch.rand(n, 3, size, size, device=self.device)
        self.info["pass_images"] = n
        key = f"pass/{size}/{chunk}/{'-'.join(map(str, group))}"
        for variant in variants:
            compiled = "compile" in variant
            for mode in self.modes:
                model = prepare_for_inversion(copy.deepcopy(self.frozen()), compile=compiled)
                run = lambda k, m=model, v=variant: invert_blocks(m, x, group, steps=k, chunk_size=chunk,  # noqa: E731
                                                                  cuda_graphs="cuda_graphs" in v)
                try:
                    with precision(mode, self.device):
                        first = timed(lambda: run(1), self.device)  # compiles, when compiled
                        seconds = per_unit(run, self.reps, self.device)
                        first -= timed(lambda: run(1), self.device)
                except Exception as err:  # report, keep the other measurements
                    self.info.setdefault("errors", {})[f"{key} {mode} {variant}"] = f"{type(err).__name__}: {err}"[:400]
                    print(f"  {key} {mode} {variant}: failed ({type(err).__name__}: {err})"[:300], flush=True)
                    continue
                self.info.setdefault("pass_setup_s", {})[f"{key} {mode} {variant}"] = first
                self.record(key, mode if variant == "eager" else f"{mode}+{variant}", seconds)

    def scores(self, key: str, size: int) -> None:
        from stirflow.comparison import compare
        from stirflow.inversion import InversionResult

        _, n, blocks, bootstrap = key.split("/")
        n, blocks, bootstrap = int(n), [int(b) for b in blocks.split("-")], int(bootstrap)
        model = self.frozen()
        similarity = self.config["stir"]["similarity"]

        def job(images: int, boot: int = bootstrap) -> None:
            x = torch.rand(images, 3, size, size, device=self.device)
            inv = {b: InversionResult(torch.rand_like(x), torch.zeros(images), torch.ones(images)) for b in blocks}
            compare(model, model, x, blocks=blocks, similarity=similarity, bootstrap=boot, inverted_a=inv, inverted_b=inv)

        compare_once = lambda k: [job(n) for _ in range(k)]  # noqa: E731
        self.record(key, "fp32", per_unit(compare_once, 1, self.device))
        small = [flops_of(lambda m=m: job(m)) for m in (4, 8)]  # FLOPs are a·n + b·n² (features, then Gram matrices)
        b2 = (small[1] - 2 * small[0]) / (64 - 2 * 16)
        self.flops[key] = (small[0] - 16 * b2) / 4 * n + b2 * n * n

    def corrupt(self, keys: list[str]) -> None:
        from stirflow.corruptions import corrupt

        for key in keys:
            _, size, name, severity = key.split("/")
            x = torch.rand(16, 3, int(size), int(size), device=self.device)
            seconds = per_unit(lambda k: [corrupt(x, name, int(severity)) for _ in range(k)], 1, self.device)
            self.record(key, "fp32", seconds / len(x))

    def startup(self) -> None:
        """A fresh Python as a job starts: imports, device context, one checkpoint loaded (and that load alone)."""
        from stirflow.models import load_checkpoint, save_checkpoint

        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "epoch_000.pt"
            model = self.model("classification")
            save_checkpoint(path, model, model_spec(self.config, "classification", 10), run="cost", epoch=0)
            code = ("import torch, timm, stirflow.models as m\n"
                    "try:\n    import snakemake\nexcept ImportError:\n    pass\n"  # a job's script imports it
                    f"d = torch.device({str(self.device)!r})\n"
                    "torch.zeros(1, device=d)\n"
                    f"m.load_checkpoint({str(path)!r}, d)\n")
            start = time.perf_counter()
            subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
            self.info["startup_s"] = time.perf_counter() - start
            load_checkpoint(path, self.device)
            start = time.perf_counter()
            load_checkpoint(path, self.device)
            sync(self.device)
            self.info["checkpoint_load_s"] = time.perf_counter() - start
        print(f"  startup {self.info['startup_s']:.1f} s, checkpoint load {self.info['checkpoint_load_s']:.2f} s",
              flush=True)
        self.save()


def measure(config: dict, jobs: list[Job], device: torch.device, modes: tuple[str, ...], reps: int,
            variants: tuple[str, ...], out: Path | None, budget_s: float) -> dict[str, Any]:
    """Time every measurement ``jobs`` need (most of the cost first), within ``budget_s`` seconds."""
    bench = Bench(config, device, modes, reps, out)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    bench.info.update({"device": where, "torch": torch.__version__, "modes": list(modes), "model": config["model"],
                       "skipped": []})
    start = time.perf_counter()
    keys = sorted({key for job in jobs for key, _ in job.work})
    sizes = collections.Counter(dataset_size(config, r["target"])[2] for r in expand_runs(config))
    main_size = sizes.most_common(1)[0][0]
    bench.info["main_size"] = main_size
    invert_keys = [k for k in keys if k.startswith("invert/")]
    first = next((j for j in jobs if j.stage == "invert"), None)

    def step(name: str, fn: Callable[[], None]) -> None:
        if time.perf_counter() - start > budget_s:
            bench.info["skipped"].append(name)
            print(f"  {name}: skipped (budget of {budget_s:.0f} s spent)", flush=True)
            return
        fn()

    print(f"# {where}, torch {torch.__version__}; modes {', '.join(modes)}; main image size {main_size} px", flush=True)
    step("matmul", lambda: bench.info.update(matmul_tflops=matmul_rates(device, modes)))
    step("startup", bench.startup)
    if first is not None:
        _, size, chunk, _ = first.work[0][0].split("/")
        size, chunk = int(size), None if chunk == "None" else int(chunk)
        group = [int(k.split("/")[3]) for k, _ in first.work]
        n = round(first.work[0][1] / config["stir"]["steps"])
        n = min(n, max(1, chunk // len(group))) if chunk else n  # one chunk: one graph to compile per variant
        step("invert blocks", lambda: bench.invert_blocks_of(size, chunk, sorted({int(k.split("/")[3]) for k in invert_keys})))
        for s in sorted({int(k.split("/")[1]) for k in invert_keys}):
            step(f"invert pass {s} px", lambda s=s: bench.invert_pass(s, chunk, group, n, ("eager",)))
    for key in [k for k in keys if k.startswith("train/")]:
        step(key, lambda key=key: bench.train(key, main_size))
    for key in [k for k in keys if k.startswith("eval/")]:
        step(key, lambda key=key: bench.evaluate(key, main_size))
    for key in [k for k in keys if k.startswith("scores/")]:
        step(key, lambda key=key: bench.scores(key, main_size))
    for key in [k for k in keys if k.startswith("pgd/")]:
        step(key, lambda key=key: bench.pgd(key, main_size))
    step("corruptions", lambda: bench.corrupt([k for k in keys if k.startswith("corrupt/")]))
    if first is not None and len(variants) > 1:
        step("invert pass kernels", lambda: bench.invert_pass(size, chunk, group, n, tuple(v for v in variants if v != "eager")))
    bench.info["seconds"] = time.perf_counter() - start
    bench.save()
    return bench.measurements()


def matmul_rates(device: torch.device, modes: tuple[str, ...]) -> dict[str, float]:
    """Dense matmul TFLOP/s per precision on this device (bf16 as a bf16 matmul)."""
    n = 8192 if device.type == "cuda" else 256
    rates = {}
    for mode in modes:
        with precision(mode, device):
            dtype = torch.bfloat16 if mode == "bf16" else torch.float32
            rates[mode] = matmul_peak(device, dtype, n=n if mode != "fp32" else n // 2, reps=10) / 1e12
    print("  matmul TFLOP/s: " + ", ".join(f"{k} {v:.2f}" for k, v in rates.items()), flush=True)
    return rates


# --------------------------------------------------------------------------- pricing

def stage_mode(job: Job, compute: dict) -> str:
    """The measurement column a job of the config reads: its precision, with the inversion switches."""
    if job.stage in ("invert", "invert_check"):
        variant = "+".join(k for k in ("compile", "cuda_graphs") if compute[k])
        return job.mode + (f"+{variant}" if variant else "")
    return job.mode


def job_seconds(job: Job, m: dict, mode: str) -> tuple[float, float]:
    """(seconds, FLOPs) of one job from the measurements ``m`` in ``mode``; KeyError names what is missing."""
    seconds, flops = m["info"]["startup_s"] + job.checkpoints * m["info"]["checkpoint_load_s"], 0.0
    base_mode, _, variant = mode.partition("+")
    for key, units in job.work:
        if key.startswith("invert/"):
            _, size, chunk, block = key.split("/")
            key = f"invert/{chunk}/{block}"  # timed at one size, calibrated to this one by its pass
            per = m["seconds"][key][base_mode] * inversion_factor(m, int(size), chunk, base_mode, variant)
        else:
            per = m["seconds"][key][base_mode if base_mode in m["seconds"][key] else "fp32"]
        seconds += per * units
        flops += m["flops"].get(key, 0.0) * units
    return seconds, flops


def inversion_factor(m: dict, size: int, chunk: str, mode: str, variant: str) -> float:
    """Measured pass at ``size`` (else at the per-block times' size) ÷ the pass its per-block times
    predict, times the kernel variant's speed-up on the measured pass."""
    def pass_key(s: int) -> str | None:
        return next((k for k in m["seconds"] if k.startswith(f"pass/{s}/{chunk}/")), None)

    key = pass_key(size) or pass_key(m["info"]["block_size"])
    if key is None:
        return 1.0
    group = [int(b) for b in key.split("/")[3].split("-")]
    predicted = sum(m["seconds"][f"invert/{chunk}/{b}"][mode] for b in group) * m["info"]["pass_images"]
    factor = m["seconds"][key][mode] / predicted
    if variant:
        fast = m["seconds"][key].get(f"{mode}+{variant}")
        if fast is None:  # the kernel variants are timed at the per-block size
            key = pass_key(m["info"]["block_size"])
            fast = m["seconds"][key].get(f"{mode}+{variant}")
            if fast is None:
                raise KeyError(f"{key} {mode}+{variant}")
        factor *= fast / m["seconds"][key][mode]
    return factor


def price(config: dict, jobs: list[Job], m: dict) -> list[dict[str, Any]]:
    """One row per stage: jobs, GPU-hours measured, FLOPs, FLOP-derived hours, fraction of peak."""
    compute = config["compute"]
    rows: dict[str, dict[str, Any]] = {}
    for job in jobs:
        mode = stage_mode(job, compute)
        row = rows.setdefault(job.stage, {"stage": job.stage, "mode": mode, "jobs": 0, "seconds": 0.0, "flops": 0.0,
                                          "startup_s": 0.0})
        seconds, flops = job_seconds(job, m, mode)
        row["jobs"] += 1
        row["seconds"] += seconds
        row["flops"] += flops
        row["startup_s"] += m["info"]["startup_s"]
    rates = m["info"].get("matmul_tflops", {})
    peak_ok = any(name in m["info"]["device"] for name in ("H100", "H200"))
    for row in rows.values():
        base = row["mode"].split("+")[0]
        row["gpu_hours"] = row["seconds"] / 3600
        row["flop_hours"] = row["flops"] / (rates[base] * 1e12) / 3600 if rates.get(base) else float("nan")
        compute_s = row["seconds"] - row["startup_s"]
        row["fraction_of_peak"] = (row["flops"] / compute_s / H100_PEAKS[base]
                                   if peak_ok and compute_s > 0 and row["flops"] else float("nan"))
    return list(rows.values())


def price_modes(config: dict, jobs: list[Job], m: dict) -> dict[str, float]:
    """Total GPU-hours if every stage that follows ``compute.bf16`` ran in each measured precision
    (and the inversions with each measured kernel switch)."""
    out = {}
    for mode in m["info"]["modes"]:
        for variant in ("",) + tuple(v for v in INVERT_VARIANTS if v != "eager"):
            name = mode + (f"+{variant}" if variant else "")
            try:
                total = 0.0
                for job in jobs:
                    follows = job.stage in ("pretrain", "finetune", "invert", "invert_check")
                    job_mode = (name if job.stage.startswith("invert") else mode) if follows else job.mode
                    total += job_seconds(job, m, job_mode)[0]
            except KeyError:
                continue
            out[name] = total / 3600
    return out


def print_table(rows: list[dict[str, Any]], by_mode: dict[str, float], markdown: bool) -> None:
    total = sum(r["gpu_hours"] for r in rows)
    head = ("stage", "runs in", "jobs", "GPU-h measured", "of it start-up", "FLOPs", "GPU-h at matmul rate",
            "of dense peak")
    fmt = lambda r: (r["stage"], r["mode"], str(r["jobs"]), f"{r['gpu_hours']:.3g}",  # noqa: E731
                     f"{r['startup_s'] / 3600:.2g}", f"{r['flops']:.2e}" if r["flops"] else "-",
                     f"{r['flop_hours']:.3g}" if r["flops"] and not math.isnan(r["flop_hours"]) else "-",
                     f"{r['fraction_of_peak']:.0%}" if not math.isnan(r["fraction_of_peak"]) else "-")
    lines = [head] + [fmt(r) for r in rows] + [("total", "", str(sum(r["jobs"] for r in rows)), f"{total:.3g}",
                                                "", "", "", "")]
    if markdown:
        print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
        for line in lines[1:]:
            print("| " + " | ".join(line) + " |")
    else:
        widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
        for line in lines:
            print("  ".join(cell.ljust(w) for cell, w in zip(line, widths)))
    print("\nGPU-hours of the whole DAG by precision of the stages that follow compute.bf16 "
          "(and the inversions' kernel switches):")
    for name, hours in by_mode.items():
        print(f"  {name:<26} {hours:.3g}")


def print_kernels(m: dict) -> None:
    """The measured inversion passes: seconds per step, TFLOP/s and fraction of the dense peak, per variant."""
    rows = []
    for key, by_mode in m["seconds"].items():
        if not key.startswith("pass/"):
            continue
        _, size, chunk, group = key.split("/")
        blocks = [int(b) for b in group.split("-")]
        flops = sum(m["flops"].get(f"invert/{chunk}/{b}", 0.0) for b in blocks) * m["info"]["pass_images"]
        for name, seconds in by_mode.items():
            mode = name.split("+")[0]
            peak = H100_PEAKS[mode] if any(g in m["info"]["device"] for g in ("H100", "H200")) else float("nan")
            setup = m["info"].get("pass_setup_s", {}).get(f"{key} {mode} {name.partition('+')[2] or 'eager'}")
            rows.append((f"{size} px, {m['info']['pass_images']} images × blocks {group}", name, f"{seconds:.4g}",
                         f"{flops / seconds / 1e12:.3g}", f"{flops / seconds / peak:.0%}" if peak == peak else "-",
                         f"{setup:.1f}" if setup is not None else "-"))
    if rows:
        print("\nInversion passes (one step of the first invert job's blocks in one chunk):")
        head = ("pass", "kernels", "s/step", "TFLOP/s", "of dense peak", "first call's extra s (compile)")
        widths = [max(len(r[i]) for r in rows + [head]) for i in range(len(head))]
        for r in [head] + rows:
            print("  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="the config to price (stirflow.config.load_config)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--variants", nargs="+", choices=INVERT_VARIANTS,
                        help="inversion kernel variants timed on the first invert job's pass "
                             "(default: all on a GPU, eager alone on a CPU)")
    parser.add_argument("--reps", type=int, default=3, help="timed units per measurement beyond the warm-up")
    parser.add_argument("--threads", type=int, help="CPU threads for torch")
    parser.add_argument("--budget-s", type=float, default=math.inf, help="stop measuring after this many seconds")
    parser.add_argument("--from-json", type=Path, help="price from these measurements instead of measuring")
    parser.add_argument("--plan", action="store_true", help="print the jobs and their work, measure nothing")
    parser.add_argument("--markdown", action="store_true", help="the table as Markdown (for docs/reproducing.md)")
    parser.add_argument("--out", type=Path, help="folder for paper_cost.json (measurements) and paper_cost_table.json")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    config = load_config(args.config)
    jobs = plan(config)
    if args.plan:
        print(json.dumps({"jobs": job_counts(jobs), "work": [asdict(j) for j in jobs]}, indent=1))
        return
    if args.from_json:
        m = json.loads(args.from_json.read_text())
        if m["info"].get("model") != config["model"]:
            raise SystemExit(f"{args.from_json}: measured on model {m['info'].get('model')}, "
                             f"not the config's {config['model']}")
    else:
        device = torch.device(args.device)
        variants = tuple(args.variants or (INVERT_VARIANTS if device.type == "cuda" else ("eager",)))
        m = measure(config, jobs, device, tuple(args.modes), args.reps, variants, args.out, args.budget_s)
    try:
        rows = price(config, jobs, m)
    except KeyError as err:
        raise SystemExit(f"no measurement {err} for this config in the measurements (another size or setting)")
    by_mode = price_modes(config, jobs, m)
    print(f"\n# {args.config} on {m['info']['device']} (torch {m['info']['torch']}), from measurements:")
    print_table(rows, by_mode, args.markdown)
    print_kernels(m)
    for what, error in m["info"].get("errors", {}).items():
        print(f"failed: {what}: {error}")
    if m["info"].get("skipped"):
        print(f"not measured (time budget): {', '.join(m['info']['skipped'])}")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "paper_cost_table.json").write_text(json.dumps(
            {"config": str(args.config), "jobs": job_counts(jobs), "stages": rows, "by_mode": by_mode,
             "total_gpu_hours": sum(r["gpu_hours"] for r in rows)}, indent=1))


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        main()
