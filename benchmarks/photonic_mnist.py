"""The photonic deployment table and plot of docs/results.md: the ideal-trained MNIST TT model
(runs/mnist_tt_zo: `hwsim train mnist_tt_zo`, the paper's RGE setting) deployed on a simulated photonic chip, then trained in situ in the phase
domain (BP-free: ZO perturbs the MZI phases, the host never sees a weight) on that chip.

    python benchmarks/photonic_mnist.py [--rows ...] [--steps 1000] [--collect]

Rows: deploy_<chip> (test accuracy of the programmed weights, no training), insitu_<chip> (phase-domain
RGE from the deployed phases for ``--steps`` steps; "deployed_curve" holds the untrained deployment's
accuracy on the same chip as it drifts over the same steps). Every chip is gain-calibrated
(``calibrate: gain``) so the layer outputs keep their scale despite the insertion loss. Chips: ideal,
typical (the values of Zhao et al., arXiv:2401.00413: 1 rad fabrication bias, drift 0.02 rad), pessimistic (likewise, drift 0.1 rad),
typical_fab / pessimistic_fab (without the fabrication bias and the drift: static errors only), drift
(typical_fab with a drift of 0.1 rad rms per 1,000 steps). Writes runs/photonic_mnist/<row>/, benchmarks/results/photonic_mnist.json
and docs/img/photonic_mnist.png (the calibrated rows alone: photonic_mnist_cal.png); resumable like hjb_table.py (rows may run in parallel processes: then
finish with ``--collect``).

Calibrated rows (not run by default): deploy_<chip>_cal and insitu_<chip>_cal, the same chip calibrated
with ``calibrate: true`` (every shifter's offset and response measured through the chip's DACs and
detectors: backends/photonic/calibration.py) instead of ``gain``; in situ they train for ``--cal-steps``
(default 200) steps, ZO on the phases learning only what calibration left.

    python benchmarks/photonic_mnist.py --rows deploy_typical_cal insitu_typical_cal
    python benchmarks/photonic_mnist.py --calibration-report 0 4    # a typical chip's calibration and its cost
    python benchmarks/photonic_mnist.py --drift-report 0 0.3 1000 250   # drift with and without recalibration
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from common import RESULTS, finished_run, save  # noqa: E402
from hwsim.build import build_backend, build_network  # noqa: E402
from hwsim.config import load_config  # noqa: E402
from hwsim.data import load_dataset  # noqa: E402
from hwsim.report import markdown_table, save_figure  # noqa: E402
from hwsim.train import accuracy, train  # noqa: E402

TRAINED = "runs/mnist_tt_zo"          # `hwsim train mnist_tt_zo`
CHIPS = {
    "ideal": "ideal",
    "typical": "typical",
    "pessimistic": "pessimistic",
    "typical_fab": "{preset: typical, phase_bias: 0.0, drift: 0.0}",
    "pessimistic_fab": "{preset: pessimistic, phase_bias: 0.0, drift: 0.0}",
    "drift": "{preset: typical, phase_bias: 0.0, drift: 0.1}",
}
INSITU_CHIPS = [c for c in CHIPS if c != "ideal"]
CALIBRATED = ["typical_cal", "pessimistic_cal"]   # <chip>_cal: CHIPS[<chip>] with calibrate: true
INSITU = ["backend.params=phases", "backend.calibrate=gain", "estimator.rge.mu=0.05", "optimizer.lr=0.002",
          "optimizer.schedule={name: cosine, min_lr: 0.0001}", f"train.init={TRAINED}"]
DOCS_IMG = Path(__file__).resolve().parent.parent / "docs" / "img"


def overrides(chip: str, steps: int) -> list[str]:
    """The config overrides of a row's chip (``<chip>_cal``: calibrate: true) for ``steps`` steps."""
    calibrated = chip.endswith("_cal")
    insitu = [("backend.calibrate=true" if o == "backend.calibrate=gain" else o) for o in INSITU] if calibrated else INSITU
    return (["backend.name=photonic", f"backend.noise={CHIPS[chip.removesuffix('_cal')]}"] + insitu
            + [f"train.steps={steps}", f"train.eval_every={max(1, steps // 10)}"])


