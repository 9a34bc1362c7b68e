"""The cluster's limits, read before a launch submits anything (``scontrol``, ``squeue``, ``sacctmgr``).

Apart from :mod:`launch.executors` so that ``sweep launch`` can start asking before it imports submitit
and the rest of the launch path: the answers (sacctmgr waits on the accounting daemon, 0.2-0.3 s) then
come while Python imports and the spec is read, not after.
"""

from __future__ import annotations

import dataclasses
import re
import subprocess
import threading
import time


@dataclasses.dataclass
class ClusterLimits:
    """What the cluster allows, read before submitting (``scontrol``, ``squeue``)."""

    partitions: dict[str, int | None]  # name -> MaxTime in minutes (None: unlimited)
    default_partition: str | None
    max_job_count: int | None  # MaxJobCount: job records the controller holds at most
    jobs_held: int | None  # job records it holds now, every user's (array elements one by one)
    max_submit: int | None = None  # this user's MaxSubmitJobs (association or QOS), where enforced
    max_submit_from: str = ""  # whose limit that is
    user_jobs: int | None = None  # this user's jobs queued or running now (array elements one by one)


def cluster_limits(qos: str | None = None) -> ClusterLimits | None:
    """The cluster's limits; None when the scheduler cannot be asked (then nothing is checked)."""
    return LimitsQuery().result(qos)


class LimitsQuery:
    """The cluster's limits, asked for in a background thread from the moment it is made: `sweep launch`
    makes it before it reads the spec, so the 0.3 s scontrol, squeue and sacctmgr take (sacctmgr waits on
    the accounting daemon) overlap the reading; ``result`` waits for the answers."""

    def __init__(self) -> None:
        self._answers: tuple[ClusterLimits, list[list[str]], list[list[str]], int | None] | None = None
        self._live: list[subprocess.Popen[str]] = []  # the commands started, for close()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._ask, name="sweep-cluster-limits", daemon=True)
        self._thread.start()

    def _ask(self) -> None:
        self._answers = _ask_limits(self._live, self._closed)

    def close(self) -> None:
        """Stop asking: the commands still running are killed (a launch that ends early, e.g. with the
        controller down, leaves no scontrol behind waiting out its timeouts)."""
        self._closed.set()
        for proc in list(self._live):
            if proc.poll() is None:
                proc.kill()
        self._thread.join()

    def result(self, qos: str | None) -> ClusterLimits | None:
        """The limits for a launch under ``qos`` (None: the user's default QOS)."""
        self._thread.join()
        if self._answers is None:
            return None
        limits, assocs, qoses, user_jobs = self._answers
        limits = dataclasses.replace(limits)
        _choose_submit_limit(limits, qos, assocs, qoses, user_jobs)
        return limits


def _ask_limits(live: list[subprocess.Popen[str]] | None = None, closed: threading.Event | None = None
                ) -> tuple[ClusterLimits, list[list[str]], list[list[str]], int | None] | None:
    """The partitions, MaxJobCount and the jobs held; where limits are enforced, the user's associations,
    every QOS's per-user submit limit and the user's jobs. None when the scheduler cannot be asked."""
    # the three questions at once: a busy controller answers each in a tenth of a second or more
    found = _run_at_once([["scontrol", "show", "partition", "-o"], ["scontrol", "show", "config"],
                          ["squeue", "-h", "-r", "-t", "all", "-o", "%i"]], 60, live, closed)
    if found is None:
        return None
    parts, config, held = found
    if parts.returncode != 0:
        return None
    partitions: dict[str, int | None] = {}
    default = None
    for line in parts.stdout.splitlines():
        fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
        if "PartitionName" not in fields:
            continue
        partitions[fields["PartitionName"]] = slurm_minutes(fields.get("MaxTime", "UNLIMITED"))
        if fields.get("Default") == "YES":
            default = fields["PartitionName"]
    m = re.search(r"^MaxJobCount\s*=\s*(\d+)", config.stdout, re.M)
    limits = ClusterLimits(partitions=partitions, default_partition=default,
                           max_job_count=int(m.group(1)) if m else None,
                           jobs_held=len(held.stdout.split()) if held.returncode == 0 else None)
    enforce = re.search(r"^AccountingStorageEnforce\s*=\s*(\S*)", config.stdout, re.M)
    if not (enforce and {"limits", "safe"} & set(enforce.group(1).lower().split(","))):
        return limits, [], [], None
    import getpass

    user = getpass.getuser()
    # every QOS is asked for: the user's default QOS is known only from the first answer
    found = _run_at_once([["sacctmgr", "-n", "-P", "show", "assoc", "where", f"user={user}",
                           "format=MaxSubmit,DefaultQOS"],
                          ["sacctmgr", "-n", "-P", "show", "qos", "format=Name,MaxSubmitPU"],
                          ["squeue", "-h", "-r", "-u", user, "-o", "%i"]], 60, live, closed)
    if found is None:
        return limits, [], [], None
    assocs, qoses = ([line.split("|") for line in p.stdout.splitlines()] if p.returncode == 0 else []
                     for p in found[:2])
    return limits, assocs, qoses, len(found[2].stdout.split()) if found[2].returncode == 0 else None


