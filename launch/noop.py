"""A trivial experiment that exercises the harness without any ML: it counts.

Used by the harness tests and the 10,000-run benchmark. Each step draws from a
seeded ``random.Random`` and logs a running mean; its resume state (step + the
generator's state) is a JSON file written atomically, so a killed or requeued
run continues exactly where its last saved step left off.
"""

from __future__ import annotations

import json
import os
import random
import time
from typing import Any

from launch.experiment import RunContext

RESUME_FILE = "noop_state.json"


class NoopExperiment:
    name = "noop"

    def defaults(self) -> dict[str, Any]:
        return {"steps": 1, "step_sleep_s": 0.0, "fail_at_step": -1, "x": 0, "y": 0.0, "label": "a",
                "seed": 0, "lengths": [1, 2]}

    def check(self, config: dict[str, Any]) -> list[str]:
        problems = []
        if config["steps"] < 1:
            problems.append(f"steps: must be at least 1, got {config['steps']}")
        if config["step_sleep_s"] < 0:
            problems.append(f"step_sleep_s: must be >= 0, got {config['step_sleep_s']}")
        return problems

    def total_steps(self, config: dict[str, Any]) -> int:
        return int(config["steps"])

    def run(self, config: dict[str, Any], ctx: RunContext) -> None:
        path = ctx.run_dir / RESUME_FILE
        rng = random.Random(config["seed"])
        step, total = 0, 0.0
        if path.exists():  # resume
            saved = json.loads(path.read_text())
            step, total = saved["step"], saved["total"]
            rng.setstate((saved["rng"][0], tuple(saved["rng"][1]), saved["rng"][2]))
            ctx.truncate_metrics(step)
            print(f"noop: resuming at step {step}")
        while step < config["steps"]:
            if step == config["fail_at_step"]:
                raise RuntimeError(f"noop: failing at step {step} as asked (fail_at_step)")
            time.sleep(config["step_sleep_s"])
            total += rng.random() + config["x"] + config["y"]
            step += 1
            ctx.log(step, {"value": total / step, "loss": 1.0 / step}, split="train")
            for length in config["lengths"]:
                ctx.log(step, {"accuracy": min(1.0, step / config["steps"] / length)}, split="val", length=length)
            state = {"step": step, "total": total, "rng": list(rng.getstate())}
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(state))
            os.replace(tmp, path)
            ctx.progress(step, config["steps"])
        print(f"noop: done after {step} steps, mean {total / step:.6f}")


EXPERIMENT = NoopExperiment()
