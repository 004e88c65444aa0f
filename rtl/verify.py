"""``hwsim rtl verify``: random and corner vectors through the RTL core and the fixed emulator, compared
by exact integer equality; on a mismatch, the first core step that differs.

Every case is a TT layer with its numerics. Its vectors are split over four jobs, each with its own
cores: ``random`` (uniform over the whole code range), ``trained`` (small normal codes, as trained
cores look), ``extremes`` (cores at the max/min codes: saturating sums) and ``ties`` (powers of two:
many accumulators fall exactly half-way between two codes). Every job's first input rows are corner
vectors (all max, all min, zero, alternating max/min, one-hot max), the rest uniform random codes.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from hwsim.backends.fixed import Format, LayerSpec, int_linear, int_linear_steps
from hwsim.backends.rtl.run import run_tt_layer

JOB_KINDS = ("random", "trained", "extremes", "ties")


@dataclass(frozen=True)
class Case:
    name: str
    core_shapes: tuple
    spec: LayerSpec
    bias: bool = False

    @property
    def in_features(self) -> int:
        return math.prod(s[1] for s in self.core_shapes)

    @property
    def out_features(self) -> int:
        return math.prod(s[2] for s in self.core_shapes)


def builtin_cases() -> list[Case]:
    """The MNIST TT model's two layers (8-bit defaults) and two more shapes with other widths and modes
    (one with a different intermediate format per core step)."""
    from hwsim.backends.rtl.backend import RtlBackend

    cases = config_cases("mnist_tt_zo", backend=RtlBackend())
    wide = LayerSpec(Format(12, 11), Format(6, 4), (Format(10, 5), Format(10, 8)), Format(16, 6), bias_bits=24,
                     rounding="half_even", overflow="wrap")
    floor = LayerSpec(Format(4, 3), Format(10, 8), Format(7, 3), Format(12, 8), rounding="floor")
    return cases + [Case("wide3_bias_half_even_wrap", ((1, 3, 2, 3), (3, 5, 4, 2), (2, 2, 3, 1)), wide, True),
                    Case("narrow2_floor", ((1, 6, 5, 5), (5, 6, 4, 1)), floor)]


def config_cases(config: str, overrides: list[str] | None = None, backend=None) -> list[Case]:
    """The TT layers of a config's model, with its backend's numerics (fixed defaults if the config's
    backend is neither ``fixed`` nor ``rtl``)."""
    from hwsim.backends.rtl.backend import RtlBackend
    from hwsim.build import build_network
    from hwsim.config import load_config
    from hwsim.model import TTLinear

    cfg = load_config(config, overrides or [])
    network = build_network(cfg.model)
    if backend is None:
        options = cfg.backend.options if cfg.backend.name in ("fixed", "rtl") else {}
        backend = RtlBackend(RtlBackend.Options(**options))
    backend.bind(network)
    name = Path(config).stem
    return [Case(f"{name}_layer{i}", tuple(layer.tt.core_shapes), spec, layer.bias)
            for i, layer, spec in backend.layer_specs() if isinstance(layer, TTLinear)]


def job_inputs(case: Case, kind: str, rows: int, rng: np.random.Generator):
    """(cores (1, size), x (1, rows, P), bias (1, M) or None) codes of one job."""
    spec, w = case.spec, case.spec.weight
    sizes = [math.prod(s) for s in case.core_shapes]
    if kind == "random":
        cores = rng.integers(w.lo, w.hi + 1, sum(sizes))
    elif kind == "trained":
        cores = np.clip(np.rint(rng.normal(0, 2 ** (w.bits - 3), sum(sizes))), w.lo, w.hi)
    elif kind == "extremes":
        cores = rng.choice([w.lo, w.hi, w.lo + 1, w.hi - 1], sum(sizes))
    else:
        cores = rng.choice([-1, 1], sum(sizes)) * 2 ** rng.integers(0, w.bits - 1, sum(sizes))
    fin = spec.input
    corners = np.array([np.full(case.in_features, fin.hi), np.full(case.in_features, fin.lo),
                        np.zeros(case.in_features), np.resize([fin.hi, fin.lo], case.in_features),
                        np.eye(1, case.in_features, rng.integers(case.in_features))[0] * fin.hi])
    x = rng.integers(fin.lo, fin.hi + 1, (rows, case.in_features))
    if kind == "ties":
        x = rng.choice([-1, 1], x.shape) * 2 ** rng.integers(0, fin.bits - 1, x.shape)
    x[:min(rows, len(corners))] = corners[:rows]
    bias = None
    if case.bias:
        b = spec.bias_format(case.core_shapes)
        bias = rng.integers(b.lo, b.hi + 1, (1, case.out_features))
    return cores[None].astype(np.int64), x[None].astype(np.int64), bias


def verify_case(case: Case, vectors: int, sim: str, lanes: int, seed: int = 0, sources=None,
                timeout_s: float | None = 3600, waves: tuple[Path, int, int] | None = None) -> dict:
    """Run ``vectors`` vectors of ``case`` (split over the four job kinds) through the RTL core and the
    emulator; returns the comparison and the core's throughput. ``sources``: another core's Verilog
    (fault-injection tests). ``waves`` (directory, lo, hi): also run vectors lo..hi-1 of the first job
    alone with an FST waveform into ``directory/<case>.fst``."""
    run = {"sim": sim, "lanes": lanes, "sources": sources, "timeout_s": timeout_s}
    rng = np.random.default_rng(seed)
    per_job = [vectors // len(JOB_KINDS) + (i < vectors % len(JOB_KINDS)) for i in range(len(JOB_KINDS))]
    jobs = [job_inputs(case, kind, n, rng) for kind, n in zip(JOB_KINDS, per_job) if n]
    rows = max(j[1].shape[1] for j in jobs)
    cores = np.concatenate([j[0] for j in jobs])
    x = np.concatenate([np.pad(j[1], ((0, 0), (0, rows - j[1].shape[1]), (0, 0))) for j in jobs])
    bias = np.concatenate([j[2] for j in jobs]) if case.bias else None
    res = run_tt_layer(case.core_shapes, case.spec, cores, x, bias, seed=seed, **run)
    ref = reference(case, cores, x, bias)
    bad = []                                   # (job, row) of every mismatching vector
    for j, n in enumerate(n for n in per_job if n):
        diff = np.any(res.y[j, :n] != ref[j, :n], axis=-1)
        bad += [(j, int(r)) for r in np.flatnonzero(diff)]
    c = res.counters
    out = {"case": case.name, "core_shapes": [list(s) for s in case.core_shapes], "spec": str_spec(case.spec),
           "bias": case.bias, "simulator": sim, "lanes": lanes, "vectors": sum(per_job), "mismatches": len(bad),
           "cycles": c["cycles"], "cycles_per_vector": c["cycles"] / sum(per_job), "sim_cycles": c["sim_cycles"],
           "sim_wall_s": res.sim_wall_s, "wall_s": res.wall_s,
           "sim_cycles_per_s": c["sim_cycles"] / res.sim_wall_s,
           "vectors_per_s": sum(per_job) / res.sim_wall_s,
           "macs": c["macs"], "lane_utilisation": c["macs"] / (lanes * c["cycles"]),
           "overflows": c["overflows"]}
    if waves is not None:
        directory, lo, hi = waves
        out["waves"] = str(Path(directory) / f"{case.name}.fst")
        run_tt_layer(case.core_shapes, case.spec, cores[:1], x[:1, lo:hi], None if bias is None else bias[:1],
                     waves=Path(out["waves"]), **{k: v for k, v in run.items() if k != "timeout_s"})
    if bad:
        j, r = bad[0]
        out["first_mismatch"] = {"job": JOB_KINDS[j], "row": r,
                                 "first_differing_step": first_differing_step(case, cores[j], x[j, r], bias, run)}
    return out


def reference(case: Case, cores: np.ndarray, x: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
    """The emulator's output codes (J, B, M) for jobs of flattened cores."""
    return int_linear(_core_tensors(case, cores), torch.from_numpy(x),
                      case.spec, None if bias is None else torch.from_numpy(bias)).numpy()


