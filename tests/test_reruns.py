"""Incremental reruns: a changed setting or library module reruns exactly the jobs that depend on it.

Every test starts from the session's completed smoke run (a private copy). What should rerun is
computed, never typed in: the jobs whose own settings change (each case names the rule, or the
rule and wildcard, whose ``params:`` hold the setting), the jobs whose outputs do not exist yet
(a new run or block), and every job downstream of those in the DAG that Snakemake builds for the
changed config (a forced dry run). What does rerun is read from a dry run's job list.
"""

from __future__ import annotations

import re
import shutil
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import xarray as xr
from PIL import Image

from conftest import REPO, SMOKE_CONFIG, write_config
from stirflow.workflow import UNTRACKED_MODULES, behaviour_source, script_modules
from conftest import snakemake as run_snakemake

# --------------------------------------------------------------------------- dry-run job lists

JOB_HEADER = re.compile(r"^(\s*)(?:local)?rule (\w+):$")  # indented inside a group job


@dataclass(frozen=True)
class Job:
    """One job of a dry run, identified by its rule and output files."""

    rule: str
    output: tuple[str, ...]
    input: tuple[str, ...] = field(default=(), compare=False)
    wildcards: dict = field(default_factory=dict, compare=False, hash=False)
    reason: str = field(default="", compare=False)

    def __str__(self):
        wc = ",".join(f"{k}={v}" for k, v in self.wildcards.items())
        return f"{self.rule}[{wc}]" if wc else self.rule


def parse_jobs(text: str) -> set[Job]:
    """The jobs a (non-quiet) dry run printed: rule, input, output, wildcards and reason of each."""
    blocks: list[dict] = []
    current, indent = None, ""
    for line in text.splitlines():
        m = JOB_HEADER.match(line)
        if m:
            indent, current = m.group(1) + "    ", {"rule": m.group(2)}
            blocks.append(current)
        elif current is not None and line.startswith(indent) and ": " in line:
            key, value = line.strip().split(": ", 1)
            current[key] = value
        else:
            current = None

    def files(value):
        return tuple(v for v in (value or "").split(", ") if v)

    jobs = set()
    for b in blocks:
        wildcards = dict(kv.split("=", 1) for kv in files(b.get("wildcards")))
        jobs.add(Job(b["rule"], files(b.get("output")), files(b.get("input")), wildcards, b.get("reason", "")))
    return jobs


