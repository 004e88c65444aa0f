"""docs/img/rtl_waves.png: one call of the MNIST model's second TT layer (256 -> 10,
16 vectors) on the Verilog core, dumped as FST (`waves=`), converted with GTKWave's `fst2vcd` and drawn:
the handshakes and the step sequence a designer looks at first.

    python benchmarks/rtl_waves.py [--sim verilator|icarus]     (needs fst2vcd: apt-get install gtkwave)
"""
from __future__ import annotations

import argparse
import subprocess
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from hwsim.rtl.verify import builtin_cases, job_inputs  # noqa: E402
from hwsim.backends.rtl.run import run_tt_layer  # noqa: E402

SIGNALS = ["clk", "cfg_we", "start", "busy", "in_valid", "in_ready", "step_done", "step_index", "out_valid", "done"]
OUT = Path(__file__).resolve().parent.parent / "docs" / "img" / "rtl_waves.png"


def read_vcd(text: str, names: list[str]) -> dict[str, list[tuple[int, int]]]:
    """(time, value) changes of the top-level signals ``names`` of a VCD text (values as integers)."""
    codes, changes, now, scope = {}, {n: [] for n in names}, 0, []
    for line in text.splitlines():
        parts = line.split()
        if not parts:
            continue
        if parts[0] == "$scope":
            scope.append(parts[2])
        elif parts[0] == "$upscope":
            scope.pop()
        elif parts[0] == "$var" and len(scope) == 1 and parts[4] in names:
            codes.setdefault(parts[3], parts[4])
        elif line.startswith("#"):
            now = int(line[1:])
        elif line[0] in "01xz" and line[1:] in codes:
            changes[codes[line[1:]]].append((now, int(line[0]) if line[0] in "01" else 0))
        elif line[0] == "b" and len(parts) == 2 and parts[1] in codes:
            bits = parts[0][1:]
            changes[codes[parts[1]]].append((now, int(bits, 2) if set(bits) <= {"0", "1"} else 0))
    return changes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sim", default="verilator", choices=["verilator", "icarus"])
    args = ap.parse_args()
    case = builtin_cases()[1]                                  # the MNIST model's second layer
    cores, x, bias = job_inputs(case, "random", 16, np.random.default_rng(0))
    with tempfile.TemporaryDirectory() as tmp:
        fst = Path(tmp) / "call.fst"
        run_tt_layer(case.core_shapes, case.spec, cores, x, bias, sim=args.sim, waves=fst)
        vcd = subprocess.run(["fst2vcd", str(fst)], capture_output=True, text=True, check=True).stdout
    changes = read_vcd(vcd, SIGNALS)
    end = max(t for c in changes.values() for t, _ in c)
    fig, axes = plt.subplots(len(SIGNALS), 1, figsize=(13, 0.55 * len(SIGNALS) + 0.8), sharex=True)
    for ax, name in zip(axes, SIGNALS):
        steps = changes[name] + [(end, changes[name][-1][1] if changes[name] else 0)]
        t = np.array([s[0] for s in steps]) / 1000.0                  # ps -> ns
        v = np.array([s[1] for s in steps], dtype=float)
        if name == "step_index":
            ax.step(t, v, where="post", lw=0.9, color="tab:purple")
        else:
            ax.fill_between(t, 0, v, step="post", alpha=0.5, lw=0.6,
                            color="tab:gray" if name == "clk" else "tab:blue")
            ax.set_ylim(-0.1, 1.2)
        ax.set_yticks([])
        ax.set_ylabel(name, rotation=0, ha="right", va="center", fontsize=8)
    axes[-1].set_xlabel("simulated time (ns; clock period 10 ns)")
    axes[0].set_title(f"{case.name}: one call of 16 vectors on the 16-lane core ({args.sim}, FST -> fst2vcd)",
                      fontsize=9)
    fig.tight_layout()
    OUT.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(OUT, dpi=110)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
