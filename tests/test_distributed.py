"""Queries spread over ranks (torch.distributed, gloo on loopback, launched by torchrun): the same numbers
as one process, bit for bit, and a clean failure when a rank dies."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hypothesis import given, strategies as st

from hwsim.cli import main
from hwsim.config import load_config
from hwsim.build import build_backend, build_network
from hwsim.distributed import Ranks
from hwsim.objective import BatchObjective

TRAIN = ["data.train_limit=600", "data.val_size=100", "data.test_limit=200", "train.batch_size=64", "train.steps=5",
         "train.eval_every=2", "optimizer.lr=0.01"]
TINY_TT = ["model.layers=[{type: tt_linear, in_features: 784, out_features: 16, rank: 2}, {type: relu}, "
           "{type: tt_linear, in_features: 16, out_features: 10, rank: 2}]"]
PHOTONIC = ["backend.name=photonic", "backend.noise={preset: typical, drift: 0.5, thermal_noise: 0.01}",
            "backend.block=4"]
PINN = ["pde.dim=3", "pde.points=8", "pde.test_points=100", "train.steps=5", "train.eval_every=2",
        "train.smoothed_points=10", "model.layers.0.in_features=4", "model.layers.0.in_factors=[2, 2]"]
# What the device is charged for (hwsim.arch.workload.Workload): the same on any number of ranks, as are the
# energy figures made from it. The simulator's own counts (calls, MACs it computed, activations it cached)
# are not: on an exact backend each rank runs the shared prefix once.
WORKLOAD = ("passes_rows", "programs_layer", "held_pi_rows:")
ENERGY = ("energy_j_training", "latency_s_training", "energy_j_per_inference", "latency_s_per_inference")
ORDER_DEPENDENT = ("linear_calls", "prefix_cache_values")


def _hwsim(args: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hwsim", *args], capture_output=True, text=True, timeout=600, **kw)


def _results(run: Path) -> tuple[list[dict], torch.Tensor, dict, dict]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for r in records:
        r.pop("wall_s")
    metrics = json.loads((run / "metrics.json").read_text())
    counters = {k: v for k, v in metrics["counters"].items() if not k.startswith(ORDER_DEPENDENT)}
    return records, torch.load(run / "params.pt", weights_only=True)["backend_theta"], counters, metrics


@pytest.mark.parametrize("command, config, extra", [
    ("train", "mnist_tt_zo", TINY_TT),                                            # per-tensor RGE, ideal
    ("train", "mnist_tt_zo", TINY_TT + ["backend.name=fixed", "backend.bits=8"]),
    ("train", "mnist_tt_zo", TINY_TT + PHOTONIC),                                 # read-out noise, drift
    ("train", "mnist_tt_hybrid", TINY_TT + ["train.epochs=null", "estimator.switch_epoch=0"]),  # CGE
    ("train", "mnist_tt_hybrid", TINY_TT + PHOTONIC + ["train.epochs=null", "estimator.switch_epoch=0",
                                                       "train.steps=2"]),
    ("train", "mnist_tt_zo", ["backend.name=photonic", "backend.noise=typical", "train.steps=2"]),  # regression:
    ("pinn", "hjb20_zo_tt_sg", []),                    # the full model's 1-row last core (test_photonic.py)
])
@pytest.mark.slow
def test_two_ranks_give_the_numbers_of_one_process_bit_for_bit(tmp_path, command, config, extra):
    keys = (TRAIN if command == "train" else PINN) + extra
    sets = [a for k in keys for a in ("--set", k)]
    assert main([command, config, "--quiet", "--out", str(tmp_path / "one"), *sets]) == 0
    two = _hwsim([command, config, "--quiet", "--out", str(tmp_path / "two"), "--nproc", "2", *sets])
    assert two.returncode == 0, two.stderr[-3000:]
    one_records, one_theta, one_counters, one = _results(tmp_path / "one")
    two_records, two_theta, two_counters, two_metrics = _results(tmp_path / "two")
    assert two_records == one_records
    assert torch.equal(two_theta, one_theta)
    workload = lambda c: {k: v for k, v in c.items() if k.startswith(WORKLOAD)}   # noqa: E731
    assert workload(two_counters) == pytest.approx(workload(one_counters), rel=1e-12)   # held_pi: float sums
    assert [two_metrics[k] for k in ENERGY] == pytest.approx([one[k] for k in ENERGY], rel=1e-12)
    assert (tmp_path / "two" / "mapping.txt").read_text() == (tmp_path / "one" / "mapping.txt").read_text()
    if "backend.name=photonic" in extra:         # every query a fresh evaluation: the same simulator events
        assert two_counters == pytest.approx(one_counters, rel=1e-12)
    else:                                         # exact backends: each rank runs the shared prefix once
        assert two_counters.keys() == one_counters.keys()
        assert all(two_counters[k] >= one_counters[k] for k in one_counters)
    assert json.loads((tmp_path / "two" / "metrics.json").read_text())["ranks"] == 2


def _noisy_chip():
    """A tiny TT model on a photonic chip with read-out noise: (network, backend, theta, x (32, 784), y, gen)."""
    cfg = load_config("mnist_tt_zo", TINY_TT + PHOTONIC)
    net = build_network(cfg.model)
    chip = build_backend(cfg.backend, net)
    gen = torch.Generator().manual_seed(0)
    theta = chip.encode(net.init_params(gen).to(chip.dtype))
    x, y = torch.rand(32, 784, generator=gen).to(chip.dtype), torch.randint(0, 10, (32,), generator=gen)
    return net, chip, theta, x, y, gen


def test_a_query_loses_nothing_of_its_noise_to_the_others_in_its_chunk():
    """Keyed read-out noise: a query's loss on a noisy chip is the same whether it is evaluated with the
    other queries of its step, alone, or in another chunk; an unkeyed evaluation draws other noise."""
    net, chip, theta, x, y, gen = _noisy_chip()
    deltas = 0.01 * torch.randn(6, theta.numel(), generator=gen, dtype=theta.dtype)

    def objective(chunk):
        o = BatchObjective(net, chip, x, y)
        o.chunk = chunk
        o.key_noise(7)
        return o

    together = objective(6).losses(theta, deltas)
    chunked = objective(4).losses(theta, deltas)
    alone = torch.cat([objective(1).losses(theta, deltas[q:q + 1], first=q) for q in range(6)])
    assert torch.equal(together, chunked) and torch.equal(together, alone)
    other_step = objective(6)
    other_step.key_noise(8)
    assert not torch.equal(other_step.losses(theta, deltas), together)


def test_every_query_is_a_fresh_evaluation_unless_the_host_caches_the_prefix():
    """Regression: a query perturbing only the last layer reused the first layer's output computed once
    for all queries, so on a noisy chip they shared one draw of read-out noise. Now each runs from the
    inputs (queries that perturb nothing differ only by their noise); cache_prefix keeps the reuse."""
    net, chip, theta, x, y, gen = _noisy_chip()
    last = net.space.entries[-1]
    deltas = torch.zeros(3, last.numel, dtype=theta.dtype)          # three unperturbed queries
    fresh = BatchObjective(net, chip, x, y)
    fresh.key_noise(0)
    cached = BatchObjective(net, chip, x, y)
    cached.key_noise(0, cache_prefix=True)
    before = chip.counters().get("prefix_cache_values", 0)
    a, b = fresh.losses(theta, deltas, last.offset), cached.losses(theta, deltas, last.offset)
    assert len(set(a.tolist())) == 3                                  # own noise in every layer
    assert chip.counters()["prefix_cache_values"] - before == 32 * 16  # the first layer's outputs, kept once
    assert len(set(b.tolist())) == 3 and not torch.equal(a, b)


@pytest.mark.slow
def test_a_rank_that_dies_fails_the_run_without_hanging(tmp_path):
    """SIGKILL one worker in the middle of a run: torchrun stops the other and exits non-zero, fast."""
    sets = [a for k in TRAIN + TINY_TT + PHOTONIC + ["train.steps=100000", "train.eval_every=100000"]
            for a in ("--set", k)]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "hwsim",
           "train", "mnist_tt_zo", "--quiet", "--out", str(tmp_path / "run"), *sets]
    launcher = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not list((tmp_path / "run" / "checkpoints").glob("step-*.pt")) and time.monotonic() < deadline:
            time.sleep(0.2)
        workers = _children(launcher.pid)
        assert len(workers) == 2, workers
        time.sleep(1.0)                                                  # well inside the training steps
        os.kill(workers[-1], signal.SIGKILL)
        start = time.monotonic()
        _, err = launcher.communicate(timeout=120)
        assert time.monotonic() - start < 60
        assert launcher.returncode != 0 and "hwsim" in err
    finally:
        if launcher.poll() is None:
            launcher.kill()


def _children(pid: int) -> list[int]:
    """Direct child processes of ``pid`` (from /proc), sorted."""
    kids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                kids.append(int(entry.name))
    return sorted(kids)


@given(st.lists(st.integers(0, 10 ** 6), max_size=60), st.integers(1, 8))
def test_shares_by_cost_are_contiguous_in_rank_order_and_balanced(costs, world):
    """Every item in exactly one share, shares back to back in rank order, and no rank more than one
    item's cost above an equal split (the item whose middle lies in its slice of the total)."""
    bounds = Ranks(0, world).shares_by_cost(costs)
    assert len(bounds) == world and bounds[0][0] == 0 and bounds[-1][1] == len(costs)
    assert all(hi == lo2 for (_, hi), (lo2, _) in zip(bounds, bounds[1:])) and all(lo <= hi for lo, hi in bounds)
    total = sum(costs)
    for lo, hi in bounds:
        assert sum(costs[lo:hi]) <= total / world + max(costs, default=0)
    if total == 0:
        assert bounds == [Ranks(0, world).share(len(costs), r) for r in range(world)]


