"""Harness benchmark (issues 2 and 12) on the real local SLURM, side by side with plain submitit.

    python bench/bench_harness.py [--out /tmp/bench-harness] [--runs 10000] [--big 50000 100000]

What it measures (each figure the best of --repeat fresh processes, as a user runs them, taken
alternately with its plain counterpart so both see the same machine load):

1. launch: `sweep launch` of a --runs noop grid, one run per array element, against a plain
   submitit script that submits the same number of elements with `map_array` in 1,000-element
   chunks (same flat folder kind, same sbatch parameters). The node is drained meanwhile: on a
   real cluster the jobs run on other machines; here they would take the launcher's CPU.
2. status of those --runs pending runs against one plain `sacct -X` call over their arrays.
3. For each --big size, a tree of completed runs written as the noop jobs write them (run.json,
   state.json, progress.json, a 3-record metrics.jsonl: what 1-step noop runs leave): `sweep status`,
   `sweep status -v`, `sweep collect` (wall time and peak memory, /usr/bin/time's max RSS).
4. record_jobs over --big ids in 1,000-id arrays, against the rewrite-per-array it replaced.
5. With --baseline DIR (a copy of another version's ``launch/``, e.g. ``git archive main launch | tar -x
   -C DIR``): every `sweep status`/`collect` above also run from DIR, alternating with this tree's, so
   before and after see the same machine load (these VMs are noisy); the two Parquet tables are
   compared (schema with its metadata, and content). And the floor of a `sweep` command: `python -c
   pass` and the CLI's imports for `status`.

Prints one JSON object; bench/RESULTS.md records it with the machine and date.
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
sys.path.insert(0, str(REPO))

SPEC = """
experiment: noop
name: {name}
group: "x{{x:03d}}"
path: "{{group}}/task_{{task:04d}}/seed{{seed}}"
fixed: {{steps: 1, lengths: [1, 2]}}
headline: val/accuracy
axes:
  - {{x: {xs}, group: true}}
  - {{y: {ys}}}
seeds: [0]
resources: {{time_min: 30, cpus: 1}}
"""

PLAIN = """
import sys, submitit
folder, n, chunk = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
ex = submitit.SlurmExecutor(folder=folder, max_num_timeout=1000)
ex.update_parameters(time=30, cpus_per_task=1, job_name="plain", signal_delay_s=90)
ids = []
for i in range(0, n, chunk):
    ids += [j.job_id for j in ex.map_array(abs, range(i, min(n, i + chunk)))]
