"""``hwsim rtl verify`` and ``hwsim rtl synth``: the rtl backend's command-line tools, a command plug-in
(entry-point group ``hwsim.commands``: a module with ``add_commands(subparsers)`` and, optionally,
``info_lines()`` for ``hwsim info``). They sit with the Verilog, above the backend: they build configs
and networks (hwsim.build, hwsim.config), which the backend itself never imports.
"""
from __future__ import annotations

import shlex
import sys
from pathlib import Path

from hwsim.cli import require_positive
from hwsim.text import excerpt


def add_commands(sub) -> None:
    p = sub.add_parser("rtl", help="the Verilog TT core: check it against the fixed-point spec")
    rtl = p.add_subparsers(dest="rtl_command", required=True)
    p = rtl.add_parser("verify", help="random and corner vectors through the RTL core and the fixed emulator, "
                                      "compared bit for bit")
    p.add_argument("--sim", choices=["verilator", "icarus"], default="verilator")
    p.add_argument("--vectors", type=int, default=2500, help="vectors per layer (default 2500)")
    p.add_argument("--config", help="check this config's TT layers with its formats (default: the MNIST "
                                    "model's layers and two more shapes)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a key of --config")
    p.add_argument("--lanes", type=int, default=16, help="MAC lanes of the core (default 16)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=3600, help="wall-clock limit of one simulator run, s")
    p.add_argument("--json", help="write the results here (default runs/rtl_verify_<sim>.json)")
    p.add_argument("--waves", metavar="LO:HI", help="also dump vectors LO..HI-1 of every case as FST waveforms "
                                                    "(next to the JSON, in <json name>_waves/)")
    p.set_defaults(func=_rtl_verify)
    p = rtl.add_parser("synth", help="Yosys synthesis estimates of the core (cells, LUT/FF/DSP/BRAM, longest "
                                     "path, no latches) for the default build and a config's builds")
    p.add_argument("--config", default="mnist_tt_zo", help="the config whose rtl builds to synthesize (default mnist_tt_zo)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a key of --config (e.g. backend.bits=6)")
    p.add_argument("--lanes", type=int, default=16, help="MAC lanes of the core (default 16)")
    p.add_argument("--target", default="xilinx", choices=["xilinx", "ecp5", "ice40"], help="FPGA family to map to")
    p.add_argument("--timeout", type=float, default=3600, help="wall-clock limit of one Yosys run, s")
    p.add_argument("--json", help="write the results here (default runs/rtl_synth_<target>.json)")
    p.set_defaults(func=_rtl_synth)


def info_lines() -> list[str]:
    """The simulators and the synthesiser the rtl backend finds on this machine."""
    from hwsim.backends.rtl.sim import RtlError, available
    from hwsim.rtl.synth import yosys

    lines = ["simulators (rtl backend):"]
    lines += [f"  {sim:10s} {where}" for sim, where in available().items()]
    try:
        lines.append(f"  {'yosys':10s} {yosys()[0]} (hwsim rtl synth)")
    except RtlError as e:
        lines.append(f"  {'yosys':10s} missing: {e}")
    return lines


def _rtl_verify(args) -> int:
    from hwsim.backends.rtl.sim import RtlError
    from hwsim.rtl.verify import builtin_cases, config_cases, verify
    from hwsim.config import ConfigError
    from hwsim.report import write_json

    require_positive(vectors=args.vectors, lanes=args.lanes, timeout=args.timeout)
    cases = config_cases(args.config, args.set or []) if args.config else builtin_cases()
    out = Path(args.json or f"runs/rtl_verify_{args.sim}.json")
    waves = None
    if args.waves:
        lo, _, hi = args.waves.partition(":")
        if not (lo.isdigit() and hi.isdigit() and int(lo) < int(hi)):
            raise ConfigError(f"--waves: {excerpt(args.waves)} is not allowed; use a vector range LO:HI, e.g. 0:8")
        waves = (out.parent / f"{out.stem}_waves", int(lo), int(hi))
    try:
        result = verify(cases, args.vectors, args.sim, args.lanes, args.seed, timeout_s=args.timeout, waves=waves)
    except (RtlError, ValueError) as e:
        print(f"hwsim: error: {e}", file=sys.stderr)
        return 2
    write_json(out, {"command": shlex.join(["hwsim", *args.argv]), **result})
    print(f"{result['vectors']} vectors, {result['mismatches']} mismatches ({args.sim}, {args.lanes} lanes, "
          f"{result['wall_s']:.1f} s); results in {out}")
    return 1 if result["mismatches"] else 0


def _rtl_synth(args) -> int:
    from hwsim.rtl.synth import config_builds, synthesize
    from hwsim.report import markdown_table, write_json

    require_positive(lanes=args.lanes, timeout=args.timeout)
    builds = [{"name": "default (the Verilog defaults)", "parameters": {}, "layers": []}]
    builds += [{"name": f"{args.config} build {k}", **b}
               for k, b in enumerate(config_builds(args.config, args.set or [], args.lanes))]
    rows = []
    for build in builds:
        print(f"hwsim rtl synth: {build['name']} ({args.target}) ...", flush=True)
        result = synthesize(build["parameters"], args.target, args.timeout)
        rows.append({**build, **result})
    out = Path(args.json or f"runs/rtl_synth_{args.target}.json")
    write_json(out, {"command": shlex.join(["hwsim", *args.argv]),
                     "estimates": "Yosys synthesis estimates, not a vendor place-and-route", "rows": rows})
    table = [{"build": r["name"], **r["fpga"], "gates": r["gates"], "flip_flops": r["flip_flops"],
              "memories": r["memories"], "memory_bits": r["memory_bits"],
              "multipliers": r["multipliers"], "levels": r["longest_path_gates"], "latches": r["latches"],
              "cycles": ", ".join(f"layer {x['layer']} ({x['shape']}): {x['cycles_per_group']:,}" for x in r["layers"])}
             for r in rows]
    columns = [("build", "build")] + [(k, f"{k} ({args.target})") for k in rows[0]["fpga"]] + [
        ("gates", "gates (generic)"), ("flip_flops", "flip-flops (generic)"), ("memories", "memories (RTL)"),
        ("memory_bits", "memory bits"), ("multipliers", "multipliers (RTL)"),
        ("levels", "longest path (gates)"), ("latches", "latches"),
        ("cycles", f"simulated cycles per group of {args.lanes} vectors (exact)")]
    print(f"Yosys estimates ({args.target} mapping; not a vendor place-and-route):")
    print(markdown_table(table, columns))
    print(f"results in {out}")
    return 0