def _run_at_once(commands: list[list[str]], timeout: float, live: list[subprocess.Popen[str]] | None = None,
                 closed: threading.Event | None = None) -> list[subprocess.CompletedProcess[str]] | None:
    """Run ``commands`` side by side; their results in order, or None when one cannot be started, all
    are not done in ``timeout`` seconds (the others are killed) or ``closed`` is set (``live``: where the
    processes are listed for whoever sets it)."""
    procs: list[subprocess.Popen[str]] = [] if live is None else live
    procs.clear()
    try:
        for cmd in commands:
            procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
            if closed is not None and closed.is_set():  # after the append: close() kills what it lists
                return None
        deadline = time.monotonic() + timeout
        done = []
        for cmd, proc in zip(commands, procs):
            out, err = proc.communicate(timeout=max(0.0, deadline - time.monotonic()))
            done.append(subprocess.CompletedProcess(cmd, proc.returncode, out, err))
        return done
    except (OSError, subprocess.TimeoutExpired):
        return None
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def _choose_submit_limit(limits: ClusterLimits, qos: str | None, assocs: list[list[str]], qoses: list[list[str]],
                         user_jobs: int | None) -> None:
    """The tighter of the user's association MaxSubmitJobs and its QOS's MaxSubmitJobsPerUser, and how
    many jobs the user has queued or running (what sbatch counts against them)."""
    import getpass

    user = getpass.getuser()
    found: list[tuple[int, str]] = []
    for max_submit, default_qos in (row[:2] for row in assocs if len(row) >= 2):
        if max_submit.isdigit():
            found.append((int(max_submit), f"user {user}'s MaxSubmitJobs"))
        qos = qos or default_qos or None
    qos = qos or "normal"
    for row in qoses:
        if len(row) >= 2 and row[0] == qos and row[1].isdigit():
            found.append((int(row[1]), f"QOS {qos}'s MaxSubmitJobsPerUser"))
    if found and user_jobs is not None:
        limits.max_submit, limits.max_submit_from = min(found)
        limits.user_jobs = user_jobs


def slurm_minutes(text: str) -> int | None:
    """A SLURM time (``UNLIMITED``, ``MM``, ``MM:SS``, ``HH:MM:SS``, ``D-HH[:MM[:SS]]``) in whole
    minutes, rounded up; None when unlimited."""
    text = text.strip()
    if text.upper() in ("UNLIMITED", "INFINITE", "NONE", ""):
        return None
    days, _, rest = text.rpartition("-")
    nums = [int(x) for x in rest.split(":")]
    if days:
        nums += [0] * (3 - len(nums))
        h, mi, sec = nums
    else:
        h, mi, sec = {1: (0, nums[0], 0), 2: (0, *nums), 3: tuple(nums)}[len(nums)]
    seconds = ((int(days or 0) * 24 + h) * 60 + mi) * 60 + sec
    return -(-seconds // 60)
