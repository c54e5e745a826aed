"""Snakemake on a real (single-node, test) SLURM cluster, and the SLURM profile.

The cluster comes from tests/slurm_cluster.py (Debian's slurm-wlm + munge,
installed with apt-get if missing). Its node has no GPUs, so the profile test
runs a copy of profiles/slurm with every `gpu` set to 0 (see adapt_profile
for why `--set-resources rule:gpu=0` on the command line cannot do that).
"""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip(
    "snakemake_executor_plugin_slurm",
    reason="snakemake-executor-plugin-slurm is not installed (pip install -e '.[test]')",
)

from slurm_cluster import adapt_profile, slurm_cluster  # noqa: F401  (fixture)

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = Path(sys.executable).parent / "snakemake"
PIPELINE_RULES = [
    "prepare_dataset", "prepare_corruption_set", "corrupt_dataset", "pretrain",
    "finetune", "invert", "stir_scores", "robustness", "adversarial", "aggregate", "figures",
]
GPU_RULES = {"pretrain", "finetune", "invert", "stir_scores", "robustness", "adversarial"}

# Writes "<hostname> <SLURM_JOB_ID or nothing>" (Snakemake shell braces doubled).
STAMP = 'echo "$(hostname) ${{SLURM_JOB_ID:-}}"'


def _run_snakemake(args: list[str], cwd: Path, env: dict, log: Path) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [str(SNAKEMAKE), *args], cwd=cwd, env=env, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=900,
    )
    log.write_text(proc.stdout)
    return proc


def _stamp(path: Path) -> tuple[str, str]:
    """(hostname, SLURM job id or '') from a file written by STAMP."""
    fields = path.read_text().split()
    return fields[0], (fields[1] if len(fields) > 1 else "")


def _finished_jobs(cluster) -> dict[str, tuple[str, str, str, str]]:
    """job id -> (comment, min memory, CPUs, state) for every job the cluster remembers."""
    out = cluster.run("squeue", "-h", "-t", "all", "-o", "%i|%k|%m|%C|%T").stdout
    jobs = {}
    for line in out.splitlines():
        jobid, comment, mem, cpus, state = line.split("|")
        jobs[jobid] = (comment, mem, cpus, state)
    return jobs


def _sbatch_calls(log_text: str) -> list[str]:
    return [ln for ln in log_text.splitlines() if ln.startswith("sbatch call:")]


# --------------------------------------------------------------------------- plain workflow


TINY_SNAKEFILE = f"""\
rule all:
    input: "combined.txt"

rule part:
    output: "part_{{i}}.txt"
    resources: mem_mb=100, runtime=5
    shell: '{STAMP} > {{output}}'

rule combine:
    input: expand("part_{{i}}.txt", i=[1, 2])
    output: "combined.txt"
    resources: mem_mb=100, runtime=5
    shell: 'cat {{input}} > {{output}}; {STAMP} >> {{output}}'
"""


@pytest.mark.slurm
def test_snakemake_jobs_run_under_slurm(slurm_cluster, tmp_path):  # noqa: F811
    (tmp_path / "Snakefile").write_text(TINY_SNAKEFILE)
    proc = _run_snakemake(
        [
            "--executor", "slurm", "--jobs", "4",
            "--default-resources", f"slurm_partition={slurm_cluster.partition}",
            # sacct exists but there is no accounting database: ask squeue.
            "--slurm-status-command", "squeue",
            "--slurm-init-seconds-before-status-checks", "2",
            "--workflow-profile", "none", "--verbose",
        ],
        cwd=tmp_path, env=slurm_cluster.env, log=tmp_path / "snakemake.log",
    )
    assert proc.returncode == 0, proc.stdout[-5000:] + "\n" + slurm_cluster.logs()

    host1, job1 = _stamp(tmp_path / "part_1.txt")
    host2, job2 = _stamp(tmp_path / "part_2.txt")
    combined = (tmp_path / "combined.txt").read_text().splitlines()
    assert len(combined) == 3
    assert combined[:2] == [f"{host1} {job1}", f"{host2} {job2}"]
    host3, job3 = combined[2].split()
    # Every job ran inside its own SLURM job on the cluster's node.
    assert job1 and job2 and job3 and len({job1, job2, job3}) == 3
    assert {host1, host2, host3} == {slurm_cluster.nodename}
    jobs = _finished_jobs(slurm_cluster)
    for jobid, comment in ((job1, "rule_part_wildcards_"), (job2, "rule_part_wildcards_"),
                           (job3, "rule_combine")):
        assert jobs[jobid][0].startswith(comment)
        assert jobs[jobid][1] == "100M"
        assert jobs[jobid][3] == "COMPLETED"
    calls = _sbatch_calls(proc.stdout)
    assert len(calls) == 3
    assert all(f"-p {slurm_cluster.partition}" in c and "--gpus" not in c for c in calls)