@given(st.lists(st.tuples(st.integers(1, 12), st.integers(0, 10 ** 6), st.integers(0, 3), st.integers(0, 10 ** 6)),
                min_size=1, max_size=12), st.integers(1, 8))
def test_every_query_goes_to_one_rank_in_whole_blocks_where_that_balances(blocks, world):
    """Every query to exactly one rank; the ranks get whole blocks within 5/4 of an equal share of the
    cost (a key's once-cost counted on every rank that holds the key), or else the contiguous shares."""
    sizes = [size for size, *_ in blocks]
    once = {}                                        # one cost per key, as the objective gives them
    costs = [(each, key, once.setdefault(key, c)) for _, each, key, c in blocks]
    ranges = Ranks(0, world).assign(sizes, costs)
    assert len(ranges) == world
    assert sorted(i for mine in ranges for lo, hi in mine for i in range(lo, hi)) == list(range(sum(sizes)))
    flat, seen = [], set()
    for n, (each, key, c) in zip(sizes, costs):
        flat += [each] * n
        if key not in seen:
            seen.add(key)
            flat[-n] += c
    if ranges == [[share] for share in Ranks(0, world).shares_by_cost(flat)]:
        return
    edges = [sum(sizes[:k]) for k in range(len(sizes) + 1)]
    whole = dict(zip(zip(edges, edges[1:]), range(len(sizes))))
    assert all(r in whole for mine in ranges for r in mine)
    for mine in ranges:
        ks = [whole[r] for r in mine]
        load = sum(sizes[k] * costs[k][0] for k in ks) + sum(once[key] for key in {costs[k][1] for k in ks})
        assert 4 * world * load <= 5 * sum(flat)


