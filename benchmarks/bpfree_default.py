"""The BP-free default (`mnist_tt_fast`) over several seeds: test accuracy and the wall time of the whole
`hwsim train` command (start-up and data loading included), one seed after another on an otherwise idle
machine. Goal (issue 30): mean test accuracy >= 94 % in <= 5 minutes per run on 2 CPU cores.
Writes benchmarks/results/bpfree_default.json; the runs stay in runs/bpfree_default/seed<S>/.

    python benchmarks/bpfree_default.py [--seeds 0 1 2] [--config mnist_tt_fast]
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import save

GOAL_ACCURACY, GOAL_SECONDS = 0.94, 300


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--config", default="mnist_tt_fast")
    args = ap.parse_args()
    rows = []
    for seed in args.seeds:
        out = Path("runs/bpfree_default") / f"seed{seed}"
        command = [sys.executable, "-m", "hwsim", "train", args.config, "--quiet", "--set", f"seed={seed}",
                   "--out", str(out)]
        t0 = time.perf_counter()
        subprocess.run(command, check=True)
        wall = time.perf_counter() - t0
        metrics = json.loads((out / "metrics.json").read_text())
        rows.append({"seed": seed, "test_accuracy": metrics["test_accuracy"],
                     "best_test_accuracy": metrics["best_test_accuracy"],
                     "forward_queries": metrics["forward_queries"], "steps": metrics["steps"],
                     "command_wall_s": round(wall, 1), "train_wall_s": metrics["wall_s"]})
        print(f"seed {seed}: {metrics['test_accuracy']:.2%} in {wall:.0f} s", flush=True)
    mean_acc = statistics.mean(r["test_accuracy"] for r in rows)
    slowest = max(r["command_wall_s"] for r in rows)
    save("bpfree_default", {
        "config": args.config, "rows": rows,
        "mean_test_accuracy": round(mean_acc, 4), "slowest_command_wall_s": slowest,
        "goal": {"mean_test_accuracy": GOAL_ACCURACY, "seconds": GOAL_SECONDS,
                 "met": mean_acc >= GOAL_ACCURACY and slowest <= GOAL_SECONDS}})


if __name__ == "__main__":
    main()