# --------------------------------------------------------------------------- the profile

# The pipeline's rule names, each job writing STAMP; `invert` grouped like the
# real rule, aggregate/figures local like the real Snakefile declares them, and
# stir_scores failing on its first attempt to exercise `retries` and the
# "... * attempt" resource expressions.
PIPELINE_SNAKEFILE = f"""\
EPOCHS = [0, 1]
LAYERS = [1, 2, 3, 4]
localrules: aggregate, figures

rule all:
    input: "figures.txt"

rule prepare_dataset:
    output: "data.txt"
    shell: '{STAMP} > {{output}}'

rule corrupt_dataset:
    input: "data.txt"
    output: "corrupt.txt"
    shell: '{STAMP} > {{output}}'

rule pretrain:
    input: "data.txt"
    output: "pretrain.txt"
    shell: '{STAMP} > {{output}}'

rule finetune:
    input: "pretrain.txt"
    output: "finetune_{{e}}.txt"
    shell: '{STAMP} > {{output}}'

rule invert:
    input: "finetune_{{e}}.txt"
    output: "invert_{{e}}_{{l}}.txt"
    group: "invert"
    shell: '{STAMP} > {{output}}'

rule stir_scores:
    input: expand("invert_{{e}}_{{l}}.txt", e=EPOCHS, l=LAYERS)
    output: "stir_scores.txt"
    shell: 'if [ ! -e first_attempt_done ]; then touch first_attempt_done; exit 1; fi; {STAMP} > {{output}}'

rule robustness:
    input: "finetune_{{e}}.txt", "corrupt.txt"
    output: "robustness_{{e}}.txt"
    shell: '{STAMP} > {{output}}'

rule aggregate:
    input: "stir_scores.txt", expand("robustness_{{e}}.txt", e=EPOCHS)
    output: "aggregate.txt"
    shell: '{STAMP} > {{output}}'

rule figures:
    input: "aggregate.txt"
    output: "figures.txt"
    shell: '{STAMP} > {{output}}'
"""


@pytest.mark.slurm
def test_slurm_profile_runs_on_test_cluster(slurm_cluster, tmp_path):  # noqa: F811
    (tmp_path / "Snakefile").write_text(PIPELINE_SNAKEFILE)
    profile = adapt_profile(
        REPO / "profiles" / "slurm", tmp_path / "profiles" / "slurm-test",
        partition=slurm_cluster.partition, mem_mb="100 * attempt",
        cores=slurm_cluster.cpus,
    )
    proc = _run_snakemake(
        ["--workflow-profile", str(profile), "--verbose"],
        cwd=tmp_path, env=slurm_cluster.env, log=tmp_path / "snakemake.log",
    )
    assert proc.returncode == 0, proc.stdout[-5000:] + "\n" + slurm_cluster.logs()

    stamps = {p.stem: _stamp(p) for p in tmp_path.glob("*.txt")}
    remote = {name: s for name, s in stamps.items()
              if not name.startswith(("aggregate", "figures"))}
    assert len(remote) == 1 + 1 + 1 + 2 + 8 + 1 + 2
    assert all(jobid for _, jobid in remote.values()), remote
    # localrules: run by the main Snakemake process, not through sbatch.
    assert stamps["aggregate"][1] == "" and stamps["figures"][1] == ""

    # group-components invert=8: the 8 inversions shared one SLURM job, which
    # fits the node (cores caps the CPUs of a group submission).
    invert_jobs = {jobid for name, (_, jobid) in remote.items() if name.startswith("invert_")}
    assert len(invert_jobs) == 1
    jobs = _finished_jobs(slurm_cluster)
    (invert_job,) = invert_jobs
    assert jobs[invert_job][0] == "rule_invert_invert"
    assert int(jobs[invert_job][2]) <= slurm_cluster.cpus

    # retries: 1 and "100 * attempt": the retry asked for twice the memory.
    stir = sorted((int(j), v) for j, v in jobs.items() if v[0] == "rule_stir_scores")
    assert [(v[1], v[3]) for _, v in stir[-2:]] == [("100M", "FAILED"), ("200M", "COMPLETED")]
    assert str(stir[-1][0]) == stamps["stir_scores"][1]

    calls = _sbatch_calls(proc.stdout)
    # gpu: 0 -> no --gpus; the profile's log directory is used.
    assert calls and all("--gpus" not in c for c in calls)
    assert all(f"--output {tmp_path}/logs/slurm/" in c for c in calls)
    # Logs of failed jobs are kept.
    assert (tmp_path / "logs" / "slurm" / "rule_stir_scores" / f"{stir[-2][0]}.log").exists()


