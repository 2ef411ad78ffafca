"""The workflow on a real SLURM cluster (README, "Running on a SLURM cluster").

`tests/cluster/slurm_up.sh` stands up a single-node cluster on this machine (installing munge and
SLURM with apt when missing); the smoke configuration, cut to one run per experiment, then runs through
`snakemake --profile profiles/slurm` in a copy of the workflow, and a deliberately failing job
must come back as failed. Every job that is not a localrule has to appear in SLURM's own records
(the controller's log, and `sacct` when the cluster keeps accounting).

Needs root, and SLURM installed or apt able to install it; skips with the reason otherwise. The
daemons the fixture started are stopped by PID when the module ends, whatever the outcome.
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
SLURM_UP = REPO / "tests" / "cluster" / "slurm_up.sh"
PROFILE = REPO / "profiles" / "slurm"
SMOKE_CONFIG = REPO / "tests" / "smoke" / "config.yaml"
# What a copy of the workflow needs besides the installed package.
WORKFLOW_PATHS = ("Snakefile", "config.yaml", "workflow", "envs", "profiles", "tests/smoke")

# Hard limits (timeout -s KILL): installing SLURM from scratch, the smoke workflow, one failing job.
SLURM_UP_TIMEOUT_S = 900
SMOKE_TIMEOUT_S = 1800
FAILING_TIMEOUT_S = 300
KILLED = 128 + signal.SIGKILL  # exit status of `timeout -s KILL` when the limit was hit
# The profile waits 40 s before the first status check (sized for real clusters); this one answers at once.
FIRST_STATUS_CHECK_S = 2
SLURM_BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "sacct", "squeue")


@dataclass(frozen=True)
class Cluster:
    """The single-node cluster: its state directory, whether it keeps accounting (sacct works),
    the daemons this module started (name, pid) and how long standing it up took."""

    state: Path
    accounting: bool
    started: tuple[tuple[str, int], ...]
    seconds_to_start: float

    @property
    def controller_log(self) -> Path:
        return self.state / "log" / "slurmctld.log"


def _why_slurm_cannot_run() -> str | None:
    """The reason this machine cannot host the test cluster, or None if it can."""
    if os.geteuid() != 0:
        return "needs root to install SLURM and start its daemons (CI runs as root)"
    if all(shutil.which(name) for name in SLURM_BINARIES):
        return None
    if shutil.which("apt-get") is None:
        return "SLURM is not installed and there is no apt-get to install it"
    update = subprocess.run(
        ["timeout", "-s", "KILL", "180", "apt-get", "update", "-qq"], capture_output=True, text=True
    )
    problems = [line for line in update.stderr.splitlines() if line.startswith(("E:", "W:", "Err"))]
    if update.returncode != 0 or problems:
        detail = "; ".join(problems) or f"exit status {update.returncode}"
        return f"SLURM is not installed and apt cannot reach its archives: {detail[:300]}"
    return None


def _clean_env(**extra: str) -> dict[str, str]:
    """This environment without SLURM job variables, with the venv's bin/ first on PATH (the jobs
    inherit it through sbatch and must run the venv's python and fa-analysis)."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("SLURM_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra)
    return env


