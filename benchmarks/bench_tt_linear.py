"""Exact TT-linear evaluation on this CPU: dense reconstruction + one GEMM vs the core-by-core einsum.

For each shape prints both times, the winner, what ``method="auto"`` picks, and the measured cost of
one einsum flop in GEMM flops (the constant hwsim.tt.DIRECT_FLOP_PENALTY stands for). Writes
benchmarks/results/tt_linear.json.

    python benchmarks/bench_tt_linear.py [--repeats 3]
"""
from __future__ import annotations

import argparse

import torch

from common import save, timeit
from hwsim.tt import TTShape, choose_method, tt_linear

CASES = [  # (name, in, out, rank, in_factors, out_factors, rows, queries)
    ("mnist 784->1024 r6, batch 256", 784, 1024, 6, (7, 4, 4, 7), (8, 4, 4, 8), 256, 1),
    ("mnist 784->1024 r6, batch 2000", 784, 1024, 6, (7, 4, 4, 7), (8, 4, 4, 8), 2000, 1),
    ("mnist 784->1024 r6, 10 queries x batch 256", 784, 1024, 6, (7, 4, 4, 7), (8, 4, 4, 8), 256, 10),
    ("mnist 1024->10 r6, batch 2000", 1024, 10, 6, (8, 4, 4, 8), (1, 5, 2, 1), 2000, 1),
    ("mnist 784->256 r4, batch 256", 784, 256, 4, (4, 7, 7, 4), (4, 4, 4, 4), 256, 1),
    ("mnist 784->256 r4, 10 queries x batch 64", 784, 256, 4, (4, 7, 7, 4), (4, 4, 4, 4), 64, 10),
    ("hjb 512->512 r2, 46k rows", 512, 512, 2, (8, 8, 8), (8, 8, 8), 46250, 1),
]


def measure(cases: list[tuple], repeats: int, device: str = "cpu", dtype: torch.dtype = torch.float32) -> list[dict]:
    """Both methods' median times for every case of ``cases`` (as CASES) on ``device``, the winner, what
    "auto" picks and the measured cost of one einsum flop in GEMM flops."""
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    rows = []
    for name, p, m, r, nf, mf, batch, queries in cases:
        shape = TTShape.build(p, m, r, nf, mf)
        lead = (queries,) if queries > 1 else ()
        cores = [torch.randn(*lead, *c, device=device, dtype=dtype) for c in shape.core_shapes]
        x = torch.rand(batch, p, device=device, dtype=dtype)

        def run(meth: str) -> None:
            tt_linear(cores, x, meth)
            sync()
        t = {meth: timeit(lambda: run(meth), repeats) for meth in ("dense", "direct")}
        fl = {"dense": shape.dense_flops(batch, queries), "direct": shape.direct_flops(batch, queries)}
        rows.append({"case": name, "dtype": str(dtype).removeprefix("torch."), "dense_s": t["dense"],
                     "direct_s": t["direct"], "faster": min(t, key=t.get), "auto_picks": choose_method(shape, batch, queries),
                     "dense_macs": fl["dense"], "direct_macs": fl["direct"],
                     "direct_flop_cost_in_gemm_flops": (t["direct"] / fl["direct"]) / (t["dense"] / fl["dense"])})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    save("tt_linear", {"cases": measure(CASES, args.repeats)})


if __name__ == "__main__":
    main()
