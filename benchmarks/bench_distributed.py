"""Step time vs ranks (1 and 2 on this machine) for the ideal, photonic and rtl backends, the bytes the
ranks exchange per step, and a model of the speed-up on N ranks.

Each case is one `hwsim train` run as 1 process with torch's default threads (both cores: what a user
gets), as 1 process with one thread, and as `--nproc 2` (torchrun: one thread per rank); the step time is
taken between two evaluations (metrics.jsonl wall_s), so start-up (imports, data, building the RTL
simulator) is not in it; each setting runs ``--repeats`` times, interleaved, and its fastest run counts.
The speed-up is against the default 1-process run.

Model for N ranks, each on a machine (or core) of its own: a step is a part every rank repeats
(directions, the optimizer, evaluations, what the shares cannot split evenly), the queries, shared, and
the step's collectives: t(N) = r + (t1 - r) / N + c (N - 1), with t1 the one-thread time, c the measured
time of one step's collectives between 2 ranks (one all_gather of the losses, one of the event counts, one
of the stop flag; gloo over loopback, ``--latency``: a ring all_gather takes N - 1 rounds) and r from the
measured 2-rank time: t2 = r + (t1 - r) / 2 + c. Over a network c grows with its latency (writes
benchmarks/results/distributed.json)."""
from __future__ import annotations

import argparse
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
                                                "backend.noise=typical", "backend.calibrate=true"], 20),
    "photonic typical, in situ (phases; mnist_tt_zo)": ("mnist_tt_zo", DATA + [
        "backend.name=photonic", "backend.noise=typical", "backend.params=phases", "estimator.rge.mu=0.05"], 20),
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


def collectives_s(queries: int, reps: int = 2000) -> float:
    """Seconds per step of a 2-rank step's collectives over loopback gloo (a run of this script with
    ``--latency`` under torchrun): the losses of ``queries`` queries, an event-count dictionary, the stop flag."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "latency.json"
        args = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", __file__,
                "--latency", str(out), "--queries", str(queries), "--reps", str(reps)]
        done = subprocess.run(args, capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"{' '.join(args)} failed:\n{done.stderr[-2000:]}")
        return json.loads(out.read_text())["seconds_per_step"]


def measure_collectives(out: str, queries: int, reps: int) -> None:
    """Under torchrun: time ``reps`` steps' collectives (as hwsim.distributed.ShardedObjective and the loop
    make them); rank 0 writes the mean to ``out``."""
    import time

    import torch

    from hwsim.distributed import from_environment

    ranks = from_environment()
    half = queries // 2
    ranges = [[(0, half)], [(half, queries)]]
    counts = {f"counter_{k}": 1000.0 * k for k in range(20)}           # a backend's step counts, about as many
    lo, hi = ranges[ranks.rank][0]
    local = torch.zeros(hi - lo, dtype=torch.float64)
    for i in range(reps + 50):
        if i == 50:                                                    # after a warm-up
            ranks.barrier()
            t0 = time.perf_counter()
        ranks.gather_assigned(local, ranges)
        ranks.all_gather(counts)
        ranks.first_set(None)
    seconds = (time.perf_counter() - t0) / reps
    if ranks.main:
        Path(out).write_text(json.dumps({"seconds_per_step": seconds}))
    ranks.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=2, help="runs of each setting, interleaved; the fastest counts")
    ap.add_argument("--latency", metavar="JSON", help=argparse.SUPPRESS)       # the torchrun child of collectives_s
    ap.add_argument("--queries", type=int, default=81, help=argparse.SUPPRESS)
    ap.add_argument("--reps", type=int, default=2000, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.latency:
        return measure_collectives(args.latency, args.queries, args.reps)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, (config, sets, steps) in CASES.items():
            runs: dict[str, list] = {"one": [], "one_thread": [], "two": []}
            for _ in range(args.repeats):          # interleaved: a slow spell of the machine hits every setting
                runs["one"].append(step_time(config, sets, steps, 1, Path(tmp) / "one"))
                runs["one_thread"].append(step_time(config, sets, steps, 1, Path(tmp) / "one_thread", threads=1))
                runs["two"].append(step_time(config, sets, steps, 2, Path(tmp) / "two"))
            (t1, m1), (t1_one, _), (t2, m2) = (min(runs[k], key=lambda r: r[0]) for k in ("one", "one_thread", "two"))
            queries = m1["forward_queries"] // m1["steps"]
            c = collectives_s(queries)
            fixed = max(0.0, 2 * t2 - t1_one - 2 * c)
            model = {n: round(t1_one / (fixed + (t1_one - fixed) / n + c * (n - 1)), 2) for n in (2, 4, 8, 16, 64)}
            rows.append({"case": name, "steps_timed": steps, "step_s_1": round(t1, 4), "step_s_1_one_thread": round(t1_one, 4),
                         "step_s_2": round(t2, 4), "speedup_2": round(t1 / t2, 2),
                         "speedup_2_vs_one_thread": round(t1_one / t2, 2), "queries_per_step": queries,
                         "collectives_s_per_step": round(c, 6),
                         "exchanged_bytes_per_step": m2["exchanged_bytes_per_step"],
                         "same_accuracy": len({m["test_accuracy"] for r in runs.values() for _, m in r}) == 1,
                         "repeated_s_per_step": round(fixed, 4), "modelled_speedup": model})
            print(rows[-1], flush=True)
    save("distributed", {"rows": rows})


if __name__ == "__main__":
    main()
