"""A throw-away single-node SLURM cluster on this machine, for tests.

Debian's ``slurm-wlm`` and ``munge`` packages are installed with apt-get when
``slurmctld`` is missing. Configuration, state, spool, pid and log files all
live in one temporary directory; daemons and clients find the configuration
through the ``SLURM_CONF`` environment variable, so ``/etc/slurm`` is never
written. ``<dir>/bin`` holds wrappers of the client commands (srun, sbatch,
squeue, ...) that restore ``SLURM_CONF`` when a caller has dropped it (the
Snakemake slurm-jobstep plugin does, for its srun inside each job); the
cluster's ``env`` puts them first on PATH. The node is this host with its
real CPU count and memory (from ``slurmd -C``) and advertises no GPUs (no
GRES) unless asked for fake ones.

Use from pytest::

    from slurm_cluster import slurm_cluster  # noqa: F401  (the fixture)

    @pytest.mark.slurm
    def test_x(slurm_cluster):
        subprocess.run(["sbatch", ...], env=slurm_cluster.env)

or by hand::

    python tests/slurm_cluster.py up      # prints `export SLURM_CONF=... PATH=...`
    python tests/slurm_cluster.py status
    python tests/slurm_cluster.py down

Only the daemons started here are stopped again (by the PIDs they wrote).
``munged`` is shared by every user of munge on the machine: it is started
only if it is not running, and stopped only by the cluster that started it,
once no other cluster started from this module still uses it.

Needs root (apt-get, and slurmd runs jobs as the submitting user).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

PARTITION = "debug"
CLUSTER_NAME = "stirflowtest"
MUNGE_KEY = Path("/etc/munge/munge.key")
MUNGE_RUN_DIR = Path("/run/munge")
MUNGE_PIDFILE = MUNGE_RUN_DIR / "munged.pid"
# Shared between every cluster started from this module on this machine
# (pytest-xdist workers, a manual `up`): who started munged, who still uses it.
LOCK_FILE = Path(tempfile.gettempdir()) / "stirflow-slurm.lock"
MUNGE_STATE_FILE = Path(tempfile.gettempdir()) / "stirflow-slurm-munge.json"
DEFAULT_MANUAL_ROOT = Path(tempfile.gettempdir()) / "stirflow-slurm"
STATE_NAME = "cluster.json"


class SlurmUnavailable(RuntimeError):
    """SLURM is not installed and cannot be installed here (no apt-get)."""


class SlurmStartError(RuntimeError):
    """SLURM is installed but the test cluster did not come up."""


# --------------------------------------------------------------------------- helpers


@contextlib.contextmanager
def _machine_lock() -> Iterator[None]:
    LOCK_FILE.touch(exist_ok=True)
    with open(LOCK_FILE, "r+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie is not alive for our purposes.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _read_pid(pidfile: Path) -> int | None:
    try:
        return int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return None


def _wait_pidfile(pidfile: Path, timeout: float) -> int | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pid = _read_pid(pidfile)
        if pid and _pid_alive(pid):
            return pid
        time.sleep(0.1)
    return None


def _stop_pid(pid: int | None, timeout: float = 15.0) -> None:
    """SIGTERM one process we started, wait, SIGKILL if it does not go."""
    if not _pid_alive(pid):
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _pid_alive(pid):
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and _pid_alive(pid):
        time.sleep(0.1)


def _run(cmd: list[str], env: dict | None = None, timeout: float = 60, check=True):
    return subprocess.run(
        cmd, env=env, check=check, timeout=timeout, text=True, capture_output=True
    )


def _tail(path: Path, n: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------- install


def ensure_installed(log=print) -> float:
    """Install slurm-wlm and munge with apt-get if slurmctld is missing.

    Returns the seconds spent installing (0 when nothing was installed).
    Raises SlurmUnavailable when apt-get itself is not available.
    """
    if shutil.which("slurmctld") and shutil.which("munged"):
        return 0.0
    apt = shutil.which("apt-get")
    if apt is None:
        raise SlurmUnavailable(
            "slurmctld is not installed and apt-get is not available to install "
            "slurm-wlm and munge; install SLURM (slurmctld, slurmd, client tools) "
            "and munge by hand to run the SLURM tests"
        )
    if os.geteuid() != 0:
        raise SlurmStartError(
            "slurmctld is not installed; installing slurm-wlm and munge with "
            "apt-get needs root (run the tests as root or install them first)"
        )
    t0 = time.monotonic()
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    cmd = [apt, "install", "-y", "-q", "--no-install-recommends", "slurm-wlm", "munge"]
    with _machine_lock():
        if shutil.which("slurmctld") and shutil.which("munged"):
            return 0.0
        log("slurm_cluster: installing slurm-wlm and munge with apt-get ...")
        proc = subprocess.run(cmd, env=env, text=True, capture_output=True)
        if proc.returncode != 0:
            # Package lists may be missing or stale (fresh container).
            subprocess.run([apt, "update", "-q"], env=env, text=True, capture_output=True)
            proc = subprocess.run(cmd, env=env, text=True, capture_output=True)
        if proc.returncode != 0 or not shutil.which("slurmctld"):
            raise SlurmStartError(
                f"apt-get install slurm-wlm munge failed (exit {proc.returncode}):\n"
                f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
            )
    return time.monotonic() - t0


# --------------------------------------------------------------------------- munge


def _munge_works() -> bool:
    if not (shutil.which("munge") and shutil.which("unmunge")):
        return False
    try:
        cred = subprocess.run(
            ["munge", "-n"], capture_output=True, timeout=10, check=True
        ).stdout
        subprocess.run(
            ["unmunge"], input=cred, capture_output=True, timeout=10, check=True
        )
        return True
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError):
        return False


def _ensure_munge_key() -> None:
    if MUNGE_KEY.exists():
        return
    munge_user = pwd.getpwnam("munge")
    MUNGE_KEY.parent.mkdir(parents=True, exist_ok=True)
    MUNGE_KEY.write_bytes(os.urandom(1024))
    os.chown(MUNGE_KEY, munge_user.pw_uid, munge_user.pw_gid)
    os.chmod(MUNGE_KEY, 0o400)
    os.chown(MUNGE_KEY.parent, munge_user.pw_uid, munge_user.pw_gid)
    os.chmod(MUNGE_KEY.parent, 0o700)


def _start_munged() -> int:
    munge_user = pwd.getpwnam("munge")
    for d in (MUNGE_RUN_DIR, Path("/var/lib/munge"), Path("/var/log/munge")):
        d.mkdir(parents=True, exist_ok=True)
        os.chown(d, munge_user.pw_uid, munge_user.pw_gid)
    os.chmod(MUNGE_RUN_DIR, 0o755)
    munged = shutil.which("munged") or "/usr/sbin/munged"
    # munged daemonises and writes its pid file itself.
    proc = subprocess.run(
        ["runuser", "-u", "munge", "--", munged],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if proc.returncode != 0:
        raise SlurmStartError(f"munged did not start: {proc.stdout}{proc.stderr}")
    pid = _wait_pidfile(MUNGE_PIDFILE, 10)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not _munge_works():
        time.sleep(0.2)
    if not _munge_works():
        raise SlurmStartError(
            "munged started but munge/unmunge do not work:\n"
            + _tail(Path("/var/log/munge/munged.log"))
        )
    return pid or 0


def _munge_state() -> dict:
    try:
        return json.loads(MUNGE_STATE_FILE.read_text())
    except (OSError, ValueError):
        return {"started_pid": None, "users": []}


def _acquire_munge(token: str) -> bool:
    """Make sure munged runs; register `token` as a user. True if we started it."""
    with _machine_lock():
        state = _munge_state()
        started = False
        if not _munge_works():
            _ensure_munge_key()
            state["started_pid"] = _start_munged()
            state["users"] = []
            started = True
        state["users"] = sorted(set(state.get("users", [])) | {token})
        MUNGE_STATE_FILE.write_text(json.dumps(state))
        return started


def _release_munge(token: str) -> None:
    """Unregister `token`; stop munged if this module started it and nobody uses it."""
    with _machine_lock():
        state = _munge_state()
        # A user is alive while its cluster directory (with its state file) exists.
        users = [
            u
            for u in state.get("users", [])
            if u != token and (Path(u) / STATE_NAME).exists()
        ]
        state["users"] = users
        pid = state.get("started_pid")
        if not users and pid:
            cmdline = ""
            with contextlib.suppress(OSError):
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
            if "munged" in cmdline:
                _stop_pid(pid)
            state["started_pid"] = None
        if users or state.get("started_pid"):
            MUNGE_STATE_FILE.write_text(json.dumps(state))
        else:
            with contextlib.suppress(OSError):
                MUNGE_STATE_FILE.unlink()


# --------------------------------------------------------------------------- cluster


@dataclass
class SlurmCluster:
    """A running test cluster. Pass ``env`` to every subprocess that talks to it."""

    root: Path
    conf: Path
    partition: str
    nodename: str
    env: dict = field(repr=False)
    cpus: int = 1
    memory_mb: int = 0
    slurmctld_pid: int | None = None
    slurmd_pid: int | None = None
    started_munged: bool = False
    install_seconds: float = 0.0
    start_seconds: float = 0.0

    def run(self, *cmd: str, **kw) -> subprocess.CompletedProcess:
        kw.setdefault("env", self.env)
        kw.setdefault("text", True)
        kw.setdefault("capture_output", True)
        return subprocess.run(list(cmd), **kw)

    def logs(self, n: int = 40) -> str:
        return (
            f"--- slurmctld.log ---\n{_tail(self.root / 'slurmctld.log', n)}\n"
            f"--- slurmd.log ---\n{_tail(self.root / 'slurmd.log', n)}"
        )

    # state file, for `python tests/slurm_cluster.py down` and the munge refcount
    def save(self) -> None:
        data = {
            "root": str(self.root),
            "conf": str(self.conf),
            "partition": self.partition,
            "nodename": self.nodename,
            "cpus": self.cpus,
            "memory_mb": self.memory_mb,
            "slurmctld_pid": self.slurmctld_pid,
            "slurmd_pid": self.slurmd_pid,
            "started_munged": self.started_munged,
        }
        (self.root / STATE_NAME).write_text(json.dumps(data, indent=1))

    @classmethod
    def load(cls, root: Path) -> "SlurmCluster":
        data = json.loads((Path(root) / STATE_NAME).read_text())
        conf = Path(data.pop("conf"))
        root = Path(data.pop("root"))
        env = _client_env(conf)
        env["PATH"] = f"{root / 'bin'}{os.pathsep}{env.get('PATH', os.defpath)}"
        return cls(root=root, conf=conf, env=env, **data)


def _client_env(conf: Path) -> dict:
    env = dict(os.environ)
    env["SLURM_CONF"] = str(conf)
    # Do not inherit job settings if this runs inside a SLURM job elsewhere.
    for key in list(env):
        if key.startswith(("SLURM_", "SBATCH_", "SALLOC_", "SRUN_")) and key != "SLURM_CONF":
            del env[key]
    return env


# Client commands wrapped in <root>/bin (first on the cluster env's PATH).
CLIENT_COMMANDS = ("srun", "sbatch", "salloc", "squeue", "sinfo", "scontrol", "scancel", "sacct")


def _write_client_wrappers(root: Path, conf: Path) -> Path:
    """Wrappers that put SLURM_CONF back before running the real client.

    snakemake-executor-plugin-slurm-jobstep drops every SLURM_* variable except
    the job identity ones (SLURM_CONF included) before its nested ``srun`` in
    the job, so that srun would look for /etc/slurm/slurm.conf and fail with
    "Could not establish a configuration source". PATH survives, so a wrapper
    found first on PATH restores the variable.
    """
    bindir = root / "bin"
    bindir.mkdir(parents=True, exist_ok=True)
    for name in CLIENT_COMMANDS:
        real = shutil.which(name)
        if real is None:
            continue
        wrapper = bindir / name
        wrapper.write_text(
            "#!/bin/sh\n"
            "# written by tests/slurm_cluster.py: keep clients on the test cluster\n"
            f"SLURM_CONF=\"${{SLURM_CONF:-{conf}}}\"\n"
            "export SLURM_CONF\n"
            f"exec {real} \"$@\"\n"
        )
        wrapper.chmod(0o755)
    return bindir


def _node_hardware(env: dict) -> tuple[str, int, int]:
    """(NodeName, CPUs, RealMemory in MB) as slurmd sees this host."""
    proc = _run(["slurmd", "-C"], env=env, timeout=30, check=False)
    first = next(
        (ln for ln in proc.stdout.splitlines() if ln.startswith("NodeName=")), ""
    )
    fields = dict(tok.split("=", 1) for tok in first.split() if "=" in tok)
    name = fields.get("NodeName") or socket.gethostname().split(".")[0]
    cpus = int(fields.get("CPUs") or os.cpu_count() or 1)
    if "RealMemory" in fields:
        mem = int(fields["RealMemory"])
    else:
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20
    return name, cpus, mem


def _write_config(root: Path, nodename: str, cpus: int, mem: int, partition: str,
                  fake_gpus: int = 0) -> Path:
    for sub in ("state", "spool"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    ctld_port, slurmd_port = _free_port(), _free_port()
    while slurmd_port == ctld_port:
        slurmd_port = _free_port()
    conf = root / "slurm.conf"
    if fake_gpus:
        # Fake GPU GRES: lets jobs that ask --gpus=N be scheduled on a machine
        # without GPUs (jobs still see no GPU device).
        # slurmd counts GPUs by their device files; plain files stand in for them.
        devdir = root / "fake-dev"
        devdir.mkdir(exist_ok=True)
        for i in range(fake_gpus):
            (devdir / f"gpu{i}").touch()
        (root / "gres.conf").write_text(
            f"NodeName={nodename} Name=gpu File={devdir}/gpu[0-{fake_gpus - 1}]\n"
        )
        gres_types, node_gres = "GresTypes=gpu\n", f" Gres=gpu:{fake_gpus}"
    else:
        gres_types, node_gres = "", ""
    conf.write_text(
        f"""\
