"""Shared helpers for the benchmark scripts (run them with hwsim installed, e.g. `make bench`)."""
from __future__ import annotations

import json
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch

from hwsim.report import write_json
from hwsim.runtime import keep_freed_memory

ALLOCATOR_TUNED = keep_freed_memory()     # as the hwsim command does (hwsim.runtime): timings match its runs

RESULTS = Path(__file__).resolve().parent / "results"


def timeit(fn, repeats: int = 5, warmup: int = 1) -> float:
    """Median wall seconds of ``fn()`` over ``repeats`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def machine() -> dict:
    return {"python": platform.python_version(), "torch": torch.__version__, "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "processor": platform.processor() or platform.machine(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "allocator_keeps_freed_memory": ALLOCATOR_TUNED}


def invocation() -> str:
    """This script's command line as run from the repository root (what a results JSON records)."""
    script = Path(sys.argv[0]).resolve()
    root = RESULTS.parent.parent
    shown = script.relative_to(root) if script.is_relative_to(root) else script
    return shlex.join(["python", str(shown), *sys.argv[1:]])


def save(name: str, payload: dict) -> Path:
    """benchmarks/results/NAME.json: the machine, the command that ran (``invocation``) and ``payload``."""
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    write_json(path, {"machine": machine(), "command": invocation(), **payload})
    print(json.dumps({k: v for k, v in payload.items() if k != "rows"}, indent=2))
    print(f"wrote {path}")
    return path


def finished_run(config: str, overrides: list[str], out: Path, stored: dict | None, kind=None) -> dict | None:
    """The metrics of a run already done with the same config: from its run directory ``out``, or from
    ``stored`` (a row of an earlier results JSON with "config" and "metrics"), so a sweep can go on in a
    later session. Keys added to the config schema since then compare at their defaults; keys that never
    change a number (hwsim.loop.HARMLESS: the chunking, checkpoints, energy) are not compared."""
    from hwsim.config import Config, from_dict, load_config, read_raw
    from hwsim.loop import numeric_changes

    kind = kind or Config
    want = load_config(config, overrides, kind).to_dict()
    same = lambda raw: not numeric_changes(from_dict(kind, raw).to_dict(), want)  # noqa: E731
    if (out / "metrics.json").is_file() and (out / "config.yaml").is_file() and same(read_raw(str(out / "config.yaml"))):
        return json.loads((out / "metrics.json").read_text())
    return stored["metrics"] if stored and same(stored["config"]) else None
