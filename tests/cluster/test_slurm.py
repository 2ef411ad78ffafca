"""The workflow on a real SLURM cluster (README, "Running on a SLURM cluster").

`tests/cluster/slurm_up.sh` stands up a single-node cluster on this machine (installing munge and
SLURM with apt when missing); the smoke configuration, cut to one run per experiment, then runs through
`snakemake --profile profiles/slurm` in a copy of the workflow: the training runs go out as a few
group jobs, each asking SLURM for one CPU, the memory of its largest run and the sum of its runs'
time limits, and running its runs one after another. A job that fails once succeeds on the retry
with twice its memory and time; a job that always fails is retried as often as the profile says,
then reported failed. Every job that is not a localrule has to appear in SLURM's own records (the
controller's log, and `sacct` when the cluster keeps accounting).

Needs root, and SLURM installed or apt able to install it; skips with the reason otherwise. The
daemons the fixture started are stopped by PID when the module ends, whatever the outcome.
"""

from __future__ import annotations

import itertools
import json
import math
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
# The profile waits 40 s before the first status check (sized for real clusters). This one answers at
# once and a job here lasts about 5 s (the job step starts Snakemake); the plugin adds 10 s to the
# interval after each check that finds nothing finished, so a first check after the job's end saves that.
FIRST_STATUS_CHECK_S = 7
# Training runs per group job on the test cluster: its node has 2 CPUs, so the smoke run's training
# goes out as a few group jobs that run side by side (the profile's own value is sized for the protocol).
TEST_TRAIN_COMPONENTS = 4
SLURM_BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "sacct", "squeue")


def _profile() -> dict:
    return yaml.safe_load((PROFILE / "config.yaml").read_text())


def _pairs(items: list[str]) -> dict[str, str]:
    """{key: value} of a profile list of KEY=VALUE items (groups, group-components)."""
    return dict(item.split("=", 1) for item in items)


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


def _submitted_jobs(log: str) -> list[tuple[str, str]]:
    """(SLURM job id, what it runs) of each job handed to sbatch: "rule <name>" for a job of one rule,
    "group <id>" for a group job. The plugin keeps each job's SLURM log under
    <logdir>/rule_<rule>/<wildcards>/<job id>.log, a group job's under <logdir>/group_<id>_<its rules>/."""
    group_ids = set(_pairs(_profile().get("groups", [])).values())
    jobs = []
    for job, path in SUBMITTED.findall(log):
        dirs = [part for part in Path(path).parts if part.startswith(("rule_", "group_"))]
        assert dirs, f"SLURM log path {path} names no rule and no group"
        if dirs[0].startswith("rule_"):
            jobs.append((job, f"rule {dirs[0].removeprefix('rule_')}"))
            continue
        ids = [group for group in group_ids if dirs[0].startswith(f"group_{group}_")]
        assert ids, f"SLURM log path {path} names none of the profile's groups {sorted(group_ids)}"
        jobs.append((job, f"group {max(ids, key=len)}"))
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


def _minutes(limit: str) -> int:
    """SLURM's [days-]hours:minutes:seconds as minutes."""
    days, _, clock = limit.rpartition("-")
    hours, minutes, seconds = (int(part) for part in clock.split(":"))
    assert seconds == 0, f"time limit {limit} is not whole minutes"
    return int(days or 0) * 1440 + hours * 60 + minutes