# Single-node test cluster written by tests/slurm_cluster.py
ClusterName={CLUSTER_NAME}
SlurmctldHost={nodename}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# No cgroups needed:
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# Keep finished jobs visible to squeue (there is no accounting database):
MinJobAge=600
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=60
InactiveLimit=0
KillWait=5
Waittime=0
{gres_types}# This host (GRES only if fake GPUs were asked for):
NodeName={nodename} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={mem}{node_gres} State=UNKNOWN
PartitionName={partition} Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""
    )
    return conf


def _node_state(env: dict) -> str:
    proc = _run(["sinfo", "-h", "-N", "-o", "%T"], env=env, timeout=15, check=False)
    return proc.stdout.strip().lower() if proc.returncode == 0 else ""


def start(root: Path | None = None, partition: str = PARTITION, log=print,
          timeout: float = 90.0, fake_gpus: int = 0) -> SlurmCluster:
    """Install if needed, start munged if needed, start slurmctld and slurmd.

    The node advertises no GPUs unless ``fake_gpus`` > 0 (GRES backed by plain
    files, for checking what is submitted; jobs still see no GPU device).
    """
    t0 = time.monotonic()
    install_seconds = ensure_installed(log=log)
    if os.geteuid() != 0:
        raise SlurmStartError("the SLURM test cluster needs root (slurmd runs as root)")
    root = Path(root) if root else Path(tempfile.mkdtemp(prefix="stirflow-slurm-"))
    root.mkdir(parents=True, exist_ok=True)
    root = root.resolve()
    if (root / STATE_NAME).exists():
        raise SlurmStartError(f"{root} already holds a cluster; run `down` first")
    t1 = time.monotonic()

    conf = root / "slurm.conf"
    env = _client_env(conf)
    _write_client_wrappers(root, conf)
    env["PATH"] = f"{root / 'bin'}{os.pathsep}{env.get('PATH', os.defpath)}"
    nodename, cpus, mem = _node_hardware(env)
    _write_config(root, nodename, cpus, mem, partition, fake_gpus=fake_gpus)
    cluster = SlurmCluster(
        root=root, conf=conf, partition=partition, nodename=nodename, env=env,
        cpus=cpus, memory_mb=mem, install_seconds=install_seconds,
    )
    cluster.save()  # registers the directory as a live munge user
    try:
        cluster.started_munged = _acquire_munge(str(root))
        cluster.save()
        # Both daemons daemonise and write their pid files.
        proc = _run(["slurmctld", "-f", str(conf)], env=env, check=False)
        cluster.slurmctld_pid = _wait_pidfile(root / "slurmctld.pid", 20)
        cluster.save()
        if proc.returncode != 0 or cluster.slurmctld_pid is None:
            raise SlurmStartError(
                f"slurmctld did not start (exit {proc.returncode}): {proc.stderr}\n"
                + cluster.logs()
            )
        proc = _run(["slurmd", "-f", str(conf)], env=env, check=False)
        cluster.slurmd_pid = _wait_pidfile(root / "slurmd.pid", 20)
        cluster.save()
        if proc.returncode != 0 or cluster.slurmd_pid is None:
            raise SlurmStartError(
                f"slurmd did not start (exit {proc.returncode}): {proc.stderr}\n"
                + cluster.logs()
            )
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            state = _node_state(env)
            if state == "idle":
                break
            if not (_pid_alive(cluster.slurmctld_pid) and _pid_alive(cluster.slurmd_pid)):
                raise SlurmStartError("a SLURM daemon died during start-up\n" + cluster.logs())
            time.sleep(0.5)
        else:
            raise SlurmStartError(
                f"node {nodename} not idle after {timeout:.0f}s (state {state!r})\n"
                + cluster.logs()
            )
    except BaseException:
        stop(cluster)
        raise
    cluster.start_seconds = time.monotonic() - t1
    log(
        f"slurm_cluster: node {nodename} ({cpus} CPUs, {mem} MB) idle in partition "
        f"{partition}; install {install_seconds:.1f}s, start {cluster.start_seconds:.1f}s "
        f"(total {time.monotonic() - t0:.1f}s); SLURM_CONF={conf}"
    )
    return cluster