print(" ".join(sorted({i.split("_")[0] for i in ids})))
"""


def timed(cmd: list[str], cwd: Path = REPO) -> tuple[float, float, str]:
    """(wall s, peak RSS MB, stdout) of one fresh process."""
    p = subprocess.run(["/usr/bin/time", "-f", "%e %M", *cmd], capture_output=True, text=True, cwd=cwd)
    if p.returncode not in (0, 1, 3):
        raise SystemExit(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stderr[-2000:]}")
    wall, rss = p.stderr.strip().splitlines()[-1].split()
    return float(wall), int(rss) / 1024, p.stdout


def sweep_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "launch.cli", *args]


def versions(baseline: Path | None) -> list[tuple[str, Path]]:
    """(label, the directory `python -m launch.cli` runs in: its launch/ is the one imported)."""
    return [("", REPO)] + ([("before_", baseline)] if baseline else [])


def same_table(a: Path, b: Path) -> dict[str, object]:
    import pyarrow.parquet as pq

    ta, tb = pq.read_table(a), pq.read_table(b)
    return {"schema_and_metadata": ta.schema.equals(tb.schema, check_metadata=True), "content": ta.equals(tb),
            "rows": [ta.num_rows, tb.num_rows],
            "row_groups": [pq.ParquetFile(a).metadata.num_row_groups, pq.ParquetFile(b).metadata.num_row_groups]}


def floor(baseline: Path | None, repeat: int) -> dict[str, object]:
    """What every `sweep` command pays before its own work: the interpreter, and the imports of `status`."""
    imports = "import launch.cli, launch.status, launch.spec_set"
    res: dict[str, object] = {"python_c_pass_s": min(timed([sys.executable, "-c", "pass"])[0] for _ in range(repeat))}
    for label, cwd in versions(baseline):
        res[f"{label}status_imports_s"] = min(timed([sys.executable, "-c", imports], cwd=cwd)[0]
                                              for _ in range(repeat))
    return res


def grid(n: int) -> tuple[list[int], list[float]]:
    ys = 100 if n >= 100 else n
    return list(range(n // ys)), [i / 10 for i in range(ys)]


def write_spec(out: Path, name: str, n: int) -> Path:
    xs, ys = grid(n)
    path = out / f"{name}.yaml"
    path.write_text(SPEC.format(name=name, xs=xs, ys=ys))
    return path


def write_completed_tree(spec_path: Path, root: Path) -> int:
    """The files N finished 1-step noop runs leave, and the jobs file of their (made-up) arrays."""
    from launch.spec import load_spec
    from launch.store import Store, record_jobs, write_json
    from launch.tasks import expand

    spec = load_spec(spec_path, root=root)
    runs = expand(spec)
    store = Store(root)
    now = time.time()
    jobs = {}
    for i, r in enumerate(runs):
        d = store.run_dir(r)
        d.mkdir(parents=True)
        job = f"{1_000_000 + i // 1000}_{i % 1000}"
        jobs[r.rel_dir] = job
        write_json(d / "run.json", store.run_info(r, None, 5, True, ["node_fail", "preempted"]))
        write_json(d / "state.json", {"state": "completed", "job_id": job, "attempts": 1, "requeues": 0,
                                      "host": "node", "started_at": now, "ended_at": now + 1, "wall_s": 1.0,
                                      "updated_at": now + 1, "run_key": r.run_key, "git_commit": "abc"})
        write_json(d / "progress.json", {"step": 1, "total": 1, "time": now + 1})
        with open(d / "metrics.jsonl", "w") as f:
            f.write(json.dumps({"step": 1, "split": "train", "length": None, "time": now,
                                "metrics": {"value": 0.5 + r.config["x"], "loss": 1.0}}) + "\n")
            for k in (1, 2):
                f.write(json.dumps({"step": 1, "split": "val", "length": k, "time": now,
                                    "metrics": {"accuracy": 1.0 / k}}) + "\n")
    record_jobs(store, spec.name, jobs)
    store.write_manifest(spec.name, str(spec_path), runs, None)
    return len(runs)


def record_jobs_figures(n: int, out: Path) -> dict[str, float]:
    """record_jobs over n ids in 1,000-id arrays: now (one appended line per array) and before (the
    whole growing file rewritten per array)."""
    from launch.store import Store, compact_jobs, read_jobs, record_jobs, write_json

    def old(store: Store, spec: str, jobs: dict[str, str]) -> None:
        path = store.meta / "jobs" / f"{spec}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, {**read_jobs(store, spec), **jobs})

    res = {}
    for name, fn in (("before", old), ("now", record_jobs)):
        store = Store(out / f"rj-{name}-{n}")
        t = time.perf_counter()
        for a in range(0, n, 1000):
            fn(store, "s", {f"g/task_{i:06d}/seed0": f"{a}_{i - a}" for i in range(a, min(n, a + 1000))})
        compact_jobs(store, "s")
        res[name] = round(time.perf_counter() - t, 3)
        shutil.rmtree(store.root)
    return res


def settle(quiet_s: float = 8.0) -> None:
    """Let the controller finish what the last step gave it (jobs completing after a cancel) and rest a
    moment, so that neither launch pays for the other's jobs; the two then alternate who goes first."""
    for _ in range(60):
        q = subprocess.run(["squeue", "-h", "-r", "-t", "COMPLETING", "-o", "%i"], capture_output=True, text=True)
        if not q.stdout.split():
            break
        time.sleep(1)
    time.sleep(quiet_s)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="/tmp/bench-harness")
    ap.add_argument("--runs", type=int, default=10_000)
    ap.add_argument("--big", type=int, nargs="*", default=[50_000, 100_000])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--skip-slurm", action="store_true", help="only the completed trees and record_jobs")
    ap.add_argument("--baseline", type=Path, default=None,
                    help="a directory holding another version's launch/: every status/collect also run from it")
    args = ap.parse_args()
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    res: dict[str, object] = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                              "cpus": os.cpu_count(), "loadavg_start": os.getloadavg()}
    res["floor"] = floor(args.baseline, args.repeat)

    if not args.skip_slurm:
        env = {**os.environ, "LOCAL_SLURM_MAX_ARRAY_SIZE": "1001", "LOCAL_SLURM_CPUS": "4"}
        subprocess.run(["bash", str(REPO / "launch/local-slurm.sh"), "start"], check=True, env=env,
                       capture_output=True)
        spec = write_spec(out, "bench_launch", args.runs)
        (out / "plain.py").write_text(PLAIN)
        subprocess.run(["scontrol", "update", "nodename=localhost", "state=drain", "reason=bench"], check=True)
        masters: list[str] = []
        try:
            sweep_t, plain_t, status_t, sacct_t, before_t = [], [], [], [], []
            for i in range(args.repeat):
                root = out / f"tree-launch-{i}"
                settle()
                if i % 2:  # the one that goes second submits to a controller holding 10,000 more jobs
                    plain_w, _, text = timed([sys.executable, str(out / "plain.py"), str(out / f"plain-{i}"),
                                              str(args.runs), "1000"])
                    settle()
                w, _, _ = timed(sweep_cmd("launch", str(spec), "--cluster", "slurm", "--root", str(root)))
                sweep_t.append(w)
                ids = json.loads((root / ".sweep/jobs/bench_launch.json").read_text()).values()
                ours = sorted({j.split("_")[0] for j in ids})
                if not i % 2:
                    settle()
                    plain_w, _, text = timed([sys.executable, str(out / "plain.py"), str(out / f"plain-{i}"),
                                              str(args.runs), "1000"])
                plain_t.append(plain_w)
                masters += ours + text.split()
                for _ in range(args.repeat):  # status of the pending runs, and one plain sacct call
                    status_t.append(timed(sweep_cmd("status", str(spec), "--root", str(root)))[0])
                    if args.baseline:
                        before_t.append(timed(sweep_cmd("status", str(spec), "--root", str(root)),
                                              cwd=args.baseline)[0])
                    sacct_t.append(timed(["sacct", "-X", "-n", "-P", "-o", "JobID,State", "-j", ",".join(ours)])[0])
                subprocess.run(["scancel", *ours, *text.split()], check=False)
                settle()  # the next launch must not pay for this cancel (it did: 2x plain, 2026-12-04)
            res["launch"] = {"runs": args.runs, "sweep_s": sweep_t, "plain_map_array_s": plain_t,
                             "ratio_best": round(min(sweep_t) / min(plain_t), 2)}
            res["status_pending"] = {"runs": args.runs, "sweep_s": status_t, "plain_sacct_s": sacct_t,
                                     "ratio_best": round(min(status_t) / min(sacct_t), 2)}
            if before_t:
                res["status_pending"].update(before_sweep_s=before_t,  # type: ignore[union-attr]
                                             before_ratio_best=round(min(before_t) / min(sacct_t), 2))
            res["snapshot_dirs"] = len(list((out / "tree-launch-0" / ".sweep" / "code").iterdir()))
        finally:
            subprocess.run(["scancel", *masters], check=False, capture_output=True)
            subprocess.run(["scontrol", "update", "nodename=localhost", "state=resume"], check=True)
        print(json.dumps(res), flush=True)

    for n in args.big:
        spec = write_spec(out, f"bench_done_{n}", n)
        root = out / f"tree-done-{n}"
        t = time.perf_counter()
        write_completed_tree(spec, root)
        row: dict[str, object] = {"runs": n, "write_tree_s": round(time.perf_counter() - t, 1)}
        for label, extra in (("status", []), ("status_v", ["-v"])):
            samples: dict[str, list[tuple[float, float, str]]] = {v: [] for v, _ in versions(args.baseline)}
            for _ in range(args.repeat):  # the versions alternate
                for v, cwd in versions(args.baseline):
                    samples[v].append(timed(sweep_cmd("status", str(spec), "--root", str(root), *extra), cwd=cwd))
            for v, runs in samples.items():
                row[f"{v}{label}_s"] = [w for w, _, _ in runs]
                row[f"{v}{label}_rss_mb"] = round(min(m for _, m, _ in runs))
        for v, cwd in versions(args.baseline):
            w, m, _ = timed(sweep_cmd("collect", str(spec), "--root", str(root), "-o", str(out / f"{v}r{n}.parquet")),
                            cwd=cwd)
            row[f"{v}collect_s"], row[f"{v}collect_rss_mb"] = w, round(m)
        if args.baseline:
            row["collect_same_table"] = same_table(out / f"before_r{n}.parquet", out / f"r{n}.parquet")
        row["record_jobs_s"] = record_jobs_figures(n, out)
        res[f"done_{n}"] = row
        print(json.dumps(res), flush=True)
    res["loadavg_end"] = os.getloadavg()
    print(json.dumps(res, indent=1))
    for n in args.big:  # after the figures: removing 400,000 files takes minutes
        shutil.rmtree(out / f"tree-done-{n}", ignore_errors=True)


if __name__ == "__main__":
    main()
