"""The MNIST TT model on the RTL core: (1) a trained model deployed on the rtl backend gives exactly the
fixed backend's outputs and predictions on N test images; (2) a short BP-free fine-tuning run with the
RTL core in the loop (every TT forward pass of every query runs on the Verilog) starting from that
model, next to the same run on the fixed emulator: identical numbers, and what it recovers.

    python benchmarks/rtl_mnist.py [--run runs/mnist_tt_zo] [--images 1000] [--bits 6] [--steps 20]

Writes benchmarks/results/rtl_mnist.json and runs/rtl_finetune/{fixed,rtl}/.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from common import save
from hwsim.build import build_backend, build_network
from hwsim.config import load_config
from hwsim.data import load_dataset
from hwsim.train import train


def deploy(run: Path, images: int, bits: int, sim: str, lanes: int) -> dict:
    cfg = load_config(str(run / "config.yaml"))
    network = build_network(cfg.model)
    theta = torch.load(run / "params.pt")["theta"]
    test = load_dataset(cfg.data.name, cfg.data.path, cfg.data.val_size, test_limit=images).test
    x, y = torch.from_numpy(test.x), torch.from_numpy(test.y)
    out = {}
    for name, options in (("fixed", {}), ("rtl", {"sim": sim, "lanes": lanes})):
        backend = build_backend(type(cfg.backend)(name, {"bits": bits, **options}), network)
        t = time.perf_counter()
        logits = network.forward(backend, network.space.unflatten(backend.encode(theta)), x)
        out[name] = {"logits": logits, "wall_s": time.perf_counter() - t, "counters": backend.counters()}
    same_logits = torch.equal(out["fixed"]["logits"], out["rtl"]["logits"])
    pred = {k: v["logits"].argmax(-1) for k, v in out.items()}
    c = out["rtl"]["counters"]
    return {"images": images, "bits": bits, "simulator": sim, "lanes": lanes,
            "identical_logits": same_logits, "identical_predictions": int((pred["fixed"] == pred["rtl"]).sum()),
            "accuracy_fixed": float((pred["fixed"] == y).double().mean()),
            "accuracy_rtl": float((pred["rtl"] == y).double().mean()),
            "wall_s_fixed": out["fixed"]["wall_s"], "wall_s_rtl": out["rtl"]["wall_s"],
            "rtl_cycles": c["rtl_cycles"], "rtl_macs": c["rtl_macs"],
            "rtl_lane_utilisation": c["rtl_macs"] / (lanes * c["rtl_cycles"]), "rtl_sim_runs": c["rtl_sim_runs"]}


def finetune(run: Path, images: int, bits: int, steps: int, sim: str, lanes: int) -> dict:
    """Both backends from the trained float model, mu = 1 weight LSB (realised exactly, see
    docs/fixed_point.md section 7), 2 queries per tensor, batch 64."""
    lsb = 2.0 ** -(bits - 2)
    common = [f"train.init={run}", f"train.steps={steps}", f"train.eval_every={steps}", "train.batch_size=64",
              f"data.test_limit={images}", "data.val_size=500", "estimator.rge.num_queries=2",
              f"estimator.rge.mu={lsb}", "optimizer.lr=0.002", "optimizer.schedule.name=constant",
              f"backend.bits={bits}"]
    result = {}
    for name in ("fixed", "rtl"):
        extra = ["backend.name=rtl", f"backend.sim={sim}", f"backend.lanes={lanes}"] if name == "rtl" else \
            ["backend.name=fixed"]
        cfg = load_config(str(run / "config.yaml"), extra + common)     # backend.name first: it resets the options
        metrics = train(cfg, Path("runs/rtl_finetune") / name, progress=True)
        result[name] = {k: metrics[k] for k in ("test_accuracy", "val_accuracy", "forward_queries", "wall_s")}
        if name == "rtl":
            c = metrics["counters"]
            result[name].update({k: c[k] for k in ("rtl_cycles", "rtl_macs", "rtl_sim_runs", "rtl_sim_cycles")})
    result["identical"] = all(result["fixed"][k] == result["rtl"][k]
                              for k in ("test_accuracy", "val_accuracy", "forward_queries"))
    return {"steps": steps, "bits": bits, "mu": lsb, "images": images, **result}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", default="runs/mnist_tt_zo", help="a finished run (make run)")
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--bits", type=int, default=6)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--sim", default="verilator", choices=["verilator", "icarus"])
    ap.add_argument("--lanes", type=int, default=16)
    args = ap.parse_args()
    run = Path(args.run)
    deployed = {bits: deploy(run, args.images, bits, args.sim, args.lanes) for bits in sorted({8, args.bits})}
    for r in deployed.values():
        print(f"deploy {r['bits']} bits: {r['identical_predictions']}/{r['images']} identical predictions, "
              f"identical logits {r['identical_logits']}, accuracy {100 * r['accuracy_rtl']:.2f} %", flush=True)
    tuned = finetune(run, args.images, args.bits, args.steps, args.sim, args.lanes)
    save("rtl_mnist", {"run": str(run), "deploy": list(deployed.values()), "finetune": tuned})


if __name__ == "__main__":
    main()