def stop(cluster: SlurmCluster) -> None:
    """Cancel the cluster's jobs, stop the daemons it started, release munged."""
    if _pid_alive(cluster.slurmctld_pid):
        # Cancel leftovers so no job steps outlive slurmd.
        with contextlib.suppress(Exception):
            _run(["scancel", "--quiet", "--full", f"--partition={cluster.partition}"],
                 env=cluster.env, timeout=15, check=False)
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                out = _run(["squeue", "-h", "-t", "PD,R,CG,CF,S", "-o", "%i"],
                           env=cluster.env, timeout=15, check=False).stdout.strip()
                if not out:
                    break
                time.sleep(0.5)
    _stop_pid(cluster.slurmd_pid)
    _stop_pid(cluster.slurmctld_pid)
    state_file = cluster.root / STATE_NAME
    with contextlib.suppress(OSError):
        state_file.unlink()
    _release_munge(str(cluster.root))


@contextlib.contextmanager
def running_cluster(root: Path | None = None, partition: str = PARTITION,
                    keep_root: bool = False, log=print,
                    fake_gpus: int = 0) -> Iterator[SlurmCluster]:
    """Context manager: a running cluster, stopped (and its directory removed) on exit."""
    cluster = start(root=root, partition=partition, log=log, fake_gpus=fake_gpus)
    try:
        yield cluster
    finally:
        stop(cluster)
        if not keep_root:
            shutil.rmtree(cluster.root, ignore_errors=True)


