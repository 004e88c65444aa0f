"""Calibration of the chip from forward measurements only.

Every block is measured at a few random phase settings by sending the n unit vectors through it (n
queries per setting, all blocks of the chip in parallel) and reading the detectors.

- :func:`calibrate_gains` (``calibrate: gain``) compares the measured power with the host model's and sets
  every block's electronic gain to cancel the block's loss (insertion loss, on average also gamma spread
  and crosstalk). Phase biases hardly matter: a block's Frobenius norm ||U S V|| = ||S|| does not depend on
  the mesh phases, and cos^2 of a uniformly random attenuator phase has mean 1/2 whatever its bias.
- :func:`calibrate_biases` (``calibrate: true``) fits, per block, the phase offsets b (n^2) and an
  amplitude scale c that make its ideal model c * block(commanded phases + b) match the measurements
  (Levenberg-Marquardt, finite-difference Jacobian on the host model). Afterwards every command is sent as
  phase - b and every gain divided by c, so fabrication bias is cancelled as well as the loss.
"""
from __future__ import annotations

import math

import torch

from hwsim.backends.photonic.chip import commanded, optics, realise
from hwsim.backends.photonic.mesh import Layout
from hwsim.backends.photonic.noise import Noise

SETTINGS = 4          # random phase settings measured per block
ITERATIONS = 20
STARTS = 2            # Levenberg-Marquardt runs per block (one from 0, one random): the fit has local minima
STEP = 1e-6           # finite-difference step of the Jacobian (rad)


def calibrate_gains(regions, lay: Layout, noise: Noise, generator: torch.Generator, read_out) -> dict:
    """Set every block's gain correction (chip.Region.state.gain) in place; returns {"queries": probe
    vectors sent, "loss_db": the mean measured block loss in dB on power}."""
    queries, losses = 0, []
    for region in regions:
        target, measured = _measure(region.state, lay, noise, generator, read_out)
        ones = torch.ones(target.shape[1], dtype=torch.float64)
        model = optics(target, ones, _signs(target, lay), lay, Noise())
        ratio = (measured.pow(2).sum((0, 2, 3)) / model.pow(2).sum((0, 2, 3))).sqrt()
        region.state.gain.copy_(1.0 / ratio)
        queries += SETTINGS * lay.n
        losses.append(-20 * torch.log10(ratio))
    return {"queries": queries, "loss_db": float(torch.cat(losses).mean()) if losses else 0.0}


def calibrate_biases(regions, lay: Layout, noise: Noise, generator: torch.Generator, read_out) -> dict:
    """Calibrate every region (chip.Region) in place; returns {"queries": probe vectors sent,
    "rms_before"/"rms_after": rms of the bias error (rad) before and after, per the simulator's truth}."""
    queries, before, after = 0, [], []
    for region in regions:
        state = region.state
        target, measured = _measure(state, lay, noise, generator, read_out)
        ones = torch.ones(target.shape[1], dtype=torch.float64)
        b, c = _fit(target, measured, ones, _signs(target, lay), lay, generator)
        queries += SETTINGS * lay.n
        truth = state.bias + state.drift
        before.append(truth)
        after.append(_wrap(truth - b))
        state.correction.copy_(b)
        state.gain.copy_(1.0 / c)
    rms = lambda ts: float(torch.cat([t.flatten() for t in ts]).pow(2).mean().sqrt()) if ts else 0.0  # noqa: E731
    return {"queries": queries, "rms_before": rms(before), "rms_after": rms(after)}