def _parse_profile_args(workdir: Path, argv: list[str]):
    """Snakemake's own command-line parsing, profiles included, run in workdir."""
    code = textwrap.dedent(
        """
        import json, sys
        from snakemake.cli import parse_args
        _, a = parse_args(sys.argv[1:])
        setres = {r: {k: v.raw for k, v in res.items()}
                  for r, res in (a.set_resources or {}).items()}
        print(json.dumps({
            "executor": a.executor, "jobs": a.jobs, "retries": a.retries,
            "latency_wait": a.latency_wait, "cores": a.cores,
            "keep_going": a.keep_going, "rerun_incomplete": a.rerun_incomplete,
            "show_failed_logs": a.show_failed_logs, "printshellcmds": a.printshellcmds,
            "rerun_triggers": sorted(t.name.lower() for t in a.rerun_triggers),
            "group_components": a.group_components,
            "set_resource_scopes": dict(a.set_resource_scopes),
            "slurm_logdir": str(getattr(a, "slurm_logdir", "")),
            "slurm_status_command": str(getattr(a, "slurm_status_command", "")),
            "set_resources": setres,
        }))
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, *argv], cwd=workdir, text=True,
        capture_output=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    import json

    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_profiles_parse(tmp_path):
    """Both profiles parse with Snakemake 9 and say what they are meant to."""
    (tmp_path / "Snakefile").write_text("rule all:\n    output: 'x'\n    shell: 'touch x'\n")
    for name in ("default", "slurm"):
        dst = tmp_path / "profiles" / name
        dst.mkdir(parents=True)
        (dst / "config.yaml").write_text((REPO / "profiles" / name / "config.yaml").read_text())

    local = _parse_profile_args(tmp_path, [])  # profiles/default is picked up by itself
    assert local["cores"] >= 1  # `cores: all`, resolved to this machine's CPUs
    assert local["printshellcmds"] and local["rerun_incomplete"] and local["show_failed_logs"]
    assert local["keep_going"] is False
    assert local["rerun_triggers"] == ["code", "input", "mtime", "params", "software_env"]

    slurm = _parse_profile_args(tmp_path, ["--workflow-profile", "profiles/slurm"])
    assert slurm["executor"] == "slurm" and slurm["jobs"] == 100 and slurm["retries"] == 1
    assert slurm["latency_wait"] >= 30
    assert slurm["slurm_status_command"] == "squeue"
    assert slurm["slurm_logdir"] == "logs/slurm"
    assert slurm["group_components"] == {"invert": 8}
    assert slurm["set_resource_scopes"] == {"gpu": "local"}
    setres = slurm["set_resources"]
    assert set(setres) == set(PIPELINE_RULES)
    for rule in PIPELINE_RULES:
        assert setres[rule].get("gpu", 0) == (1 if rule in GPU_RULES else 0), rule
        assert re.fullmatch(r"\d+ \* attempt", str(setres[rule]["mem_mb"])), rule
        assert re.fullmatch(r"\d+ \* attempt", str(setres[rule]["runtime"])), rule

    # Why tests adapt a copy of the profile instead of overriding gpu on the
    # command line: a command-line --set-resources replaces the whole key.
    overridden = _parse_profile_args(
        tmp_path, ["--workflow-profile", "profiles/slurm", "--set-resources", "invert:gpu=0"]
    )
    assert overridden["set_resources"] == {"invert": {"gpu": 0}}