# --------------------------------------------------------------------------- profiles


def adapt_profile(src: Path, dst: Path, partition: str = PARTITION, *,
                  keep_gpus: bool = False,
                  mem_mb: str | int = "100 * attempt",
                  runtime: str | int | None = None,
                  cores: int | None = None,
                  status_check_seconds: int = 2) -> Path:
    """Copy a Snakemake workflow profile, adapted to this small test cluster.

    Command-line ``--set-resources``/``--default-resources`` replace the
    profile's whole key (Snakemake merges profiles and the command line key by
    key), so ``--set-resources rule:gpu=0`` would drop every other per-rule
    resource. Instead this writes a copy of the profile in which

    * every ``gpu`` is 0 and ``gpu_model`` is removed (unless ``keep_gpus``,
      for a cluster started with ``fake_gpus``), as is a global ``gpu`` limit;
    * every ``mem_mb`` is ``mem_mb`` and, if given, every ``runtime`` is
      ``runtime`` (the node is small; group jobs add up memory);
    * ``cores`` (if given) caps the CPUs of one SLURM submission, so a group
      job fits on the node;
    * ``slurm_partition`` is the test partition and the first status check
      comes after ``status_check_seconds``.

    Everything else is kept. Returns DST; run with ``--workflow-profile DST``.
    """
    import yaml

    src, dst = Path(src), Path(dst)
    src_file = src / "config.yaml" if src.is_dir() else src
    data = yaml.safe_load(src_file.read_text()) or {}
    default = dict(data.get("default-resources") or {})
    default["slurm_partition"] = partition
    default["mem_mb"] = mem_mb
    if runtime is not None:
        default["runtime"] = runtime
    data["default-resources"] = default
    per_rule = {}
    for rule, res in (data.get("set-resources") or {}).items():
        res = dict(res or {})
        if not keep_gpus:
            if "gpu" in res:
                res["gpu"] = 0
            res.pop("gpu_model", None)
        if "mem_mb" in res:
            res["mem_mb"] = mem_mb
        if runtime is not None and "runtime" in res:
            res["runtime"] = runtime
        per_rule[rule] = res
    if per_rule:
        data["set-resources"] = per_rule
    if not keep_gpus and isinstance(data.get("resources"), dict):
        data["resources"].pop("gpu", None)
        if not data["resources"]:
            del data["resources"]
    if cores is not None:
        data["cores"] = cores
    data["slurm-init-seconds-before-status-checks"] = status_check_seconds
    dst.mkdir(parents=True, exist_ok=True)
    (dst / "config.yaml").write_text(
        f"# Copy of {src_file} adapted to the test cluster "
        "(tests/slurm_cluster.py:adapt_profile)\n"
        + yaml.safe_dump(data, sort_keys=False)
    )
    return dst