def _megabytes(memory: str) -> int:
    """SLURM's requested memory (ReqMem: 2118M, 2G; a trailing n or c names per node or per CPU) in MB."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([KMGT])[nc]?", memory)
    assert match, f"unexpected ReqMem {memory!r}"
    value, unit = float(match.group(1)), match.group(2)
    return round(value * {"K": 1 / 1024, "M": 1, "G": 1024, "T": 1024**2}[unit])


def _sacct_requests(job_ids: list[str]) -> dict[str, tuple[int, int, int]]:
    """(CPUs, memory in MB, time limit in minutes) each job asked SLURM for, from the accounting database."""
    out = subprocess.run(
        ["sacct", "-X", "-n", "-P", "-j", ",".join(job_ids), "--format=JobIDRaw,ReqCPUS,ReqMem,Timelimit"],
        capture_output=True, text=True, check=True,
    ).stdout
    rows = [line.split("|") for line in out.splitlines()]
    return {job: (int(cpus), _megabytes(memory), _minutes(limit)) for job, cpus, memory, limit in rows}


def test_failed_jobs_are_retried_with_more_resources(cluster, tmp_path):
    """The profile's `retries`: a job that fails on its first attempt goes out again with twice its
    memory and time and succeeds; a job that always fails goes out 1 + retries times, each time
    with more, is recorded as failed by SLURM every time, and snakemake exits non-zero."""
    retries = int(_profile()["retries"])
    assert retries >= 1, "the profile retries no failed job"
    (tmp_path / "Snakefile").write_text(
        'rule all:\n'
        '    input: "recovered.txt", "never.txt"\n'
        '\n'
        'rule fail_once:\n'
        '    output: "recovered.txt"\n'
        '    resources: mem_mb=lambda wildcards, attempt: 100 * attempt, runtime=lambda wildcards, attempt: 5 * attempt\n'
        '    shell: "if [ ! -e attempted ]; then touch attempted; echo failing once on purpose; exit 1; fi; "\n'
        '           "echo SLURM job $SLURM_JOB_ID, mem_mb {resources.mem_mb}, runtime {resources.runtime} > {output}"\n'
        '\n'
        'rule fail_on_purpose:\n'
        '    output: "never.txt"\n'
        '    resources: mem_mb=lambda wildcards, attempt: 100 * attempt, runtime=lambda wildcards, attempt: 5 * attempt\n'
        '    shell: "echo failing on purpose on $(hostname) in SLURM job $SLURM_JOB_ID; exit 1"\n'
    )
    result = _snakemake(cluster, tmp_path, [], FAILING_TIMEOUT_S)
    log = result.stdout + result.stderr

    assert result.returncode != 0, f"snakemake succeeded although a job failed on every attempt:\n{log[-3000:]}"
    submitted = _submitted_jobs(log)
    once = [job for job, kind in submitted if kind == "rule fail_once"]
    never = [job for job, kind in submitted if kind == "rule fail_on_purpose"]
    assert len(once) == 2, f"the job that fails once went out {len(once)} times:\n{log[-3000:]}"
    assert len(never) == 1 + retries, f"the failing job went out {len(never)} times, not 1 + {retries}:\n{log[-3000:]}"
    assert (tmp_path / "recovered.txt").read_text().split() == [
        "SLURM", "job", f"{once[1]},", "mem_mb", "200,", "runtime", "10"
    ]
    assert not (tmp_path / "never.txt").exists()
    assert f"SLURM-job '{never[-1]}' failed" in log
    # The failed attempt's own SLURM log (kept because it failed) shows it ran under SLURM.
    first_log = tmp_path / dict((job, path) for job, path in SUBMITTED.findall(log))[never[0]]
    assert f"in SLURM job {never[0]}" in first_log.read_text()
    assert _controller_exit_status(cluster, once + never) == {once[0]: 1, once[1]: 0, **dict.fromkeys(never, 1)}
    if cluster.accounting:
        assert _sacct_states(once + never) == {
            once[0]: ("FAILED", "1:0"), once[1]: ("COMPLETED", "0:0"), **dict.fromkeys(never, ("FAILED", "1:0"))
        }
        # Attempt n asks for n times the first attempt's memory and time (one CPU each).
        requests = _sacct_requests(once + never)
        assert [requests[job] for job in once] == [(1, 100, 5), (1, 200, 10)]
        assert [requests[job] for job in never] == [(1, 100 * n, 5 * n) for n in range(1, retries + 2)]


def cluster_config() -> dict:
    """The smoke configuration cut to one run per experiment where it can (one seed, one condition,
    one level, one variant, one open-loop scenario and beta sweep; two trajectories): every rule of
    the DAG still runs, each through sbatch where the profile sends it, in a fraction of the jobs."""
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
    config["open_loop"]["scenarios"] = ["auto"]
    config["open_loop"]["beta_sweep"]["wn"] = [False]
    return config


# Prepended to the training script of the workflow copy: each training run records, in
# training_runs/, the SLURM job it ran in, when, and the threads and resources Snakemake gave it.
RECORD_TRAINING_RUN = """\
import json as _json, os as _os, time as _time
from pathlib import Path as _Path
_record = dict(run="/".join(snakemake.wildcards), job=_os.environ.get("SLURM_JOB_ID"), threads=snakemake.threads,
               mem_mb=snakemake.resources.mem_mb, runtime=snakemake.resources.runtime, start=_time.time())
