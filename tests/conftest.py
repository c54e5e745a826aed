"""Shared fixtures: Snakemake runs in subprocesses (its API runs its own event loop), and one
completed run of configs/smoke.yaml per test session that tests copy instead of recomputing."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

# torch in the test processes on one intra-op thread: the suite runs on pytest-xdist workers, one per
# core, and a second thread per worker only makes the workers' small tensor ops wait for each other
# (measured: the README example 49 s alone with one thread, 187 s with two beside another worker).
# Snakemake jobs set their own thread count (compute.threads), so this reaches in-process tests only.
os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).parent / "snakemake")
SMOKE_CONFIG = REPO / "configs" / "smoke.yaml"


def snakemake(workdir: Path, *args: str, configfile: Path | None = SMOKE_CONFIG, check: bool = True,
              timeout: float = 900, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run the pipeline's Snakefile with ``workdir`` as working directory; output captured as text."""
    cmd = [SNAKEMAKE, "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
           "--workflow-profile", str(REPO / "profiles" / "default")]
    if configfile is not None:
        cmd += ["--configfile", str(configfile)]
    cmd += list(args)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"})
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-6000:]}\n{proc.stderr[-6000:]}")
    return proc


def write_config(path: Path, base: Path = SMOKE_CONFIG, **changes) -> Path:
    """``base`` with nested changes, e.g. ``write_config(p, stir={"steps": 10})`` (dicts merge, lists replace)."""
    config = yaml.safe_load(base.read_text())

    def merge(dst, src):
        for k, v in src.items():
            if isinstance(v, dict) and isinstance(dst.get(k), dict):
                merge(dst[k], v)
            else:
                dst[k] = v

    merge(config, changes)
    path.write_text(yaml.safe_dump(config))
    return path


#: Settings that leave out the stages a stand-alone pipeline test is not about: no convergence check,
#: no adversarial robustness, one corruption at one severity on few images, PNG figures only. Each
#: stage skipped saves its jobs' start-up (about 7 s of imports each); the smoke run covers them all.
LEAN = {"convergence": {"check": False}, "adversarial": {"enabled": False},
        "robustness": {"corruptions": ["contrast"], "severities": [3], "n_images": 32},
        "figures": {"formats": ["png"]}}


def jobs_by_rule(dry_run_output: str) -> dict[str, int]:
    """The 'Job stats' table of a dry run: {rule: count} (without 'total')."""
    lines = dry_run_output.splitlines()
    counts: dict[str, int] = {}
    try:
        start = next(i for i, line in enumerate(lines) if line.startswith("Job stats:"))
    except StopIteration:
        return counts
    for line in lines[start + 3:]:
        parts = line.split()
        if len(parts) != 2 or not parts[1].isdigit():
            break
        if parts[0] != "total":
            counts[parts[0]] = int(parts[1])
    return counts