@torch.no_grad()
def deployed(chip: str, steps: int, checkpoints=(0,)) -> list[list]:
    """[step, test accuracy] of the trained weights programmed onto the chip, at each checkpoint step of
    drift (the chip advances one step at a time, so it drifts exactly as during in-situ training)."""
    cfg = load_config("mnist_tt_zo", overrides(chip, steps))
    data = load_dataset(cfg.data.name, cfg.data.path, cfg.data.val_size)
    network = build_network(cfg.model)
    backend = build_backend(cfg.backend, network, cfg.architecture)
    theta = backend.encode(backend.to_backend(torch.load(Path(TRAINED) / "params.pt")["theta"]))
    x, y = torch.from_numpy(data.test.x).to(backend.dtype), torch.from_numpy(data.test.y)
    curve, done = [], 0
    for step in checkpoints:
        for _ in range(step - done):
            backend.advance()
        done = step
        curve.append([step, accuracy(network, backend, theta, x, y, 1000)])
    return curve


def calibration_report(run: str, seeds: list[int]) -> None:
    """Print, per typical chip ``seed`` of ``run``'s network: the report of a fresh ``calibrate: true``
    (backend.calibrate: rms offset error, gauge-aware matrix error, calibration_* counters), its energy and
    device time (the energy model's calibration: terms), the CPU seconds of the fit (one thread), and the
    matrix error's floor: the simulator's true offsets, responses and loss installed instead."""
    import time

    from hwsim.backends.photonic import calibration
    from hwsim.build import build_mapping
    from hwsim.energy.table import load_table
    from hwsim.train import run_config
    torch.set_num_threads(1)
    for seed in seeds:
        cfg = run_config(Path(run), ["backend.name=photonic", "backend.noise=typical", "backend.calibrate=false",
                                     f"backend.chip_seed={seed}"])
        network = build_network(cfg.model)
        backend = build_backend(cfg.backend, network, cfg.architecture)
        start = time.process_time()
        found = backend.calibrate(True)
        cpu = time.process_time() - start
        mapping, table = build_mapping(cfg.architecture, network, backend), load_table(cfg.energy, kind=backend.architecture)
        est = backend.architecture.cost(mapping, {k: v for k, v in found.items() if k.startswith("calibration_")}, table)
        print(f"chip {seed}: " + ", ".join(f"{k} {v:.4g}" for k, v in found.items()))
        print(f"chip {seed}: calibration {est.joules:.4g} J, {est.latency_s * 1e3:.4g} ms of device time, "
              f"{cpu:.1f} s CPU (one thread)", flush=True)
        amp = 10 ** (-backend.noise.insertion_loss_db / 20)
        for region in backend._regions.values():          # the floor: the simulator's true offsets installed
            state = region.state
            state.correction.copy_(state.bias + state.drift)
            state.response.copy_(state.gamma)
            state.transmission.fill_(amp)
            state.gain.copy_(1 / calibration.path_loss(state.transmission, backend.layout))
        rms, worst = backend.matrix_error()
        print(f"chip {seed}: matrix_error with the true offsets and responses installed {rms:.4g} (max {worst:.4g})")