def first_differing_step(case: Case, cores: np.ndarray, row: np.ndarray, bias, run: dict) -> str:
    """Re-run one vector with the core's step trace on and compare every core step with the spec's."""
    b = None if bias is None else bias[:1]
    res = run_tt_layer(case.core_shapes, case.spec, cores[None], row[None, None], b, trace=True, **run)
    want = int_linear_steps(_core_tensors(case, cores[None]), torch.from_numpy(row[None, None]), case.spec,
                            None if b is None else torch.from_numpy(b))
    done = 1
    for k, (shape, got) in enumerate(zip(case.core_shapes, res.traces)):
        r, n, m, s = shape
        done *= m
        rest = math.prod(c[1] for c in case.core_shapes[k + 1:])
        rtl = got[0, 0, :, 0].reshape(done, s, rest).transpose(0, 2, 1)     # (outputs done, inputs left, rank)
        spec_k = want[k][0, 0].numpy().reshape(done, rest, s)
        if not np.array_equal(rtl, spec_k):
            return f"core step {k} ({int((rtl != spec_k).sum())} of {rtl.size} values differ)"
    if not np.array_equal(res.y[0, 0], want[-1][0, 0].numpy()):
        return f"core step {len(case.core_shapes) - 1} (the last: the layer output)"
    return "none when re-run alone (the mismatch depends on the other vectors of its group)"


def _core_tensors(case: Case, cores: np.ndarray) -> list[torch.Tensor]:
    out, at = [], 0
    for shape in case.core_shapes:
        size = math.prod(shape)
        out.append(torch.from_numpy(cores[:, at:at + size].reshape(-1, *shape)))
        at += size
    return out


def str_spec(spec: LayerSpec) -> str:
    mid = spec.intermediate if isinstance(spec.intermediate, Format) else "/".join(map(str, spec.intermediate))
    return (f"input {spec.input}, weight {spec.weight}, intermediate {mid}, output {spec.output}, "
            f"bias {spec.bias_bits} bits, {spec.rounding}, {spec.overflow}")


def verify(cases: list[Case], vectors: int, sim: str, lanes: int, seed: int = 0, progress=print,
           timeout_s: float | None = 3600, waves: tuple[Path, int, int] | None = None) -> dict:
    """Every case; a summary with totals. ``waves``: see :func:`verify_case`."""
    started = time.perf_counter()
    results = []
    for case in cases:
        r = verify_case(case, vectors, sim, lanes, seed, timeout_s=timeout_s, waves=waves)
        progress(f"{case.name:32s} {r['vectors']:6d} vectors  {r['mismatches']} mismatches  "
                 f"{r['cycles_per_vector']:9.1f} cycles/vector  {r['sim_cycles_per_s'] / 1e3:7.1f}k cycles/s  "
                 f"lanes busy {100 * r['lane_utilisation']:.1f} %"
                 + (f"  first differing: {r['first_mismatch']['first_differing_step']}" if r["mismatches"] else "")
                 + (f"  waveform: {r['waves']}" if "waves" in r else ""))
        results.append(r)
    return {"simulator": sim, "lanes": lanes, "seed": seed, "vectors": sum(r["vectors"] for r in results),
            "mismatches": sum(r["mismatches"] for r in results), "wall_s": time.perf_counter() - started,
            "cases": results}
