"""Wall time of ``hwsim --help`` and of every subcommand's ``--help``, each a fresh process (interpreter
start, imports, argument parsing), as a user types it.

    python benchmarks/cli_help_time.py [--repeats 10]   # -> benchmarks/results/cli_help_time.json

Reports the median and the slowest of ``--repeats`` runs per command line after one warm-up run (the
first run of a fresh install also compiles .pyc files). The target is well under 1 s: help imports no
torch (hwsim/cli.py imports the heavy modules inside the commands).
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import save

COMMAND_LINES = [["--help"], ["train", "--help"], ["pinn", "--help"], ["eval", "--help"], ["compare", "--help"],
                 ["energy", "--help"], ["info", "--help"], ["rtl", "--help"], ["rtl", "verify", "--help"],
                 ["rtl", "synth", "--help"]]


def hwsim_executable() -> list[str]:
    """The installed ``hwsim`` script next to this interpreter (what a user runs), else ``python -m hwsim``."""
    script = Path(sys.executable).parent / "hwsim"
    if script.is_file():
        return [str(script)]
    found = shutil.which("hwsim")
    return [found] if found else [sys.executable, "-m", "hwsim"]


def wall_seconds(argv: list[str], repeats: int) -> list[float]:
    """Wall seconds of ``repeats`` runs of ``argv`` (after one warm-up run); each must exit 0."""
    subprocess.run(argv, check=True, capture_output=True)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        subprocess.run(argv, check=True, capture_output=True)
        times.append(time.perf_counter() - t)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=10, help="timed runs per command line (default 10)")
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error(f"--repeats: {args.repeats} is not allowed; use a number >= 1")
    exe = hwsim_executable()
    rows = []
    for line in COMMAND_LINES:
        times = wall_seconds(exe + line, args.repeats)
        rows.append({"command": "hwsim " + " ".join(line), "median_s": round(statistics.median(times), 4),
                     "max_s": round(max(times), 4), "repeats": args.repeats})
        print(f"{rows[-1]['command']:28s} median {rows[-1]['median_s']:.3f} s, slowest {rows[-1]['max_s']:.3f} s")
    top = rows[0]
    save("cli_help_time", {"executable": " ".join(exe), "hwsim_help_median_s": top["median_s"],
                           "hwsim_help_max_s": top["max_s"], "slowest_help_s": max(r["max_s"] for r in rows),
                           "rows": rows})


if __name__ == "__main__":
    main()