def snakemake(workdir: Path, *args, configfile: Path | None = SMOKE_CONFIG, snakefile: Path = REPO / "Snakefile",
              check: bool = True):
    """conftest's snakemake() for the repository's Snakefile, or for a copy of the workflow."""
    if snakefile == REPO / "Snakefile":
        return run_snakemake(workdir, *args, configfile=configfile, check=check)
    import os
    import subprocess
    import sys

    cmd = [str(Path(sys.executable).parent / "snakemake"), "--snakefile", str(snakefile), "--directory", str(workdir),
           "--workflow-profile", str(snakefile.parent / "profiles" / "default")]
    cmd += ["--configfile", str(configfile)] if configfile else []
    proc = subprocess.run(cmd + list(args), capture_output=True, text=True, timeout=900,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{proc.stdout[-6000:]}\n{proc.stderr[-6000:]}")
    return proc


def dry_run(workdir: Path, configfile: Path = SMOKE_CONFIG, *args, **kwargs) -> set[Job]:
    proc = snakemake(workdir, "-n", *args, configfile=configfile, **kwargs)
    jobs = parse_jobs(proc.stdout)
    if not jobs:
        assert "Nothing to be done" in proc.stdout + proc.stderr, proc.stdout[-3000:]
    return jobs


def downstream(seeds: set[Job], dag: set[Job]) -> set[Job]:
    """``seeds`` and every job of ``dag`` that consumes, directly or not, one of their outputs."""
    consumers = defaultdict(set)
    for job in dag:
        for f in job.input:
            consumers[f].add(job)
    out, todo = set(seeds), list(seeds)
    while todo:
        for f in todo.pop().output:
            for c in consumers[f] - out:
                out.add(c)
                todo.append(c)
    return out


def expected_reruns(dag: set[Job], workdir: Path, changed: Callable[[Job], bool]) -> set[Job]:
    """Jobs with changed params (``changed``), jobs with missing outputs, and all jobs downstream."""
    seeds = {j for j in dag if changed(j)}
    seeds |= {j for j in dag if j.output and not all((workdir / f).exists() for f in j.output)}
    return downstream(seeds, dag)


def by_rule(jobs) -> dict[str, int]:
    return dict(sorted(Counter(j.rule for j in jobs).items()))


def assert_same_jobs(got: set[Job], want: set[Job], what: str) -> None:
    extra = sorted(map(str, got - want))
    missing = sorted(map(str, want - got))
    assert not extra and not missing, (
        f"{what}: would run {by_rule(got)}, expected {by_rule(want)}\n"
        f"  unexpected: {extra[:10]}\n  missing: {missing[:10]}\n"
        + "\n".join(f"  {j}: {j.reason}" for j in sorted(got - want, key=str)[:5]))
    print(f"{what}: {by_rule(got)}")


def rule_is(rule: str, **wildcards) -> Callable[[Job], bool]:
    return lambda j: j.rule == rule and all(j.wildcards.get(k) == v for k, v in wildcards.items())


@pytest.fixture(scope="module")
def base(smoke_run, tmp_path_factory) -> Path:
    """A copy of the completed smoke run that only dry runs use (they change nothing)."""
    dst = tmp_path_factory.mktemp("reruns") / "run"
    shutil.copytree(smoke_run, dst, symlinks=True)
    return dst


@pytest.fixture(scope="module")
def smoke_dag(base) -> set[Job]:
    """Every job of the smoke config, with its inputs and outputs (a forced dry run)."""
    return dry_run(base, SMOKE_CONFIG, "--forceall")


# --------------------------------------------------------------------------- config changes

def test_completed_run_is_up_to_date(base, smoke_dag):
    assert dry_run(base) == set()
    assert {"prepare_dataset", "pretrain", "finetune", "invert", "stir_scores", "robustness", "corrupt_dataset",
            "aggregate", "figures", "all"} <= set(by_rule(smoke_dag)), by_rule(smoke_dag)


def test_key_order_and_spelled_out_defaults_change_nothing(base, tmp_path):
    """The same settings written differently: keys sorted (write_config dumps them sorted) and
    defaults given explicitly."""
    config = write_config(tmp_path / "same.yaml", stir={"seed": 0, "start": "noise"}, figures={"dpi": 150},
                          track_code_changes=True)
    assert dry_run(base, config) == set()


@pytest.mark.parametrize("change", [{"download": {"timeout": 5, "retries": 1, "mirror": "http://127.0.0.1:1/"}},
                                    {"compute": {"train_threads": 1, "threads": 2}}],
                         ids=["download settings, offline data", "thread counts"])
def test_settings_that_cannot_change_results_rerun_nothing(change, base, tmp_path):
    assert dry_run(base, write_config(tmp_path / "same.yaml", **change)) == set()


# (change to configs/smoke.yaml, the jobs whose params hold the changed setting)
STAGE_CHANGES = {
    "dataset size": ({"datasets": {"shapes": {"n_train": 256}}}, rule_is("prepare_dataset", dataset="shapes")),
    "pretraining": ({"pretrain": {"optimizer": {"lr": 0.001}}}, rule_is("pretrain")),
    "finetuning": ({"finetune": {"optimizer": {"lr": 0.02}}}, rule_is("finetune")),
    # the convergence check inverts with factor x stir.steps: it reruns with the inversions
    "stir steps": ({"stir": {"steps": 30}}, lambda j: j.rule in ("invert", "invert_check")),
    "corruption list": ({"robustness": {"corruptions": ["contrast"]}}, rule_is("corrupt_dataset")),
    "plot option": ({"figures": {"dpi": 60}}, rule_is("figures")),
}


@pytest.mark.parametrize("stage", list(STAGE_CHANGES))
def test_changed_setting_reruns_only_dependent_jobs(stage, base, smoke_dag, tmp_path):
    change, changed = STAGE_CHANGES[stage]
    config = write_config(tmp_path / "changed.yaml", **change)
    got = dry_run(base, config)
    want = expected_reruns(smoke_dag, base, changed)
    assert want != smoke_dag and {j for j in smoke_dag if changed(j)}, "the case must leave some jobs alone"
    assert_same_jobs(got, want, stage)
    for job in got:
        if changed(job):
            assert job.reason.startswith("Params have changed"), (str(job), job.reason)
        else:
            assert "updated by another job" in job.reason, (str(job), job.reason)


def test_new_finetuning_target_runs_only_new_jobs(base, tmp_path):
    smoke = write_config(tmp_path / "smoke.yaml")
    import yaml

    runs = yaml.safe_load(smoke.read_text())["finetune"]["runs"]
    config = write_config(tmp_path / "more.yaml", finetune={"runs": runs + [{"target": "shapes", "init": "pretrained"}]})
    dag = dry_run(base, config, "--forceall")
    got = dry_run(base, config)
    # new jobs: those whose outputs do not exist; aggregate's params list the runs
    want = expected_reruns(dag, base, rule_is("aggregate"))
    assert_same_jobs(got, want, "new finetuning target")
    assert {j.rule for j in got} >= {"finetune", "corrupt_dataset", "invert", "stir_scores", "robustness"}
    assert all(j.wildcards.get("run", "shapes-pretrained") == "shapes-pretrained" for j in got), sorted(map(str, got))
    assert not any(j.rule in ("pretrain", "prepare_dataset") for j in got)


def read_summary(workdir: Path) -> xr.Dataset:
    with xr.open_dataset(workdir / "results" / "summary.nc", engine="h5netcdf") as ds:
        return ds.load()


def mtimes(workdir: Path) -> dict[str, float]:
    root = workdir / "results"
    return {str(p.relative_to(workdir)): p.stat().st_mtime for p in root.rglob("*")
            if p.is_file() and "logs" not in p.parts and "benchmarks" not in p.parts}


def png_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as im:
        return im.size


@pytest.mark.slow
def test_rerun_after_changes_and_adding_a_block(smoke_copy, tmp_path):
    """A real run after changing the corruption list, a plot option and the STIR blocks (block 2 dropped,
    as if it had never been inverted); the summary reflects the change. Adding block 2 back runs
    only its inversions, the scores and what follows."""
    work = smoke_copy
    before = read_summary(work)
    figure = next((work / "results" / "figures").glob("*.png"))
    old_size = png_size(figure)
    dropped = sorted(work.glob("results/runs/*/inversions/*/blocks_02.h5"))
    assert dropped, "no inversion files of block 2"
    for path in dropped:
        path.unlink()
    # the convergence check off as well: its two inversions at 4x the steps would be a third of the rerun
    change = {"robustness": {"corruptions": ["contrast"]}, "figures": {"dpi": 75}, "stir": {"blocks": [1]},
              "convergence": {"check": False}}
    config = write_config(tmp_path / "changed.yaml", **change)
    dag = dry_run(work, config, "--forceall")
    got = dry_run(work, config)
    params_change = lambda j: j.rule in ("corrupt_dataset", "stir_scores", "figures")  # noqa: E731
    assert_same_jobs(got, expected_reruns(dag, work, params_change), "corruptions + dpi + blocks [1]")
    assert "invert" not in by_rule(got) and "finetune" not in by_rule(got)

    untouched = {k: v for k, v in mtimes(work).items()
                 if not any(f in k for f in ("/robustness/", "/stir/", "/corrupted/", "summary.nc", "/figures/",
                                              "/tables/", "/report/"))}
    t0 = time.time()
    snakemake(work, "--cores", "2", configfile=config)
    print(f"rerun: {time.time() - t0:.1f} s")
    assert dry_run(work, config) == set(), "a second run after the change must have nothing to do"
    after_mtimes = mtimes(work)
    assert {k: after_mtimes[k] for k in untouched} == untouched, "files of jobs that did not need to run changed"

    after = read_summary(work)
    assert list(after.corruption.values) == ["contrast"]
    assert list(after.layer.values) == [1]
    # what did not change is the same numbers: a selection of the summary before
    for name in ("forgetting", "learning", "flow", "cka"):
        sel = {"layer": [1]} if "layer" in before[name].dims else {"layer_ref": [1], "layer_eval": [1]}
        np.testing.assert_array_equal(after[name].values, before[name].sel(sel).values, err_msg=name)
    np.testing.assert_array_equal(after["clean_score"].values, before["clean_score"].values)
    np.testing.assert_array_equal(after["corrupted_score"].values,
                                  before["corrupted_score"].sel(corruption=["contrast"]).values)
    new_size = png_size(figure)
    assert new_size != old_size and abs(new_size[0] / old_size[0] - 75 / 150) < 0.05, (old_size, new_size)

    # adding block 2 back: its inversions (missing) and the scores (params: blocks), then what follows
    config2 = write_config(tmp_path / "blocks.yaml", **{**change, "stir": {"blocks": "all"}})
    dag2 = dry_run(work, config2, "--forceall")
    got2 = dry_run(work, config2)
    rescored = lambda j: j.rule in ("stir_scores", "stir_scores_check")  # noqa: E731  (params: blocks)
    assert_same_jobs(got2, expected_reruns(dag2, work, rescored), "block 2 added")
    assert {j.wildcards.get("blocks") for j in got2 if j.rule == "invert"} == {"02"}


# --------------------------------------------------------------------------- library code

def declared_code(root: Path) -> dict[str, str]:
    """{rule: the script whose modules its ``code`` param hashes} from the rule files."""
    out = {}
    for path in sorted((root / "rules").glob("*.smk")):
        # some inside an "if"; a rule made in a loop (one per architecture) is `rule:` with `name:`
        parts = re.split(r"^[ \t]*rule(?: (\w+))?:\n", path.read_text(), flags=re.M)
        for name, body in zip(parts[1::2], parts[2::2]):
            if name is None:
                name = re.match(r"\s*name:\s*\n\s*\"(\w+)\"", body).group(1)  # the default model's name
            script = re.search(r"script:\s*\n\s*\"\.\./scripts/(\w+)\.py\"", body)
            code = re.search(r"code=code\(\"(\w+)\"\)", body)
            if script:
                out[name] = code.group(1) if code else None
    return out


def test_each_rule_tracks_the_modules_its_script_uses():
    rules = declared_code(REPO)
    assert {"pretrain", "finetune", "aggregate"} <= set(rules)
    for rule, script in rules.items():
        assert script == re.search(rf"(rule {rule}:|\"{rule}\" if).*?scripts/(\w+)\.py", "".join(
            p.read_text() for p in sorted((REPO / "rules").glob("*.smk"))), re.S).group(2), rule


def test_script_modules_follow_imports_through_the_library():
    """What a script uses, by hand: the modules it imports and those they import (also inside
    functions), without the untracked glue (workflow, config)."""
    scripts = REPO / "scripts"
    # the open questions' figures draw the findings' run statistics and the correlation table's
    # measures (stirflow.analysis), so the figures track what aggregate tracks, and plots
    assert script_modules(scripts / "figures.py") == script_modules(scripts / "aggregate.py") | {"plots"}
    assert {"findings", "analysis", "statistics", "catalog"} <= script_modules(scripts / "aggregate.py")
    assert script_modules(scripts / "invert.py") == {"inversion", "models", "checkpoints", "data", "files"}
    # scoring loads models through stirflow.loading, not the command line (whose figures and tables
    # would make every score depend on plots, analysis and findings)
    assert script_modules(scripts / "stir_scores.py") == {"comparison", "invariance", "cka", "inversion", "loading",
                                                          "models", "checkpoints", "data", "files"}
    assert "corruptions" in script_modules(scripts / "robustness.py")  # through robustness.make_corrupted_set
    assert not script_modules(scripts / "figures.py") & UNTRACKED_MODULES


def test_behaviour_source_ignores_comments_and_docstrings(tmp_path):
    a, b, c = (tmp_path / f"{k}.py" for k in "abc")
    a.write_text('"""Module."""\nX = 1\n\n\ndef f(x):\n    """Doc."""\n    return x + X  # why\n')
    b.write_text('"""Another text."""\nX = 1  # a comment\n\ndef f(x):\n    """Other doc."""\n\n    return x + X\n')
    c.write_text('"""Module."""\nX = 2\n\n\ndef f(x):\n    """Doc."""\n    return x + X  # why\n')
    assert behaviour_source(a) == behaviour_source(b)
    assert behaviour_source(a) != behaviour_source(c)


def test_a_file_edited_in_place_is_analysed_again(tmp_path):
    """What is derived from a file is cached for building the DAG: an edit within the same second and
    to the same length (a digit) must still be seen, and so must a new stirflow import."""
    module = tmp_path / "m.py"
    module.write_text("X = 1\n")
    before, imports = behaviour_source(module), script_modules(module)
    module.write_text("X = 2\n")
    assert behaviour_source(module) != before
    module.write_text("from stirflow import cka\nX = 1\n")
    assert imports == set() and script_modules(module) == {"cka"}
    module.write_text("X = 1\n")
    assert behaviour_source(module) == before


def copy_workflow(dst: Path) -> Path:
    """A copy of the workflow and its library, to edit a module without touching the real one."""
    dst.mkdir()
    shutil.copy2(REPO / "Snakefile", dst / "Snakefile")
    shutil.copy2(REPO / "config.yaml", dst / "config.yaml")
    for name in ("rules", "scripts", "src", "profiles", "report", "envs"):
        shutil.copytree(REPO / name, dst / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    return dst


@pytest.fixture(scope="module")
def workflow_copy(tmp_path_factory) -> Path:
    return copy_workflow(tmp_path_factory.mktemp("library") / "workflow")


def rules_using(module: str, root: Path) -> set[str]:
    return {rule for rule, script in declared_code(root).items()
            if module in script_modules(root / "scripts" / f"{script}.py")}


def edit(path: Path) -> str:
    """Append a statement to a module (a change of what it does); returns the old text."""
    text = path.read_text()
    path.write_text(text + "\n_EDITED = True\n")
    return text


def test_comment_and_docstring_edits_rerun_nothing(base, workflow_copy):
    path = workflow_copy / "src" / "stirflow" / "analysis.py"
    text = path.read_text()
    path.write_text(text.replace('"""', '"""Edited. ', 1) + "\n# a comment\n")
    try:
        assert dry_run(base, snakefile=workflow_copy / "Snakefile") == set()
    finally:
        path.write_text(text)


def test_copy_of_the_library_changes_nothing(base, workflow_copy):
    assert dry_run(base, snakefile=workflow_copy / "Snakefile") == set()


@pytest.mark.parametrize("module", ["plots", "analysis", "corruptions", "cka"])
def test_library_change_reruns_rules_that_use_it(module, base, smoke_dag, workflow_copy):
    path = workflow_copy / "src" / "stirflow" / f"{module}.py"
    rules = rules_using(module, workflow_copy)
    assert rules, module
    text = edit(path)
    try:
        got = dry_run(base, snakefile=workflow_copy / "Snakefile")
    finally:
        path.write_text(text)
    assert_same_jobs(got, expected_reruns(smoke_dag, base, lambda j: j.rule in rules), f"edit of {module}.py")
    for job in got:  # a job with rerunning inputs is reported for those alone
        if job.rule in rules and "updated by another job" not in job.reason:
            assert job.reason.startswith("Params have changed"), (str(job), job.reason)


def test_code_tracking_can_be_switched_off(smoke_copy, smoke_dag, tmp_path):
    """track_code_changes: false makes library edits invisible. Switching it changes every rule's
    params once; --touch accepts that without recomputing anything."""
    workflow = copy_workflow(tmp_path / "workflow")
    snakefile = workflow / "Snakefile"
    off = ("--config", "track_code_changes=False")  # Snakemake reads True/False here, not YAML
    summary = smoke_copy / "results" / "summary.nc"
    content = summary.read_bytes()
    snakemake(smoke_copy, "--touch", "--cores", "1", *off, snakefile=snakefile)
    assert summary.read_bytes() == content
    assert dry_run(smoke_copy, SMOKE_CONFIG, *off, snakefile=snakefile) == set()
    edit(workflow / "src" / "stirflow" / "plots.py")
    assert dry_run(smoke_copy, SMOKE_CONFIG, *off, snakefile=snakefile) == set(), "an untracked edit reran jobs"
    # switched on again, the recorded "untracked" differs from every hash: everything would rerun
    assert_same_jobs(dry_run(smoke_copy, snakefile=snakefile), smoke_dag, "tracking switched on again")