"""
RECORD_TRAINING_RUN_END = """
_record["end"] = _time.time()
_Path("training_runs").mkdir(exist_ok=True)
_Path("training_runs", f"{_record['job']}.{_record['run'].replace('/', '.')}.json").write_text(_json.dumps(_record))
"""


def _record_training_runs(workdir: Path) -> None:
    script = workdir / "workflow" / "scripts" / "train.py"
    script.write_text(RECORD_TRAINING_RUN + script.read_text() + RECORD_TRAINING_RUN_END)


# The rules whose jobs go to SLURM, and the local rules (`localrule: True`, or targets without a job
# of their own) that run beside Snakemake on the submitting host, besides every figure rule.
CLUSTER_RULES = ("prepare_data", "train", "open_loop", "open_loop_beta", "trajectory_pca", "trajectory_umap",
                 "toy_term_geometry", "toy_distributions", "toy_depth", "toy_closed_net", "toy_autocorrelation")
LOCAL_RULES = ("prepare_label_noise", "aggregate", "summary", "all", "mechanisms", "sweep_table", "sweeps")
#: Local rules that only name targets, which rule `all` does not ask for: no job of theirs runs.
TARGET_RULES = ("mechanisms", "sweeps")


def _rules_of_the_workflow(workdir: Path, config: list[str]) -> set[str]:
    """Rule names from `snakemake --list-rules` (one rule per line, its docstring after it)."""
    listed = subprocess.run(
        [sys.executable, "-m", "snakemake", "--list-rules", *config],
        cwd=workdir, capture_output=True, text=True, env=_clean_env(), check=True,
    ).stdout
    return {line.split()[0] for line in listed.splitlines() if line.strip()}


def test_smoke_workflow_runs_through_slurm(mnist_root, cluster, tmp_path):
    """The smoke configuration end to end on the cluster: snakemake succeeds; the training runs go
    out as a few group jobs, each asking for one CPU, the memory of its largest run and the sum of
    its runs' time limits, and running its runs one after another; every other job of a rule that
    runs on the cluster goes out alone, and no local rule's job goes out; SLURM ran every job to
    exit status 0; every output exists."""
    workdir = _copy_workflow(tmp_path / "workflow")
    (workdir / "cluster.yaml").write_text(yaml.safe_dump(cluster_config()))
    _record_training_runs(workdir)
    config = ["--configfile", "cluster.yaml", "--config", f"data={{root: {mnist_root}, download: false}}"]
    rules = _rules_of_the_workflow(workdir, config)
    figures = {rule for rule in rules if rule.startswith("figure_")}
    assert rules == {*CLUSTER_RULES, *LOCAL_RULES, *figures}, (
        "a rule is neither in CLUSTER_RULES nor a known local rule: say where it runs", rules)
    profile = _profile()
    groups = _pairs(profile["groups"])
    components = {**_pairs(profile["group-components"]), "train": str(TEST_TRAIN_COMPONENTS)}
    grouping = ["--group-components", *(f"{group}={n}" for group, n in components.items())]

    start = time.monotonic()
    result = _snakemake(cluster, workdir, [*config, *grouping], SMOKE_TIMEOUT_S)
    seconds = time.monotonic() - start
    log = result.stdout + result.stderr
    assert result.returncode == 0, f"smoke run through SLURM failed:\n{log[-6000:]}"
    print(f"\nsmoke run through SLURM: {seconds:.1f} s")

    # Jobs went through sbatch: a rule outside the profile's groups as one SLURM job per job
    # (localrules stay on the submitting host), a group's rules as one SLURM job per
    # `group-components` of their runs.
    submitted = _submitted_jobs(log)
    job_ids = [job for job, _ in submitted]
    assert submitted, f"no job went through sbatch:\n{log[-3000:]}"
    assert len(set(job_ids)) == len(job_ids)
    per_kind = Counter(kind for _, kind in submitted)
    planned = _planned_jobs(log)
    alone = {kind.removeprefix("rule "): n for kind, n in per_kind.items() if kind.startswith("rule ")}
    assert {rule: planned.get(rule) for rule in alone} == alone
    assert not set(alone) & set(groups), f"a grouped rule went out alone: {alone}"
    # the whole DAG ran; every job of every cluster rule went to SLURM, and only those
    assert set(planned) == rules - set(TARGET_RULES), planned
    assert set(alone) | set(groups) == set(CLUSTER_RULES), (alone, groups)
    for group in set(groups.values()):
        runs = sum(planned.get(rule, 0) for rule, its_group in groups.items() if its_group == group)
        assert per_kind[f"group {group}"] == math.ceil(runs / int(components.get(group, 1))), (group, per_kind)
    assert 1 < per_kind["group train"] < planned["train"]
    print(f"SLURM jobs: {dict(per_kind)}; local: "
          f"{ {rule: n for rule, n in planned.items() if rule not in alone and rule not in groups} }")
    assert _controller_exit_status(cluster, job_ids) == {job: 0 for job in job_ids}

    # Each training run ran once, inside one of the training group jobs, with one thread.
    records = [json.loads(path.read_text()) for path in (workdir / "training_runs").glob("*.json")]
    assert len(records) == planned["train"] == len({r["run"] for r in records})
    train_jobs = {job for job, kind in submitted if kind == "group train"}
    by_job = {job: sorted((r for r in records if r["job"] == job), key=lambda r: r["start"]) for job in train_jobs}
    assert {r["job"] for r in records} == train_jobs
    assert all(r["threads"] == 1 for r in records)
    for job, runs in by_job.items():
        # one after another: each run ended before the next one started
        assert all(a["end"] <= b["start"] for a, b in zip(runs, runs[1:])), f"runs of SLURM job {job} overlapped: {runs}"

    if cluster.accounting:
        assert _sacct_states(job_ids) == {job: ("COMPLETED", "0:0") for job in job_ids}
        # What each job asked SLURM for: one CPU (the profile's `cores`); a training group, the
        # memory of its largest run and the sum of its runs' time limits.
        requests = _sacct_requests(job_ids)
        assert all(cpus == 1 for cpus, _, _ in requests.values()), requests
        for job, runs in by_job.items():
            assert requests[job] == (1, max(r["mem_mb"] for r in runs), sum(r["runtime"] for r in runs)), (job, runs)
        print("training group jobs (CPUs, MB, minutes):", {job: requests[job] for job in sorted(by_job)})

    # Every output of the DAG exists. (Not "up to date": the training params carry a hash of the
    # package code, which may legitimately change under a long run in a working checkout.)
    summary = subprocess.run(
        [sys.executable, "-m", "snakemake", "--summary", *config],
        cwd=workdir, capture_output=True, text=True, env=_clean_env(), check=True,
    ).stdout.splitlines()
    header, rows = summary[0].split("\t"), [line.split("\t") for line in summary[1:] if line.strip()]
    outputs = [dict(zip(header, row)) for row in rows]
    assert {o["rule"] for o in outputs} == rules - {"all", *TARGET_RULES}, f"--summary misses a rule's outputs:\n{summary}"
    missing = [
        o["output_file"] for o in outputs if o["status"] == "missing" or not (workdir / o["output_file"]).exists()
    ]
    assert not missing, f"outputs missing after the SLURM run: {missing}"
