"""Harness benchmark (issue 2): a 10,000-run grid of the noop experiment on the
real local SLURM — wall time of `sweep launch`, `sweep status`, `sweep collect`.

Targets on a 2-core machine: launch <= 5 s, status <= 1 s, collect <= 10 s.

    sudo bash launch/local-slurm.sh start        # or let this script start it
    python bench/bench_harness.py [--runs-per-job 100] [--out /tmp/bench-harness]

The node is drained while the unpacked launch is timed (see below). Two launches are timed: packed (100 runs per array element: 100 jobs, which the
2-core cluster then runs to completion for status/collect) and unpacked (10,000
array elements in 10 arrays of MaxArraySize 1001; cancelled right after).
Each CLI call is a fresh process, as a user would run it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

SPEC = """
experiment: noop
name: {name}
group: "x{{x:03d}}"
path: "{{group}}/task_{{task:04d}}/seed{{seed}}"
fixed: {{steps: 1, lengths: [1, 2]}}
axes:
  - {{x: {xs}, group: true}}
  - {{y: {ys}}}
seeds: [0]
pack: {pack}
resources: {{time_min: 30, cpus: 1}}
"""


def sweep(*args: str) -> tuple[float, str]:
    t = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "launch.cli", *args], capture_output=True, text=True, cwd=REPO)
    dt = time.perf_counter() - t
    if p.returncode not in (0, 1):
        raise SystemExit(f"sweep {' '.join(args)} failed:\n{p.stderr}")
    return dt, p.stdout + p.stderr


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="/tmp/bench-harness")
    ap.add_argument("--runs-per-job", type=int, default=100)
    ap.add_argument("--n", type=int, default=100, help="grid is n x n runs")
    args = ap.parse_args()
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    env = {**os.environ, "LOCAL_SLURM_MAX_ARRAY_SIZE": "1001", "LOCAL_SLURM_CPUS": "4"}
    subprocess.run(["bash", str(REPO / "launch/local-slurm.sh"), "start"], check=True, env=env,
                   capture_output=True)
    xs, ys = list(range(args.n)), [i / 10 for i in range(args.n)]
    results: dict[str, float | str] = {"runs": args.n * args.n}

    # unpacked: 10,000 array elements. The node is drained meanwhile: on a real cluster the
    # jobs run on other machines; here they would start at once and take the launcher's CPU.
    spec1 = out / "bench_unpacked.yaml"
    spec1.write_text(SPEC.format(name="bench_unpacked", xs=xs, ys=ys, pack=1))
    subprocess.run(["scontrol", "update", "nodename=localhost", "state=drain", "reason=bench"], check=True)
    try:
        dt, msg = sweep("launch", str(spec1), "--cluster", "slurm", "--root", str(out / "tree1"))
        results["launch_unpacked_s"] = round(dt, 2)
        results["launch_unpacked_msg"] = msg.strip().splitlines()[-1]
        times = [sweep("status", str(spec1), "--root", str(out / "tree1"))[0] for _ in range(3)]
        results["status_pending_s"] = round(min(times), 2)
        sweep("cancel", str(spec1), "--root", str(out / "tree1"))
    finally:
        subprocess.run(["scontrol", "update", "nodename=localhost", "state=resume"], check=True)

    # packed: 100 jobs of 100 runs, run to completion
    spec2 = out / "bench_packed.yaml"
    spec2.write_text(SPEC.format(name="bench_packed", xs=xs, ys=ys, pack=args.runs_per_job))
    dt, msg = sweep("launch", str(spec2), "--cluster", "slurm", "--root", str(out / "tree2"))
    results["launch_packed_s"] = round(dt, 2)  # jobs start while it writes: the node is not drained
    t0 = time.time()
    while True:
        _, s = sweep("status", str(spec2), "--root", str(out / "tree2"), "--json")
        c = json.loads(s[s.index("{"):])["counts"]["bench_packed"]
        if sum(n for k, n in c.items() if k not in ("not_submitted", "pending", "running", "requeued")) \
                == args.n * args.n:  # every run ended (completed, failed, timeout, ...)
            break
        if time.time() - t0 > 1800:
            raise SystemExit(f"runs did not finish: {c}")
        time.sleep(5)
    results["runs_wall_s"] = round(time.time() - t0, 1)
    times = [sweep("status", str(spec2), "--root", str(out / "tree2"))[0] for _ in range(3)]
    results["status_done_s"] = round(min(times), 2)
    times = [sweep("status", str(spec2), "--root", str(out / "tree2"), "-v")[0] for _ in range(3)]
    results["status_verbose_s"] = round(min(times), 2)
    dt, msg = sweep("collect", str(spec2), "--root", str(out / "tree2"), "-o", str(out / "r.parquet"))
    results["collect_s"] = round(dt, 2)
    results["collect_msg"] = msg.strip().splitlines()[-1]
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