def drift_report(run: str, seed: int, drift: float, steps: int, every: int, images: int = 1000) -> None:
    """Print the test accuracy (first ``images`` test images) of ``run``'s weights deployed on typical chip
    ``seed`` (calibrate: true) with a drift of ``drift`` rad rms per 1,000 steps, every 100 steps over
    ``steps`` steps of drift, without and with ``recalibrate_every: every``."""
    from hwsim.train import initial_params, run_config
    torch.set_num_threads(1)
    for recal in (None, every):
        ov = ["backend.name=photonic", f"backend.noise={{preset: typical, drift: {drift}}}", "backend.calibrate=true",
              f"backend.chip_seed={seed}", f"data.test_limit={images}"]
        cfg = run_config(Path(run), ov + ([f"backend.recalibrate_every={recal}"] if recal else []))
        d = cfg.data
        data = load_dataset(d.name, d.path, d.val_size, d.train_limit, d.test_limit)
        network = build_network(cfg.model)
        backend = build_backend(cfg.backend, network, cfg.architecture)
        theta = backend.encode(backend.to_backend(initial_params(run, network, "eval")))
        x, y = torch.from_numpy(data.test.x).to(backend.data_dtype), torch.from_numpy(data.test.y)
        curve = [(0, accuracy(network, backend, theta, x, y, 1000))]
        for step in range(100, steps + 1, 100):
            backend.advance(100)
            curve.append((step, accuracy(network, backend, theta, x, y, 1000)))
        c = backend.counters()
        print(f"chip {seed}, drift {drift} rad rms / 1000 steps, recalibrate_every {recal}: "
              + " ".join(f"{s}:{100 * a:.1f}" for s, a in curve)
              + f" | calibration runs {c.get('calibration_runs', 0)}, settings {c.get('calibration_settings', 0):.0f}",
              flush=True)


