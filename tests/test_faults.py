"""Faults and bad input: a killed training job resumes exactly, the same config gives the same
summary.nc, corrupt inputs and non-finite losses stop with clear messages, bad configs stop early."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest
import torch
import yaml

from stirflow.config import load_config, stir_epochs

from conftest import REPO, SMOKE_CONFIG, SNAKEMAKE, snakemake, write_config

KILLED_RUN = "digits-scratch"
#: what the resumed run makes: the killed run's history and its STIR scores at every scored epoch
KILLED_TARGETS = [f"results/runs/{KILLED_RUN}/history.json"] + [
    f"results/runs/{KILLED_RUN}/stir/epoch_{e:03d}.nc" for e in stir_epochs(load_config(SMOKE_CONFIG))]


def output_files(workdir: Path) -> set[str]:
    """Every data and result file (logs and benchmarks left out)."""
    return {str(p.relative_to(workdir)) for top in ("data", "results") for p in (workdir / top).rglob("*")
            if p.is_file() and "logs" not in p.parts and "benchmarks" not in p.parts}


def failed_outputs(text: str) -> set[str]:
    """The output files of the jobs Snakemake reports as failed ("Error in rule ...")."""
    out = set()
    for block in re.findall(r"Error in rule \w+:\n(.*?)(?:\n\S|\Z)", text, flags=re.S):
        m = re.search(r"^\s+output: (.*)$", block, flags=re.M)
        if m:
            out |= set(m.group(1).split(", "))
    return out


def checkpoint_differences(a: Path, b: Path) -> list[str]:
    """What differs between two checkpoints: every tensor bit for bit, every other entry by value
    (the epoch's wall time left out). The files' bytes always differ: torch writes a random id."""
    ca, cb = torch.load(a, weights_only=True), torch.load(b, weights_only=True)
    diffs = []
    if ca.keys() != cb.keys():
        return [f"keys {sorted(ca)} != {sorted(cb)}"]
    for key in ca:
        if key == "state_dict":
            if ca[key].keys() != cb[key].keys():
                diffs.append("state_dict keys")
            diffs += [f"state_dict.{k}" for k in ca[key]
                      if ca[key][k].dtype != cb[key][k].dtype or ca[key][k].shape != cb[key][k].shape
                      or ca[key][k].cpu().numpy().tobytes() != cb[key][k].cpu().numpy().tobytes()]
        elif key == "metrics":
            if {k: v for k, v in ca[key].items() if k != "seconds"} != {k: v for k, v in cb[key].items() if k != "seconds"}:
                diffs.append(f"metrics {ca[key]} != {cb[key]}")
        elif ca[key] != cb[key]:
            diffs.append(f"{key}: {ca[key]!r} != {cb[key]!r}")
    return diffs


def training_process(root: psutil.Process, log: Path, script: str = "finetune.py") -> psutil.Process | None:
    """The ``script`` process (a descendant of ``root``) that writes ``log``."""
    for proc in root.children(recursive=True):
        try:
            if any(script in part for part in proc.cmdline()) and \
                    any(Path(f.path).resolve() == log.resolve() for f in proc.open_files()):
                return proc
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return None


def kill_during(work: Path, configfile: Path, log: Path, script: str, pattern: str, *targets: str) -> tuple[str, str]:
    """Snakemake on ``configfile`` in ``work``, the ``script`` process writing ``log`` killed (SIGKILL)
    as soon as ``pattern`` appears in it. Returns the log when it was killed and Snakemake's console output."""
    cmd = [SNAKEMAKE, "--snakefile", str(REPO / "Snakefile"), "--directory", str(work),
           "--workflow-profile", str(REPO / "profiles" / "default"), "--configfile", str(configfile), "--cores", "2",
           *targets]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    console = work.parent / f"{work.name}-first.out"
    console.parent.mkdir(parents=True, exist_ok=True)
    with open(console, "w") as out:
        first = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    killed_at, proc = None, None
    try:
        deadline = time.time() + 900
        while killed_at is None and first.poll() is None and time.time() < deadline:
            if proc is None and log.is_file():  # find the process first, to kill it without delay
                proc = training_process(psutil.Process(first.pid), log, script)
            if proc is not None and re.search(pattern, log.read_text()):
                proc.send_signal(signal.SIGKILL)
                killed_at = log.read_text()
            time.sleep(0.01)
        first.wait(timeout=900)
    finally:
        if first.poll() is None:
            first.kill()
    output = console.read_text()
    assert killed_at is not None, f"{pattern!r} never appeared in {log}:\n{output[-4000:]}"
    assert first.returncode != 0, output[-4000:]
    return killed_at, output


def kill_in_epoch_1(work: Path, configfile: Path, run: str, *targets: str) -> tuple[str, str]:
    """:func:`kill_during` the finetuning of ``run``, in the middle of its epoch 1."""
    log = work / "results" / "logs" / "finetune" / f"{run}.log"
    return kill_during(work, configfile, log, "finetune.py", rf"{run}: epoch 1 step \d+/\d+", *targets)


def epochs_done(log_text: str, run: str) -> list[int]:
    return [int(e) for e in re.findall(rf"{run}: epoch (\d+)/\d+ ", log_text)]


@pytest.fixture(scope="module")
def resumed_run(tmp_path_factory) -> dict:
    """One run's branch of configs/smoke.yaml (its finetuning, inversions and STIR scores) run in a
    fresh directory; its finetuning is killed (SIGKILL) in the middle of epoch 1, then the same
    command runs again to the end."""
    root = tmp_path_factory.mktemp("killed")
    work = root / "run"
    t0 = time.time()
    killed_at, output = kill_in_epoch_1(work, SMOKE_CONFIG, KILLED_RUN)
    done = epochs_done(killed_at, KILLED_RUN)
    assert done, killed_at
    resume_states = list((work / "results" / ".resume" / KILLED_RUN).glob("*/state.pt"))
    assert len(resume_states) == 1, resume_states
    rerun = snakemake(work, "--cores", "2", *KILLED_TARGETS)
    print(f"{KILLED_RUN} killed after epoch {max(done)}; both runs {time.time() - t0:.0f} s")
    log = work / "results" / "logs" / "finetune" / f"{KILLED_RUN}.log"
    return {"work": work, "log": log, "last_done": max(done), "first_output": output, "rerun": rerun}


@pytest.mark.slow
def test_killed_training_resumes_bit_identical(resumed_run, smoke_run):
    work, last_done = resumed_run["work"], resumed_run["last_done"]
    text = resumed_run["log"].read_text()
    assert f"{KILLED_RUN}: resuming after epoch {last_done}" in text, text[-3000:]
    epochs = sorted((smoke_run / "results" / "runs" / KILLED_RUN / "checkpoints").glob("epoch_*.pt"))
    assert last_done < len(epochs) - 1, "the job was killed after its last epoch"
    for reference in epochs:
        resumed = work / "results" / "runs" / KILLED_RUN / "checkpoints" / reference.name
        assert checkpoint_differences(resumed, reference) == [], reference.name
    history = json.loads((work / "results" / "runs" / KILLED_RUN / "history.json").read_text())
    reference_history = json.loads((smoke_run / "results" / "runs" / KILLED_RUN / "history.json").read_text())
    strip = lambda h: [{k: v for k, v in rec.items() if k != "seconds"} for rec in h]  # noqa: E731
    assert strip(history) == strip(reference_history)


@pytest.mark.slow
def test_same_seed_and_config_give_the_same_scores(resumed_run, smoke_run):
    """Two runs of configs/smoke.yaml in two directories (one killed and resumed, and only the
    killed run's branch): its inversions and STIR scores are the same files, byte for byte."""
    for target in KILLED_TARGETS[1:]:
        inversions = sorted((smoke_run / target).parent.parent.joinpath("inversions", Path(target).stem).glob("*.h5"))
        for path in [smoke_run / target, *inversions]:
            rel = path.relative_to(smoke_run)
            assert (resumed_run["work"] / rel).read_bytes() == path.read_bytes(), rel


# --------------------------------------------------------------------------- corrupt inputs

def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


CORRUPT_INPUTS = {
    "dataset": lambda w: w / "data" / "digits" / "test.h5",
    "inversion": lambda w: sorted(w.glob("results/runs/*/inversions/epoch_002/*.h5"))[0],
    "checkpoint": lambda w: w / "results" / "runs" / "digits-scratch" / "checkpoints" / "epoch_001.pt",
    "summary": lambda w: w / "results" / "summary.nc",
    "history": lambda w: w / "results" / "runs" / "digits-pretrained" / "history.json",
}


@pytest.mark.parametrize("kind", list(CORRUPT_INPUTS))
def test_corrupt_input_stops_the_job_naming_the_file(kind, smoke_copy):
    work = smoke_copy
    bad = CORRUPT_INPUTS[kind](work)
    truncate(bad)
    before = output_files(work)
    proc = snakemake(work, "--cores", "1", check=False)
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0, text[-3000:]
    rel = str(bad.relative_to(work))
    messages = [line for line in text.splitlines() if line.startswith("stirflow: rule")]
    assert messages and all(rel in line for line in messages), (rel, messages, text[-3000:])
    assert bad.is_file(), "the bad input itself was removed"
    lost = before - output_files(work)
    assert lost <= failed_outputs(text), f"outputs of other jobs were removed: {sorted(lost - failed_outputs(text))}"


# --------------------------------------------------------------------------- non-finite losses

def test_non_finite_training_loss_stops_with_run_epoch_step(smoke_copy, tmp_path):
    work = smoke_copy
    config = write_config(tmp_path / "nan.yaml", finetune={"optimizer": {"lr": 1e12}})
    target = f"results/runs/{KILLED_RUN}/history.json"
    before = output_files(work)
    proc = snakemake(work, "--cores", "1", target, configfile=config, check=False)
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert re.search(rf"{KILLED_RUN}: non-finite training loss \(\S+\) at epoch 1, step \d+", text), text[-3000:]
    assert not (work / target).exists()
    written = [p for p in (work / "results" / "runs" / KILLED_RUN).rglob("epoch_*.pt") if p.name != "epoch_000.pt"]
    assert written == [], "checkpoints of a diverged run were written"
    new_resume = [d for d in (work / "results" / ".resume" / KILLED_RUN).iterdir()
                  if not (d / "epoch_001.pt").exists()]
    assert len(new_resume) == 1 and not list(new_resume[0].glob("epoch_00[1-9].pt"))
    assert before - output_files(work) <= failed_outputs(text)


def test_non_finite_inversion_loss_stops_with_run_epoch_step(smoke_copy):
    work = smoke_copy
    checkpoint = work / "results" / "runs" / KILLED_RUN / "checkpoints" / "epoch_002.pt"
    ckpt = torch.load(checkpoint, weights_only=True)
    ckpt["state_dict"] = {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v
                          for k, v in ckpt["state_dict"].items()}
    checkpoint.unlink()  # a new file: the resume directory's hard link keeps the good one
    torch.save(ckpt, checkpoint)
    inversion = sorted((work / "results" / "runs" / KILLED_RUN / "inversions" / "epoch_002").glob("*.h5"))[0]
    target = str(inversion.relative_to(work))
    proc = snakemake(work, "--cores", "1", target, check=False)
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert re.search(rf"{KILLED_RUN} epoch 2 .*inversion loss is not finite at step \d+", text), text[-3000:]
    assert not inversion.exists(), "an inversion of a NaN model was written"


# --------------------------------------------------------------------------- config errors

@pytest.mark.parametrize("changes,keys", [
    ({"stirr": {"steps": 3}, "stir": {"steps": "many", "blocks": [0]}, "compute": {"threads": 1.5}},
     ["unknown key stirr", "stir.steps", "stir.blocks", "compute.threads"]),
    ({"finetune": {"runs": [{"target": "mnist"}]}, "pretrain": {"dataset": "imagenet"}, "stir": {"blocks": [1, 3]}},
     ["finetune.runs.0.target", "mnist", "pretrain.dataset", "imagenet", "stir.blocks", "[3]"]),
], ids=["schema", "references"])
def test_config_errors_stop_before_any_job(changes, keys, tmp_path):
    config = write_config(tmp_path / "bad.yaml", **changes)
    work = tmp_path / "work"
    proc = snakemake(work, "--cores", "1", configfile=config, check=False)
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0
    for key in keys:
        assert key in text, (key, text[-3000:])
    assert not (work / "results").exists() and not (work / "data").exists()



# --------------------------------------------------------------------------- pretraining killed in a later epoch

@pytest.mark.slow
def test_pretraining_killed_in_a_later_epoch_resumes_bit_identical(tmp_path):
    """The pretrain job of configs/smoke.yaml killed (SIGKILL) in its last epoch, after a trained
    epoch whose optimizer and schedule state the resumption must restore, then run again: every
    checkpoint and the history are those of an uninterrupted run."""
    target = "results/pretrain/history.json"
    reference, work = tmp_path / "reference", tmp_path / "killed"
    snakemake(reference, "--cores", "2", target)
    log = work / "results" / "logs" / "pretrain" / "pretrain.log"
    epochs = yaml.safe_load(SMOKE_CONFIG.read_text())["pretrain"]["epochs"]
    killed_at, _ = kill_during(work, SMOKE_CONFIG, log, "pretrain.py", rf"pretrain: epoch {epochs} step \d+/\d+", target)
    assert epochs_done(killed_at, "pretrain") == list(range(epochs)) and epochs >= 2, killed_at  # epoch 1 was trained
    snakemake(work, "--cores", "2", target)
    assert f"pretrain: resuming after epoch {epochs - 1}" in log.read_text()
    checkpoints = sorted((reference / "results" / "pretrain" / "checkpoints").glob("epoch_*.pt"))
    assert len(checkpoints) == epochs + 1
    for ref in checkpoints:
        assert checkpoint_differences(work / "results" / "pretrain" / "checkpoints" / ref.name, ref) == [], ref.name
    strip = lambda h: [{k: v for k, v in rec.items() if k != "seconds"} for rec in h]  # noqa: E731
    history, reference_history = (json.loads((w / target).read_text()) for w in (work, reference))
    assert strip(history) == strip(reference_history)