# --------------------------------------------------------------------------- pytest

try:
    import pytest
except ImportError:  # script use without pytest installed
    pytest = None

if pytest is not None:

    @pytest.fixture(scope="session")
    def slurm_cluster(tmp_path_factory):
        """A running single-node SLURM cluster (session scope).

        Yields a SlurmCluster: ``.env`` (environment with SLURM_CONF, for
        subprocesses) and ``.partition``. Skips only if SLURM is missing and
        apt-get is not available to install it.
        """
        root = tmp_path_factory.mktemp("slurm")
        try:
            cm = running_cluster(root=root, keep_root=True,
                                 log=lambda m: print(m, file=sys.stderr))
            cluster = cm.__enter__()
        except SlurmUnavailable as err:
            pytest.skip(str(err))
        try:
            yield cluster
        finally:
            cm.__exit__(None, None, None)


# --------------------------------------------------------------------------- script


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Start/stop a single-node SLURM test cluster.")
    ap.add_argument("action", choices=["up", "down", "status"])
    ap.add_argument("--root", type=Path, default=DEFAULT_MANUAL_ROOT,
                    help=f"directory for config/state/logs (default {DEFAULT_MANUAL_ROOT})")
    ap.add_argument("--partition", default=PARTITION)
    ap.add_argument("--fake-gpus", type=int, default=0,
                    help="advertise N fake GPUs (GRES backed by plain files; default 0)")
    args = ap.parse_args(argv)
    root = args.root.resolve()
    log = lambda m: print(m, file=sys.stderr)  # noqa: E731
    if args.action == "up":
        try:
            cluster = start(root=root, partition=args.partition, log=log,
                            fake_gpus=args.fake_gpus)
        except SlurmUnavailable as err:
            log(f"slurm_cluster: {err}")
            return 2
        print(f"export SLURM_CONF={cluster.conf} PATH={cluster.root / 'bin'}:$PATH")
        return 0
    if not (root / STATE_NAME).exists():
        log(f"slurm_cluster: no cluster recorded in {root}")
        return 1
    cluster = SlurmCluster.load(root)
    if args.action == "status":
        print(cluster.run("sinfo").stdout, end="")
        print(cluster.run("squeue").stdout, end="")
        return 0
    stop(cluster)
    log(f"slurm_cluster: stopped (files left in {root})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
