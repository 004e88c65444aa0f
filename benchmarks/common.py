"""Shared helpers for the benchmark scripts (run them with hwsim installed, e.g. `make bench`)."""
from __future__ import annotations

import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from hwsim.report import write_json

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
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def save(name: str, payload: dict) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    write_json(path, {"machine": machine(), **payload})
    print(json.dumps(payload, indent=2))
    print(f"wrote {path}")
    return path
