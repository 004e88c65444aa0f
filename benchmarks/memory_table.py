"""On-device training memory, BP-free (ZO) vs back-propagation, for the MNIST and HJB-20 models in each
backend's number format (hwsim.energy.memory; docs/energy.md). Pure arithmetic on the models' shapes and
the formats: no training. Writes benchmarks/results/memory_table.json.

    python benchmarks/memory_table.py
"""
from __future__ import annotations

from common import save
from hwsim.build import build_backend, build_network
from hwsim.config import Config, PinnConfig, load_config
from hwsim.energy.memory import device_memory
from hwsim.pinn.objective import derivative_method

import torch

MODELS = [("MNIST TT 784-256-10 (batch 256)", "mnist_tt_zo", Config), ("MNIST dense 784-256-10 (batch 256)", "mnist_dense_zo", Config),
          ("HJB-20 TT 21-64-64-1 (100 points x 925)", "hjb20_zo_tt_sg", PinnConfig),
          ("HJB-20 TT paper 21-512-512-1 (100 points x 925)", "hjb20_zo_tt_sg_paper", PinnConfig)]
FORMATS = [("ideal float32", ["backend={name: ideal, dtype: float32}"]), ("fixed 16-bit", ["backend={name: fixed, bits: 16}"]),
           ("fixed 8-bit", ["backend={name: fixed, bits: 8}"]),
           ("photonic phases (8-bit DAC/ADC)", ["backend={name: photonic, params: phases, noise: typical}"])]


def main() -> None:
    rows = []
    for model, config, kind in MODELS:
        for fmt, overrides in FORMATS:
            cfg = load_config(config, overrides, kind)
            network = build_network(cfg.model)
            backend = build_backend(cfg.backend, network, cfg.architecture)
            if kind is PinnConfig:
                per_point = derivative_method(cfg.pde.derivatives, network.in_features, torch.Generator()).per_point
                rows_per_pass = cfg.pde.points * per_point
            else:
                rows_per_pass = cfg.train.batch_size
            m = device_memory(network, backend, cfg.optimizer.name, cfg.optimizer.momentum, rows_per_pass)
            rows.append({"model": model, "format": fmt, "params": backend.param_space(network).size,
                         "zo_bytes": m["device_memory_bytes_zo"], "bp_bytes": m["device_memory_bytes_bp"],
                         "bp_over_zo": round(m["device_memory_bytes_bp"] / m["device_memory_bytes_zo"], 2),
                         "breakdown": m["device_memory_breakdown"]})
            print(f"{model:48s} {fmt:32s} ZO {m['device_memory_bytes_zo']:>12,} B  BP {m['device_memory_bytes_bp']:>12,} B")
    save("memory_table", {"rows": rows})


if __name__ == "__main__":
    main()