def main() -> None:
    rows = [f"deploy_{c}" for c in CHIPS] + [f"insitu_{c}" for c in INSITU_CHIPS]
    extra = [f"{kind}_{c}" for c in CALIBRATED for kind in ("deploy", "insitu")]
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", nargs="+", choices=rows + extra, default=rows)
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--cal-steps", type=int, default=200, help="in-situ steps of the calibrated (_cal) rows")
    ap.add_argument("--out", default="runs/photonic_mnist")
    ap.add_argument("--collect", action="store_true", help="only gather finished rows, train nothing")
    ap.add_argument("--calibration-report", type=int, nargs="+", metavar="SEED",
                    help="only print the calibration report and cost of these typical chips of --run")
    ap.add_argument("--run", default=TRAINED, help="the run of --calibration-report and --drift-report")
    ap.add_argument("--drift-report", type=float, nargs=4, metavar=("SEED", "DRIFT", "STEPS", "EVERY"),
                    help="only print --run's accuracy on a drifting typical chip without and with recalibration")
    args = ap.parse_args()
    if args.drift_report:
        seed, drift, steps, every = args.drift_report
        return drift_report(args.run, int(seed), drift, int(steps), int(every))
    if args.calibration_report:
        return calibration_report(args.run, args.calibration_report)
    if not (Path(TRAINED) / "params.pt").is_file():
        raise SystemExit(f"{TRAINED}/params.pt is missing: run `make run` first")
    path = RESULTS / "photonic_mnist.json"
    stored_rows = json.loads(path.read_text())["rows"] if path.is_file() else []
    previous = {r["row"]: r for r in stored_rows if r["row"] in rows + extra}
    results = {}
    for name in args.rows:
        kind, chip = name.split("_", 1)
        steps = args.cal_steps if chip.endswith("_cal") else args.steps
        ov = overrides(chip, steps)
        stored = previous.get(name) if previous.get(name, {}).get("overrides") == ov else None
        if kind == "deploy":
            metrics = stored["metrics"] if stored else None
            if metrics is None and not args.collect:
                metrics = {"test_accuracy": deployed(chip, steps)[0][1]}
        else:
            out = Path(args.out) / name
            metrics = finished_run("mnist_tt_zo", ov, out, stored)
            if metrics is None and not args.collect:
                metrics = train(load_config("mnist_tt_zo", ov), out, progress=False,
                                log=lambda s: print(f"{name}: {s.splitlines()[0]}", flush=True))
            if metrics is not None and "deployed_curve" not in metrics:
                metrics["deployed_curve"] = (stored["metrics"]["deployed_curve"] if stored else deployed(
                    chip, steps, range(0, steps + 1, max(1, steps // 10))))
        if metrics is None:
            continue
        print(f"{name}: {100 * metrics['test_accuracy']:.2f} %", flush=True)
        results[name] = {"row": name, "overrides": ov, "config": load_config("mnist_tt_zo", ov).to_dict(),
                         "metrics": metrics}
        save("photonic_mnist", {"rows": list({**previous, **results}.values())})
    calibrated_only = all(name.endswith("_cal") for name in args.rows)
    report(results, Path(args.out), "photonic_mnist_cal.png" if calibrated_only else "photonic_mnist.png")


def report(results: dict, out: Path, figure: str) -> None:
    """The markdown table (printed) and docs/img/``figure`` of the chips with a row in ``results``: (a)
    deployed and (b) trained in situ per chip; (c) test accuracy over the steps of in-situ training, and of
    the untrained deployment on the same (drifting) chip. Calibrated rows alone go to their own figure
    (photonic_mnist_cal.png), so that running them leaves the default rows' figure as it is."""
    table = []
    for chip in [c for c in [*CHIPS, *CALIBRATED] if f"deploy_{c}" in results or f"insitu_{c}" in results]:
        dep, ins = results.get(f"deploy_{chip}"), results.get(f"insitu_{chip}")
        table.append({"chip": chip, "deployed": 100 * dep["metrics"]["test_accuracy"] if dep else "",
                      "insitu": 100 * ins["metrics"]["test_accuracy"] if ins else "",
                      "drifted": 100 * ins["metrics"]["deployed_curve"][-1][1] if ins else "",
                      "wall": ins["metrics"]["wall_s"] if ins else ""})
    print(markdown_table(table, [("chip", "chip"), ("deployed", "(a) deployed %"),
                                 ("insitu", "(b) after in-situ training %"),
                                 ("drifted", "deployed, after the same drift %"), ("wall", "in-situ wall s")]))
    fig, (bars, curves) = plt.subplots(1, 2, figsize=(14, 4.8))
    xs = range(len(table))
    for offset, key, label in ((-0.27, "deployed", "(a) deployed"),
                               (0.0, "drifted", "deployed, untrained, after the same drift"),
                               (0.27, "insitu", "(b) after in-situ training")):
        bars.bar([x + offset for x in xs], [r[key] or 0 for r in table], 0.27, label=label)
    bars.set_xticks(list(xs), [r["chip"] for r in table], fontsize=8)
    bars.set_ylabel("test accuracy (%)")
    bars.set_ylim(0, 118)
    bars.legend(fontsize=8, loc="upper center", ncol=2)
    for chip in [*INSITU_CHIPS, *CALIBRATED]:
        row = results.get(f"insitu_{chip}")
        if row is None:
            continue
        records = [json.loads(line) for line in (out / f"insitu_{chip}" / "metrics.jsonl").read_text().splitlines()]
        line, = curves.plot([0] + [r["step"] for r in records],
                            [100 * row["metrics"]["deployed_curve"][0][1]] + [100 * r["test_accuracy"] for r in records],
                            marker="o", ms=3, label=f"{chip}: in-situ training")
        curves.plot(*zip(*[(s, 100 * a) for s, a in row["metrics"]["deployed_curve"]]), ls="--",
                    color=line.get_color(), label=f"{chip}: deployed, untrained")
    curves.set_xlabel("optimizer steps (simulated time)")
    curves.set_ylabel("test accuracy (%)")
    curves.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    for ax in (bars, curves):
        ax.grid(alpha=0.3)
    fig.suptitle("MNIST TT 784-256-10 on a simulated photonic chip (phase-domain BP-free training)")
    DOCS_IMG.mkdir(parents=True, exist_ok=True)
    save_figure(fig, DOCS_IMG / figure)


if __name__ == "__main__":
    main()