def expected_jobs(config: dict) -> dict[str, int]:
    """Jobs per rule of a fresh run of a validated ``config``, computed from the DAG's structure
    (DESIGN §4): data, training, inversions (a job per block group), scores, the convergence check,
    robustness (a job per group of a run's checkpoints, ``robustness.checkpoints_per_job``, a rule per
    group), adversarial robustness (a job per classification run), aggregate and figures."""
    import math

    from stirflow.config import convergence_sample, expand_runs, stir_blocks, stir_epochs

    runs = expand_runs(config)
    targets = {r["target"] for r in runs}
    weights = config["pretrain"]["weights"]
    prepared = targets | ({config["pretrain"]["dataset"]} if weights is None else set())
    corrupted_sources = {config["datasets"][t].get("corrupted") for t in targets} - {None}
    blocks = stir_blocks(config)
    per_job = config["stir"]["blocks_per_job"] or len(blocks)
    n_stir = len(stir_epochs(config))
    sample = convergence_sample(config)
    epochs = config["finetune"]["epochs"] + 1
    per_group = config["robustness"]["checkpoints_per_job"] or epochs
    groups = [(first, min(first + per_group, epochs) - 1) for first in range(0, epochs, per_group)]
    robustness = ["robustness"] if len(groups) == 1 else [f"robustness_{a:03d}_{b:03d}" for a, b in groups]
    jobs = {
        "prepare_dataset": len(prepared),
        "prepare_corruption_set": len(corrupted_sources),
        "corrupt_dataset": len(targets),
        "finetune": len(runs),
        "invert": len(runs) * n_stir * math.ceil(len(blocks) / per_job),
        "stir_scores": len(runs) * n_stir,
        "invert_check": len(set(sample) | {(r, 0) for r, _ in sample}),
        "stir_scores_check": len(sample),
        **{name: len(runs) for name in robustness},
        "adversarial": sum(r["task"] == "classification" for r in runs) if config["adversarial"]["enabled"] else 0,
        "aggregate": 1,
        "figures": 1,
        "all": 1,
        "pretrain": 1 if weights is None else 0,
    }
    return {rule: n for rule, n in jobs.items() if n}


#: Test files that mostly wait (for SLURM's scheduler and status checks) rather than compute: run first,
#: so that pytest-xdist's other worker computes beside them (the shared smoke run, the unit tests).
WAITING_FIRST = ("test_slurm_pipeline.py", "test_slurm_cluster.py")


#: Then a file that asks for the shared smoke run first: the other worker starts computing it at once
#: (about three minutes on two cores), so that the tests waiting for it are not all left to the end.
SMOKE_FIRST = ("test_pipeline.py",)


def pytest_collection_modifyitems(config, items):
    # stable: the order within a file stays
    items.sort(key=lambda item: (item.path.name not in WAITING_FIRST, item.path.name not in SMOKE_FIRST))


def pytest_xdist_make_scheduler(config, log):
    """Under ``--dist loadfile``, the waiting files are one work unit: one worker waits for SLURM
    while the other computes (as two units, both workers waited for the first three minutes)."""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class WaitingTogether(LoadFileScheduling):
        def _split_scope(self, nodeid):
            scope = super()._split_scope(nodeid)
            return "waiting for SLURM" if Path(scope).name in WAITING_FIRST else scope

    return WaitingTogether(config, log)


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tests of tiny tensors run torch on one thread: a second intra-op thread gains nothing, and on a
    busy 2-core machine every small op waits for it (measured: 6 s with one thread, 40 s with two)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory, worker_id) -> Path:
    """A working directory holding a completed run of configs/smoke.yaml (do not modify: copy it).

    Under pytest-xdist the workers share one run: the first to ask computes it under a file lock in
    the directory common to all workers, the others wait for it; a failed run is not retried by the
    next worker, which fails with the first one's message."""
    if worker_id == "master":
        workdir = tmp_path_factory.mktemp("smoke")
        snakemake(workdir, "--cores", "2")
        return workdir
    from filelock import FileLock

    shared = tmp_path_factory.getbasetemp().parent
    workdir, failed = shared / "smoke", shared / "smoke.failed"
    with FileLock(str(shared / "smoke.lock")):
        if failed.exists():
            raise AssertionError(f"the shared smoke run failed in another worker:\n{failed.read_text()}")
        if not (shared / "smoke.done").exists():
            shutil.rmtree(workdir, ignore_errors=True)
            workdir.mkdir()
            try:
                snakemake(workdir, "--cores", "2")
            except BaseException as error:
                failed.write_text(str(error))
                raise
            (shared / "smoke.done").touch()
    return workdir


@pytest.fixture
def smoke_copy(smoke_run, tmp_path) -> Path:
    """A private copy of the completed smoke run (timestamps and Snakemake metadata kept)."""
    dst = tmp_path / "run"
    shutil.copytree(smoke_run, dst, symlinks=True)
    return dst