def test_block_costs_count_the_layers_a_query_runs():
    """A query runs the layers from its first moved tensor on; the layers in front run once per block on a
    noisy chip (their product is shared by the block's queries, each query gets noise of its own) and once
    per step on an exact backend (one key for all blocks with the same front layers)."""
    cfg = load_config("mnist_tt_zo", TINY_TT)
    net = build_network(cfg.model)
    macs = net.row_macs()
    assert macs[1] == 0 and macs[0] > macs[2] > 0
    x, y = torch.rand(4, 784), torch.zeros(4, dtype=torch.long)
    last = net.space.entries[-1]
    blocks = [(torch.zeros(3, 5), 0), (torch.zeros(2, 1), last.offset), (torch.zeros(2, 1), last.offset)]
    exact = BatchObjective(net, build_backend(cfg.backend, net), x, y)
    assert exact.block_costs(blocks) == [(sum(macs), ("front", 0), 0)] + [(macs[2], ("front", 2), macs[0])] * 2
    _, chip, *_ = _noisy_chip()
    assert BatchObjective(net, chip, x.double(), y).block_costs(blocks) == [
        (sum(macs), ("block", 0), 0), (macs[2], ("block", 1), macs[0]), (macs[2], ("block", 2), macs[0])]


def test_two_ranks_get_whole_blocks_and_a_mix_of_layers():
    """The RTL case of benchmarks/bench_distributed.py (mnist_tt_zo, 2 queries per tensor): 4 costly blocks
    of the first layer, 4 cheap ones of the last that need the first layer's output, run once per rank
    that has any of them. Each rank gets whole blocks; the first layer's output is computed on one."""
    sizes = [3] + [2] * 7
    costs = [(104, ("front", 0), 0)] * 4 + [(9, ("front", 2), 95)] * 4
    # costliest first: b0 -> 0 (312), b1 -> 1 (208), b2 -> 1 (416), b3 -> 0 (520), b4 -> 1 (416 + 18 + 95
    # beats 520 + 18 + 95), b5..b7 -> 1 (18 each, the output kept): 520 against 583
    assert Ranks(0, 2).assign(sizes, costs) == [[(0, 3), (7, 9)], [(3, 5), (5, 7), (9, 11), (11, 13), (13, 15), (15, 17)]]
    assert Ranks(0, 2).assign([9], [(5, ("block", 0), 0)]) == [[(0, 4)], [(4, 9)]]      # one block: contiguous
