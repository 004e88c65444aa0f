"""Step time vs ranks (1 and 2 on this machine) for the ideal, photonic and rtl backends, the bytes the
ranks exchange per step, and a model of the speed-up on N ranks.

Each case is one `hwsim train` run as 1 process with torch's default threads (both cores: what a user
gets), as 1 process with one thread, and as `--nproc 2` (torchrun: one thread per rank); the step time is
taken between two evaluations (metrics.jsonl wall_s), so start-up (imports, data, building the RTL
simulator) is not in it. The speed-up is against the default 1-process run. Model for N ranks, each on
a machine (or core) of its own: a step is a part every rank repeats (directions, the optimizer, the gather,
what the shares cannot split evenly) plus the queries, shared: t(N) = f + (t1 - f) / N, with t1 the
one-thread time and f = 2 t2 - t1 from the two measured points (writes benchmarks/results/distributed.json)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from common import save

DATA = ["data.train_limit=2000", "data.val_size=100", "data.test_limit=100", "train.batch_size=128"]
CASES = {
    "ideal (mnist_tt_zo, 784-256-10 TT)": ("mnist_tt_zo", DATA, 40),
    "photonic typical, weights (mnist_tt_zo)": ("mnist_tt_zo", DATA + ["backend.name=photonic",
                                                "backend.noise=typical", "backend.calibrate=true"], 10),
    "photonic typical, in situ (phases; mnist_tt_zo)": ("mnist_tt_zo", DATA + [
        "backend.name=photonic", "backend.noise=typical", "backend.params=phases", "estimator.rge.mu=0.05"], 10),
    "rtl verilator (784-256-10 TT, batch 64, 2 queries per tensor)": (
        "mnist_tt_zo", ["data.train_limit=2000", "data.val_size=16", "data.test_limit=16", "train.batch_size=64",
                        "estimator.rge.num_queries=2", "backend.name=rtl", "backend.sim=verilator"], 3),
}


def step_time(config: str, sets: list[str], steps: int, nproc: int, out: Path, threads: int | None = None) -> tuple[float, dict]:
    """Seconds per step between the evaluations after ``steps`` and ``2 steps``, and metrics.json
    (``threads``: torch's threads in a 1-process run; None: its default)."""
    args = [sys.executable, "-m", "hwsim", "train", config, "--quiet", "--out", str(out), "--force"]
    args += [a for k in sets + [f"train.steps={2 * steps}", f"train.eval_every={steps}"] for a in ("--set", k)]
    if nproc > 1:
        args += ["--nproc", str(nproc)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)} if threads else None
    done = subprocess.run(args, capture_output=True, text=True, env=env)
    if done.returncode:
        raise RuntimeError(f"{' '.join(args)} failed:\n{done.stderr[-2000:]}")
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return (records[-1]["wall_s"] - records[-2]["wall_s"]) / steps, json.loads((out / "metrics.json").read_text())


def main() -> None:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, (config, sets, steps) in CASES.items():
            t1, m1 = step_time(config, sets, steps, 1, Path(tmp) / "one")
            t1_one, _ = step_time(config, sets, steps, 1, Path(tmp) / "one_thread", threads=1)
            t2, m2 = step_time(config, sets, steps, 2, Path(tmp) / "two")
            fixed = max(0.0, 2 * t2 - t1_one)
            model = {n: round(t1_one / (fixed + (t1_one - fixed) / n), 2) for n in (2, 4, 8, 16)}
            rows.append({"case": name, "steps_timed": steps, "step_s_1": round(t1, 4), "step_s_1_one_thread": round(t1_one, 4),
                         "step_s_2": round(t2, 4), "speedup_2": round(t1 / t2, 2),
                         "speedup_2_vs_one_thread": round(t1_one / t2, 2), "queries_per_step": m1["forward_queries"] // m1["steps"],
                         "exchanged_bytes_per_step": m2["exchanged_bytes_per_step"],
                         "same_accuracy": m1["test_accuracy"] == m2["test_accuracy"],
                         "repeated_s_per_step": round(fixed, 4), "modelled_speedup": model})
            print(rows[-1], flush=True)
    save("distributed", {"rows": rows})


if __name__ == "__main__":
    main()
