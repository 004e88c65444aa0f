"""What checkpoints cost a training run (mnist_tt_zo, the paper-setting MNIST run).

Measures, in one run: the size of a checkpoint file of the default run after some steps (the epoch's data
order drawn, Adam's moments filled); the median time to write one (serialize + sha256 + temp file, fsync,
rename); and the same training run with a checkpoint after every step against one with checkpoints only
at the start and the end (after a warm-up run, alternated, median of --runs each), whose difference per
step is the in-situ cost of a checkpoint. The overhead at
the default cadence (train.checkpoint.every_s) follows from the write time. Writes
benchmarks/results/checkpoint.json.

    python benchmarks/bench_checkpoint.py [--steps 300] [--repeats 20]
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from common import save, timeit
from hwsim import checkpoint
from hwsim.config import CheckpointConfig, load_config
from hwsim.train import train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    base = [f"train.steps={args.steps}", f"train.eval_every={args.steps}"]
    cadences = {"end_only": ["train.checkpoint.every_s=null"],
                "every_step": ["train.checkpoint.every_steps=1", "train.checkpoint.every_s=null"]}
    times: dict[str, list[float]] = {name: [] for name in cadences}
    with tempfile.TemporaryDirectory() as tmp:
        train(load_config("mnist_tt_zo", ["train.steps=20", "train.eval_every=20"]), None, progress=False,
              log=lambda s: None)                                       # warm-up: data, threads, caches
        for _ in range(args.runs):
            for name, cadence in cadences.items():
                t = time.perf_counter()
                train(load_config("mnist_tt_zo", base + cadence), Path(tmp) / name, progress=False, log=lambda s: None)
                times[name].append(time.perf_counter() - t)
        walls = {name: statistics.median(t) for name, t in times.items()}
        last = checkpoint.latest(Path(tmp) / "every_step")
        state = checkpoint.load(last)
        size = last.stat().st_size
        write_s = timeit(lambda: checkpoint.save(Path(tmp) / "probe" / "step.pt", state), repeats=args.repeats)
        read_s = timeit(lambda: checkpoint.load(last), repeats=args.repeats)
    per_step = walls["end_only"] / args.steps
    in_situ = (walls["every_step"] - walls["end_only"]) / args.steps
    every_s = CheckpointConfig().every_s
    save("checkpoint", {
        "config": "mnist_tt_zo", "steps": args.steps, "checkpoint_bytes": size,
        "write_s_median": round(write_s, 5), "read_s_median": round(read_s, 5),
        "run_wall_s_median": {k: round(v, 2) for k, v in walls.items()},
        "run_wall_s_all": {k: [round(x, 2) for x in v] for k, v in times.items()},
        "step_s_with_eval_and_setup": round(per_step, 5),
        "checkpoint_every_step_cost_s": round(in_situ, 5),
        "overhead_every_step": round(in_situ / per_step, 4),
        "default_every_s": every_s, "overhead_default": round(write_s / every_s, 7),
    })


if __name__ == "__main__":
    main()