def _alive(name: str, pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip() == name
    except OSError:
        return False


def _stop_cluster(started: list[tuple[str, int]]) -> None:
    """Cancel what is still queued on a cluster this module started, then stop the daemons it
    started, last started first: SIGTERM, then SIGKILL after 30 s."""
    if any(name == "slurmctld" for name, _ in started):
        subprocess.run(["scancel", "--full", "--user", "root"], capture_output=True, timeout=30)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            queue = subprocess.run(["squeue", "-h", "-t", "PD,R,CG"], capture_output=True, text=True)
            if queue.returncode != 0 or not queue.stdout.strip():
                break
            time.sleep(1)
    for name, pid in reversed(started):
        if not _alive(name, pid):
            continue
        try:
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 30
            while _alive(name, pid) and time.monotonic() < deadline:
                time.sleep(0.2)
            if _alive(name, pid):
                os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _remove_packages(packages: list[str]) -> None:
    """Leave the machine as the module found it: purge the SLURM packages slurm_up.sh installed.

    A `scontrol` on the PATH with no controller behind it costs every later `snakemake` start
    about 10 s (the SLURM executor plugin asks it for the cluster's configuration when it is
    imported). FA_SLURM_KEEP=1 keeps the packages, for repeated runs by hand.
    """
    if not packages or os.environ.get("FA_SLURM_KEEP") == "1":
        return
    subprocess.run(
        ["timeout", "-s", "KILL", "300", "apt-get", "purge", "-y", "-qq", *packages],
        capture_output=True, env=_clean_env(DEBIAN_FRONTEND="noninteractive"),
    )


@pytest.fixture(scope="module")
def cluster():
    """A running single-node SLURM cluster, stood up by slurm_up.sh and stopped afterwards."""
    reason = _why_slurm_cannot_run()
    if reason:
        pytest.skip(reason)
    state = Path(os.environ.get("FA_SLURM_STATE", "/var/tmp/fa-slurm"))
    accounting = os.environ.get("FA_SLURM_ACCOUNTING", "1") == "1"
    start = time.monotonic()
    up = subprocess.run(
        ["timeout", "-s", "KILL", str(SLURM_UP_TIMEOUT_S), "bash", str(SLURM_UP)],
        capture_output=True, text=True, env=_clean_env(FA_SLURM_STATE=str(state)),
    )
    seconds = time.monotonic() - start
    started = [(name, int(pid)) for name, pid in re.findall(r"^started (\S+) (\d+)$", up.stdout, re.M)]
    installed = " ".join(re.findall(r"^installed (.+)$", up.stdout, re.M)).split()
    try:
        if up.returncode != 0:
            pytest.fail(
                f"slurm_up.sh failed (exit status {up.returncode}"
                f"{', killed after %d s' % SLURM_UP_TIMEOUT_S if up.returncode == KILLED else ''}):\n"
                f"{up.stderr[-3000:]}"
            )
        print(f"\nslurm_up.sh: {seconds:.1f} s, started {started or 'nothing (already running)'}")
        yield Cluster(state, accounting, tuple(started), seconds)
    finally:
        _stop_cluster(started)
        _remove_packages(installed)


def _copy_workflow(dest: Path) -> Path:
    for relative in WORKFLOW_PATHS:
        source = REPO / relative
        if not source.exists():
            pytest.fail(f"the workflow copy needs {source}, which does not exist")
        target = dest / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", ".snakemake"))
        else:
            shutil.copy2(source, target)
    return dest


def _snakemake(cluster: Cluster, workdir: Path, args: list[str], timeout_s: int):
    """`snakemake --profile profiles/slurm ARGS` in workdir, killed after timeout_s."""
    status = [] if cluster.accounting else ["--slurm-status-command", "squeue"]
    command = [
        "timeout", "-s", "KILL", str(timeout_s),
        sys.executable, "-m", "snakemake", "--profile", str(PROFILE),
        "--slurm-init-seconds-before-status-checks", str(FIRST_STATUS_CHECK_S), *status, *args,
    ]
    result = subprocess.run(command, cwd=workdir, capture_output=True, text=True, env=_clean_env())
    assert result.returncode != KILLED, f"snakemake killed after {timeout_s} s:\n{result.stderr[-4000:]}"
    return result


SUBMITTED = re.compile(r"has been submitted with SLURM jobid (\d+) \(log: (.+?)\)\.?$", re.M)


def _submitted_job_ids(log: str) -> list[str]:
    """SLURM job ids of the jobs Snakemake handed to sbatch, in submission order."""
    return [job for job, _ in SUBMITTED.findall(log)]


def _submitted_jobs(log: str) -> list[tuple[str, str]]:
    """(SLURM job id, rule) of each job handed to sbatch; the plugin keeps each job's SLURM log
    under <logdir>/rule_<rule>/<wildcards>/<job id>.log."""
    jobs = []
    for job, path in SUBMITTED.findall(log):
        rule_dirs = [part for part in Path(path).parts if part.startswith("rule_")]
        assert rule_dirs, f"SLURM log path {path} names no rule"
        jobs.append((job, rule_dirs[0].removeprefix("rule_")))
    return jobs


def _planned_jobs(log: str) -> dict[str, int]:
    """{rule: number of jobs} from the first "Job stats" table of a Snakemake log."""
    table = log[log.index("Job stats:"):].splitlines()[3:]
    rows = [line.split() for line in itertools.takewhile(lambda line: not line.startswith("total"), table)]
    return {rule: int(count) for rule, count in rows}


def _controller_exit_status(cluster: Cluster, job_ids: list[str]) -> dict[str, int | None]:
    """Exit status of each job as slurmctld logged it (None: submitted but not finished; a job
    never submitted is absent)."""
    text = cluster.controller_log.read_text(errors="replace")
    submitted = set(re.findall(r"_slurm_rpc_submit_batch_job: JobId=(\d+)", text))
    finished = dict(re.findall(r"_job_complete: JobId=(\d+) WEXITSTATUS (\d+)", text))
    return {j: (int(finished[j]) if j in finished else None) for j in job_ids if j in submitted}


def _sacct_states(job_ids: list[str], wait_s: float = 30) -> dict[str, tuple[str, str]]:
    """(State, ExitCode) of each job in the accounting database; waits for slurmdbd to catch up."""
    deadline = time.monotonic() + wait_s
    while True:
        out = subprocess.run(
            ["sacct", "-X", "-n", "-P", "-j", ",".join(job_ids), "--format=JobIDRaw,State,ExitCode"],
            capture_output=True, text=True, check=True,
        ).stdout
        states = {job: (state, code) for job, state, code in (line.split("|") for line in out.splitlines())}
        settled = all(s[0] in ("COMPLETED", "FAILED") for s in states.values())
        if (len(states) == len(job_ids) and settled) or time.monotonic() > deadline:
            return states
        time.sleep(1)


def test_failing_job_is_reported_failed(cluster, tmp_path):
    """A rule that exits 1 on the node: SLURM records the job as failed and snakemake exits non-zero."""
    (tmp_path / "Snakefile").write_text(
        'rule all:\n'
        '    input: "never.txt"\n'
        '\n'
        'rule fail_on_purpose:\n'
        '    output: "never.txt"\n'
        '    resources: mem_mb=100, runtime=5\n'
        '    shell: "echo failing on purpose on $(hostname) in SLURM job $SLURM_JOB_ID; exit 1"\n'
    )
    result = _snakemake(cluster, tmp_path, [], FAILING_TIMEOUT_S)
    log = result.stdout + result.stderr

    assert result.returncode != 0, f"snakemake succeeded although the job failed:\n{log[-3000:]}"
    job_ids = _submitted_job_ids(log)
    assert len(job_ids) == 1, f"expected one sbatch submission, got {job_ids}:\n{log[-3000:]}"
    (job_id,) = job_ids
    assert f"SLURM-job '{job_id}' failed" in log
    assert not (tmp_path / "never.txt").exists()
    # The job really ran under SLURM: its own log (kept because it failed) names the SLURM job.
    slurm_log_path = tmp_path / SUBMITTED.search(log).group(2)  # an absolute path stays as it is
    assert slurm_log_path.is_file(), f"the SLURM log {slurm_log_path} of the failed job was not kept"
    assert f"in SLURM job {job_id}" in slurm_log_path.read_text()
    assert _controller_exit_status(cluster, job_ids) == {job_id: 1}
    if cluster.accounting:
        assert _sacct_states(job_ids) == {job_id: ("FAILED", "1:0")}


def cluster_config() -> dict:
    """The smoke configuration cut to one run per experiment where it can (one seed, one condition,
    one level, one variant; two trajectories): every rule of the DAG still runs, each through
    sbatch where the profile sends it, in a fraction of the jobs."""
    config = yaml.safe_load(SMOKE_CONFIG.read_text())
    experiments = config["experiments"]
    experiments["main"]["conditions"] = ["fa"]
    experiments["label_noise"]["levels"] = [100]
    experiments["label_change"]["conditions"] = ["fa"]
    experiments["trajectory"]["conditions"] = ["bp", "fa"]
    config["alignment_terms"]["variants"] = ["fixed"]
    for section in (experiments["main"], experiments["label_noise"], experiments["label_change"],
                    config["alignment_terms"], config["shadow"], config["remainder"]):
        section["seeds"] = [0]
    return config


def test_smoke_workflow_runs_through_slurm(mnist_root, cluster, tmp_path):
    """The smoke configuration end to end on the cluster: snakemake succeeds, every job of the
    rules that run on the cluster went through sbatch and exited 0 in SLURM, every output exists."""
    workdir = _copy_workflow(tmp_path / "workflow")
    (workdir / "cluster.yaml").write_text(yaml.safe_dump(cluster_config()))
    config = ["--configfile", "cluster.yaml", "--config", f"data={{root: {mnist_root}, download: false}}"]

    start = time.monotonic()
    result = _snakemake(cluster, workdir, config, SMOKE_TIMEOUT_S)
    seconds = time.monotonic() - start
    log = result.stdout + result.stderr
    assert result.returncode == 0, f"smoke run through SLURM failed:\n{log[-6000:]}"
    print(f"\nsmoke run through SLURM: {seconds:.1f} s")

    # Jobs went through sbatch, every job of a rule that ran on the cluster did (localrules stay on
    # the submitting host), and SLURM ran each of them to exit status 0.
    submitted = _submitted_jobs(log)
    job_ids = [job for job, _ in submitted]
    assert submitted, f"no job went through sbatch:\n{log[-3000:]}"
    assert len(set(job_ids)) == len(job_ids)
    per_rule = Counter(rule for _, rule in submitted)
    planned = _planned_jobs(log)
    assert {rule: planned.get(rule) for rule in per_rule} == dict(per_rule)
    print(f"jobs through SLURM per rule: {dict(per_rule)}; local: "
          f"{ {rule: n for rule, n in planned.items() if rule not in per_rule} }")
    assert _controller_exit_status(cluster, job_ids) == {job: 0 for job in job_ids}
    if cluster.accounting:
        assert _sacct_states(job_ids) == {job: ("COMPLETED", "0:0") for job in job_ids}

    # Every output of the DAG exists. (Not "up to date": the training params carry a hash of the
    # package code, which may legitimately change under a long run in a working checkout.)
    summary = subprocess.run(
        [sys.executable, "-m", "snakemake", "--summary", *config],
        cwd=workdir, capture_output=True, text=True, env=_clean_env(), check=True,
    ).stdout.splitlines()
    header, rows = summary[0].split("\t"), [line.split("\t") for line in summary[1:] if line.strip()]
    outputs = [dict(zip(header, row)) for row in rows]
    assert outputs, f"snakemake --summary listed no outputs:\n{summary}"
    missing = [
        o["output_file"] for o in outputs if o["status"] == "missing" or not (workdir / o["output_file"]).exists()
    ]
    assert not missing, f"outputs missing after the SLURM run: {missing}"