def _measure(state, lay: Layout, noise: Noise, generator: torch.Generator, read_out):
    """Clear ``state``'s corrections, command SETTINGS random phase settings on all its blocks and read
    each block's response to the n unit vectors. Returns (the phases commanded (S, blocks, n^2), the
    measured matrices (S, blocks, n, n))."""
    blocks, p = state.bias.shape
    n = lay.n
    settings = torch.rand(SETTINGS, blocks, p, generator=generator, dtype=torch.float64) * 2 * math.pi
    settings[..., n * (n - 1) // 2: n * (n - 1) // 2 + n] /= 2                   # attenuators in [0, pi]
    state.correction.zero_()
    state.gain.fill_(1.0)
    ones = torch.ones(blocks, dtype=torch.float64)
    chip = realise(settings, ones, _signs(settings, lay), lay, noise, state)       # (S, blocks, n, n)
    chip = chip.real if chip.is_complex() else chip
    # column j of a block is its response to the unit vector e_j: read out like any layer output
    measured = read_out(chip.transpose(-1, -2)).transpose(-1, -2)
    return commanded(settings, n, noise), measured


def _signs(settings: torch.Tensor, lay: Layout) -> torch.Tensor:
    """All-positive output screens (blocks, 2n) for settings (S, blocks, n^2)."""
    return torch.ones(settings.shape[1], 2 * lay.n, dtype=torch.float64)


def _fit(phases: torch.Tensor, measured: torch.Tensor, gains, signs, lay: Layout, generator: torch.Generator):
    """Least-squares b (blocks, P) and c (blocks,) of c * ideal(phases + b) ~ measured, per block: the best
    of ``STARTS`` Levenberg-Marquardt runs (one from b = 0, the rest from random offsets)."""
    s, blocks, p = phases.shape
    k = STARTS
    start = torch.zeros(k, blocks, p + 1, dtype=torch.float64)
    start[1:, :, :p] = (torch.rand(k - 1, blocks, p, generator=generator, dtype=torch.float64) * 2 - 1) * math.pi
    start[..., p] = 1.0
    flat_phases = phases.repeat(1, k, 1)                                     # (S, k blocks, p)
    flat_measured = measured.repeat(1, k, 1, 1)
    params, cost = _levenberg_marquardt(start.reshape(k * blocks, p + 1), flat_phases, flat_measured,
                                        gains.repeat(k), signs.repeat(k, 1), lay)
    best = cost.reshape(k, blocks).argmin(0)
    params = params.reshape(k, blocks, p + 1)[best, torch.arange(blocks)]
    return params[:, :p], params[:, p]


def _levenberg_marquardt(params, phases, measured, gains, signs, lay: Layout):
    """ITERATIONS damped Gauss-Newton steps on every block at once; returns (params, final cost)."""
    p = params.shape[-1] - 1
    damping = torch.full(params.shape[:1], 1e-2, dtype=torch.float64)
    eye = torch.eye(p + 1, dtype=torch.float64)

    def residual(x):                                   # x (..., blocks, p+1) -> (..., blocks, S n^2)
        model = _scale(optics(_shift(phases, x[..., :p]), gains, signs, lay, Noise()), x[..., -1])
        return (model - measured).movedim(-4, -3).reshape(*x.shape[:-1], -1)

    cost = residual(params).pow(2).sum(-1)
    for _ in range(ITERATIONS):
        r = residual(params)
        probes = params[None] + STEP * eye[:, None, :]                  # (p+1, blocks, p+1)
        jac = ((residual(probes) - r[None]) / STEP).permute(1, 2, 0)   # (blocks, S n^2, p+1)
        jtj = jac.transpose(1, 2) @ jac
        g = jac.transpose(1, 2) @ r[..., None]
        step = -torch.linalg.solve(jtj + damping[:, None, None] * torch.diag_embed(
            torch.diagonal(jtj, dim1=1, dim2=2) + 1e-12), g)[..., 0]
        trial = params + step
        new_cost = residual(trial).pow(2).sum(-1)
        better = new_cost < cost
        params = torch.where(better[:, None], trial, params)
        cost = torch.where(better, new_cost, cost)
        damping = torch.where(better, damping / 3, damping * 4)
    return params, cost


def _shift(phases: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """phases (S, blocks, p) + b (..., blocks, p) -> (..., S, blocks, p)."""
    return phases + b.unsqueeze(-3)


def _scale(model: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """model (..., S, blocks, n, n) * c (..., blocks)."""
    return model * c[..., None, :, None, None]


def _wrap(p: torch.Tensor) -> torch.Tensor:
    """Phase differences into [-pi, pi)."""
    return torch.remainder(p + math.pi, 2 * math.pi) - math.pi
