"""Calibration of the chip from what a lab has: phase DACs to set and detectors to read.

Two procedures:

- :func:`calibrate_gains` (``calibrate: gain``) compares every block's measured power with the host
  model's and sets its electronic gain to cancel the block's loss (phase biases hardly matter: a block's
  Frobenius norm ||U S V|| = ||S|| does not depend on the mesh phases).
- :func:`calibrate_mesh` (``calibrate: true``) measures every MZI's phase offset and power-to-phase
  response and every block's scale, in three stages, through a :class:`ChipPort` only (set phases, read
  detectors: never the true phases):

  A. *attenuator fringes*: with both meshes at zero command, the attenuators' commands are set at random
     and the block's total detected power ||M||_F^2 = c^2 sum_i cos^2(a_i) is read (mesh-independent for
     orthogonal meshes): a linear least-squares fit of 1 + 2n sinusoids in 2 c_i gives every attenuator's
     offset (mod pi: its sign is taken in (-pi/2, pi/2]). This is fringe fitting (Mower et al., PRA 92,
     032322 (2015); Carolan et al., Science 349, 711 (2015), supplementary), all attenuators at once
     because their fringes add.
  B. *coordinate descent*: from stage A's attenuators and zero mesh offsets, ``SETTINGS`` random settings
     are read (every block's n x n matrix, with the n unit vectors) and every offset is swept in turn: with
     the others fixed a block is affine in (cos, sin) of one phase, so the misfit is a trigonometric
     polynomial of degree 2 in that offset, minimised over a grid of GRID values (SWEEPS passes). Its false
     minima are sign domains: a few MZIs pi-shifted, a mode's sign flipped between them, which no single
     offset can undo. 16 settings left ~1 block in 8 in one (an 8 x 8 test bench: 5 of 32), 32 settings
     0 of 32 on the bench and 2 of 31 on chip 1 of the reference run; a stuck block (residual > RETRY x
     the median) is fitted again in a random sweep order on MORE further settings. (A Clements
     decomposition of the measured meshes, as Alexiev et al., OSA Continuum 4, 2892 (2021) do with
     external detectors, was tried: at 1e-5 read-out noise its nulling angles erred by up to ~0.9 rad.)
  C. *device-model fit*: on the same readings, a Levenberg-Marquardt fit of the block model c x block(g o command + b; loss alpha per MZI) to the
     readings refines every offset b, every shifter's power-to-phase factor g, the block's scale c and the
     per-MZI transmission alpha (the fit of a device model to measured transfer data, as in
     Bandyopadhyay et al., "Hardware error correction for programmable photonics", Optica 8, 1247
     (2021), whose correction also starts from a measured device model).
  A recalibration (drift) starts from the previous estimate and runs stage C only.

What no stage removes: thermal crosstalk (the model has none; the fit absorbs its mean), coupler imbalance
(the model's couplers are ideal; min |cross| = |sin(e1 + e2)| stays), the mode-dependent insertion loss
(modelled, so it does not bias the offsets; the gain undoes its mean, :func:`path_loss`), the DAC's step, and read-out noise and ADC
quantisation in the readings (averaged over settings). docs/photonic.md, "Calibration".
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from hwsim.backends.photonic.chip import commanded, optics
from hwsim.backends.photonic.mesh import Layout, layout, mesh_matrix, mzi_transfer
from hwsim.backends.photonic.noise import Noise

SETTINGS = 32          # stages B, C: random settings read per calibration (16 left ~1 block in 8 in a false minimum)
FRINGES = 8            # stage A: settings beyond the 1 + 2n fringe unknowns
ITERATIONS = 12        # stage C: Levenberg-Marquardt steps
STEP = 1e-6            # finite-difference step of the Jacobian (rad)
SPREAD = (1.0, 0.3)    # stage B: attenuator transmissions cos t_i from SPREAD[0] down to SPREAD[1]
GAIN_SETTINGS = 4      # calibrate: gain: random settings per block
SWEEPS = 4             # stage B: coordinate-descent passes over the meshes' offsets
GRID = 256             # stage B: offsets tried per shifter and pass
RETRY = 1.5            # a unit whose relative fit residual exceeds RETRY x the median is fitted again ... (a
                       # right fit's residual, set by read-out noise and unmodelled imbalance and crosstalk, is
                       # the same for every block to +-5 %; a false minimum at 2.3x the median erred by 0.2)
RESTARTS = 3           # ... from stage A's start on MORE further settings, at most this many times
MORE = 16
FLOOR = 1e-3           # ... and exceeds this (an 8-bit ADC's steps alone leave ~2e-3 of full scale rms)


@dataclass(frozen=True)
class RegionInfo:
    """What a lab knows of a region (one weight tensor's blocks) from the chip's layout: its name, its
    ``grid`` of n x n blocks (rows, columns), its physical ``copies``."""

    name: str
    grid: tuple[int, int]
    copies: int

    @property
    def units(self) -> int:
        """Physical blocks, copy-major then row-major over the grid."""
        return self.copies * self.grid[0] * self.grid[1]


class ChipPort:
    """The chip as a calibration sees it: its layout (regions, block size n, mesh layout, phase-DAC bits),
    :meth:`set_phases` and :meth:`read`. Nothing else: no true phase, bias, gain or coupler is reachable
    from it."""

    __slots__ = ("regions", "n", "mesh", "dac_bits", "_set", "_read")

    def __init__(self, regions: list[RegionInfo], n: int, mesh: str, dac_bits: int | None,
                 set_phases: Callable, read: Callable):
        self.regions, self.n, self.mesh, self.dac_bits = tuple(regions), n, mesh, dac_bits
        self._set, self._read = set_phases, read

    def set_phases(self, region: str, commands: torch.Tensor) -> None:
        """Command every shifter of ``region`` through its DAC (raw: no calibration applied): commands
        (copies, blocks, n^2) in the block phase order [theta_U, phi_S, theta_V]; the chip settles."""
        self._set(region, commands)

    def read(self, region: str, x: torch.Tensor) -> torch.Tensor:
        """Send the probe vectors x (copies, K, grid columns x n) through the modulators of ``region`` (one
        symbol each) and return what its detectors read, (copies, K, grid rows x n): noisy, digitised."""
        return self._read(region, x)


# --- calibrate: gain ------------------------------------------------------------------------------
def calibrate_gains(port: ChipPort, generator: torch.Generator) -> dict:
    """Every unit's gain factor from its measured power vs an ideal block's at ``GAIN_SETTINGS`` random
    settings. Returns {"gains": {region: (units,) factors to multiply the block gain by}, "loss_db": mean
    measured block loss in dB on power}."""
    lay = layout(port.n, port.mesh)
    gains, losses = {}, []
    for info in port.regions:
        settings = _random_settings(GAIN_SETTINGS, info.units, lay, generator)
        measured = torch.stack([measure(port, [info], s) for s in settings])       # (S, units, n, n)
        ones = torch.ones(info.units, dtype=torch.float64)
        model = optics(_dac(settings, port), ones, _screens(info.units, lay.n), lay, Noise())
        ratio = (measured.pow(2).sum((0, 2, 3)) / model.pow(2).sum((0, 2, 3))).sqrt()
        gains[info.name] = 1.0 / ratio.clamp_min(1e-12)
        losses.append(-20 * torch.log10(ratio.clamp_min(1e-12)))
    return {"gains": gains, "loss_db": float(torch.cat(losses).mean()) if losses else 0.0}


# --- calibrate: true ------------------------------------------------------------------------------
@dataclass
class Estimate:
    """A region's calibration, per unit (copies x blocks): ``offset`` (units, n^2) rad, ``response``
    (units, n^2) power-to-phase factors, ``scale`` (units,) block amplitude, ``transmission`` (units,) per
    MZI passed, ``residual`` (units,) rms fit residual over rms reading."""

    offset: torch.Tensor
    response: torch.Tensor
    scale: torch.Tensor
    transmission: torch.Tensor
    residual: torch.Tensor


def calibrate_mesh(port: ChipPort, generator: torch.Generator,
                   previous: dict[str, Estimate] | None = None) -> dict[str, Estimate]:
    """Stages A, B, C (module doc) on every region of ``port`` (regions are separate cores with their own
    modulators and detectors: measured one after another, fitted together); with ``previous`` estimates (a
    recalibration) stage C only, starting from them. Returns {region: Estimate}."""
    lay = layout(port.n, port.mesh)
    infos = list(port.regions)
    if previous is not None:
        offset = torch.cat([previous[i.name].offset for i in infos])
        response = torch.cat([previous[i.name].response for i in infos])
    else:
        offset = initial_offsets(port, infos, lay, generator)
        response = torch.ones_like(offset)
    est = refine(port, infos, lay, offset, response, generator, 0 if previous is not None else SWEEPS)
    out, at = {}, 0
    for info in infos:
        part = slice(at, at + info.units)
        out[info.name] = Estimate(est.offset[part], est.response[part], est.scale[part], est.transmission[part],
                                  est.residual[part])
        at += info.units
    return out


def measure(port: ChipPort, infos: list[RegionInfo], commands: torch.Tensor) -> torch.Tensor:
    """Set ``commands`` (units, n^2) on the regions ``infos`` (their units back to back) and read every
    unit's n x n matrix with the n unit vectors, one block column at a time (the blocks of a block row share
    their outputs' detectors; those of a block column share the modulators). Returns (units, n, n): column
    k = the unit's response to e_k."""
    n, parts, at = port.n, [], 0
    eye = torch.eye(n, dtype=torch.float64)
    for info in infos:
        (gr, gc), copies = info.grid, info.copies
        port.set_phases(info.name, commands[at:at + info.units].reshape(copies, gr * gc, n * n))
        at += info.units
        out = torch.empty(copies, gr, gc, n, n, dtype=torch.float64)
        for j in range(gc):
            x = torch.zeros(copies, n, gc * n, dtype=torch.float64)
            x[:, :, j * n:(j + 1) * n] = eye
            y = port.read(info.name, x).to(torch.float64)                      # (copies, n probes, gr n)
            out[:, :, j] = y.reshape(copies, n, gr, n).permute(0, 2, 3, 1)      # (copies, gr, out i, probe k)
        parts.append(out.reshape(info.units, n, n))
    return torch.cat(parts)


def initial_offsets(port: ChipPort, infos: list[RegionInfo], lay: Layout, generator: torch.Generator) -> torch.Tensor:
    """Stage A: the attenuators' offsets (units, n^2; the meshes' left at 0) from the fringes of the total
    power, meshes at zero command."""
    n, m, units = lay.n, lay.size, sum(i.units for i in infos)
    count = 1 + 2 * n + FRINGES
    cmd = torch.zeros(count, units, n * n, dtype=torch.float64)
    cmd[..., m:m + n] = (torch.rand(count, units, n, generator=generator, dtype=torch.float64) * 2 - 1) * math.pi
    cmd = _dac(cmd, port)
    power = torch.stack([measure(port, infos, c).pow(2).sum((-1, -2)) for c in cmd])      # (count, units)
    c2 = 2 * cmd[..., m:m + n]
    design = torch.cat([torch.ones(count, units, 1, dtype=torch.float64), c2.cos(), c2.sin()], -1)
    coef = torch.linalg.lstsq(design.transpose(0, 1), power.T[..., None]).solution[..., 0]   # (units, 1 + 2n)
    att = 0.5 * torch.atan2(-coef[:, 1 + n:], coef[:, 1:1 + n])                        # offsets mod pi
    zeros = torch.zeros(units, m, dtype=torch.float64)
    return torch.cat([zeros, att, zeros], -1)


def sweep(params: torch.Tensor, cmd: torch.Tensor, readings: torch.Tensor, lay: Layout,
          order: torch.Tensor | None = None) -> torch.Tensor:
    """Stage B: one pass of exact coordinate descent over every shifter's offset: with the other phases
    fixed, a block is affine in (cos a_k, sin a_k) of shifter k, so the fit's cost is a trigonometric
    polynomial of degree 2 in the offset b_k (its coefficients from three model evaluations), minimised
    globally over a grid of GRID values, in ``order`` (default: U, attenuators, V); then the scale by least
    squares. params as :func:`model`'s."""
    params = params.clone()
    grid = torch.linspace(-math.pi, math.pi, GRID + 1, dtype=torch.float64)[:-1]
    c, s = grid.cos()[:, None], grid.sin()[:, None]
    for k in (range(lay.n ** 2) if order is None else order.tolist()):
        probe = params[None].repeat(3, 1, 1)
        base = params[:, k]
        probe[0, :, k], probe[1, :, k], probe[2, :, k] = base, base + math.pi / 2, base + math.pi
        f0, f1, f2 = model(probe, cmd, lay)                                   # (S, units, n, n) each
        mid = (f0 + f2) / 2                                                   # block(b + d) = mid + p cos d + q sin d
        p, q, r = (f0 - f2) / 2, f1 - mid, mid - readings
        dot = lambda x, y: (x * y).sum((0, 2, 3))                             # noqa: E731  (units,)
        rp, rq, pp, qq, pq = dot(r, p), dot(r, q), dot(p, p), dot(q, q), dot(p, q)
        cost = 2 * (rp * c + rq * s) + pp * c * c + qq * s * s + 2 * pq * c * s   # (GRID, units), + a constant
        params[:, k] = base + grid[cost.argmin(0)]
    fitted = model(params, cmd, lay)
    ratio = (fitted * readings).sum((0, 2, 3)) / fitted.pow(2).sum((0, 2, 3)).clamp_min(1e-30)
    params[:, -2] += ratio.clamp_min(1e-12).log()
    return params


def refine(port: ChipPort, infos: list[RegionInfo], lay: Layout, offset: torch.Tensor, response: torch.Tensor,
           generator: torch.Generator, sweeps: int = 0) -> Estimate:
    """Stages B and C: read ``SETTINGS`` random settings programmed through (offset, response), then
    ``sweeps`` coordinate-descent passes (:func:`sweep`) and a Levenberg-Marquardt fit of the block model
    (offset, response, log scale, transmission per unit). A unit whose fit leaves more than RETRY x the
    median residual is stuck in a false minimum (its fit at 16 settings: ~1 block in 8; a false minimum
    depends on the readings, more readings remove most): it is fitted again from the same start, its
    coordinates swept in a random order, on MORE further settings (read for every unit: the chip sets whole regions), up to RESTARTS times; the fit with
    the smaller residual on all its readings is kept."""
    n, units = lay.n, offset.shape[0]

    def read(count: int) -> tuple[torch.Tensor, torch.Tensor]:
        targets = _random_settings(count, units, lay, generator)
        cmd = _dac((targets - offset) / response, port)                      # what the DACs set
        return cmd, torch.stack([measure(port, infos, c) for c in cmd])      # (S, units, n^2), (S, units, n, n)

    cmd, readings = read(SETTINGS)

    def fit(start: torch.Tensor, idx: torch.Tensor, order: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        c, y = cmd[:, idx], readings[:, idx]
        total = y.pow(2).sum((0, 2, 3)).clamp_min(1e-30)
        params = torch.cat([start, response[idx], torch.zeros(len(idx), 1, dtype=torch.float64),
                            torch.ones(len(idx), 1, dtype=torch.float64)], -1)
        norm = model(params, c, lay).pow(2).sum((0, 2, 3)).sqrt()
        params[:, -2] = (y.pow(2).sum((0, 2, 3)).sqrt() / norm).clamp_min(1e-12).log()
        for _ in range(sweeps):
            params = sweep(params, c, y, lay, order)
        params, cost = _levenberg_marquardt(params, c, y, lay)
        return params, (cost / total).sqrt()

    every = torch.arange(units)
    params, residual = fit(offset, every)
    for _ in range(RESTARTS if sweeps else 0):
        bad = every[residual > (RETRY * residual.median()).clamp_min(FLOOR)]
        if not len(bad):
            break
        more_cmd, more = read(MORE)
        cmd, readings = torch.cat([cmd, more_cmd]), torch.cat([readings, more])
        y = readings[:, bad]
        old = ((model(params[bad], cmd[:, bad], lay) - y).pow(2).sum((0, 2, 3))
               / y.pow(2).sum((0, 2, 3)).clamp_min(1e-30)).sqrt()                # the old fit on all readings
        residual[bad] = old
        again, res = fit(offset[bad], bad, torch.randperm(n * n, generator=generator))
        better = res < old
        params[bad[better]], residual[bad[better]] = again[better], res[better]
    p = n * n
    return Estimate(_wrap(params[:, :p]), params[:, p:2 * p], params[:, -2].exp(), params[:, -1], residual)


def path_loss(transmission: torch.Tensor, lay: Layout, settings: int = 16) -> torch.Tensor:
    """How much a block of per-MZI amplitude ``transmission`` (units,) shrinks the lossless block, from the
    lab's model: sqrt(sum ||block_alpha||^2 / sum ||block_1||^2) over ``settings`` fixed random phase settings
    (a path's loss depends a little on where its light runs). Returns (units,); the calibrated gain divides
    the fitted scale by it, so a programmed block has the host's amplitude on average."""
    units = transmission.shape[0]
    phases = _random_settings(settings, units, lay, torch.Generator().manual_seed(0))       # (S, units, n^2)
    lossy = block(phases, transmission.expand(settings, units), lay).pow(2).sum((0, 2, 3))
    lossless = block(phases, torch.ones_like(transmission).expand(settings, units), lay).pow(2).sum((0, 2, 3))
    return (lossy / lossless).sqrt()


def model(params: torch.Tensor, cmd: torch.Tensor, lay: Layout) -> torch.Tensor:
    """The lab's block model: params (..., units, 2 n^2 + 2) = [offset, response, log scale, transmission
    per MZI], commands (S, units, n^2) -> matrices (..., S, units, n, n): real orthogonal meshes, ideal
    couplers, every MZI (attenuators too) passing ``transmission`` of the amplitude."""
    p = lay.n ** 2
    phases = params[..., None, :, p:2 * p] * cmd + params[..., None, :, :p]
    return block(phases, params[..., None, :, -1], lay) * params[..., None, :, -2, None, None].exp()


def block(phases: torch.Tensor, transmission: torch.Tensor, lay: Layout) -> torch.Tensor:
    """U diag(cos phi_S) V for the phases the light sees (..., n^2), every MZI scaled by ``transmission``
    (...,)."""
    n, m = lay.n, lay.size
    amp = transmission[..., None, None, None]
    u = mesh_matrix(lay, mzi_transfer(phases[..., :m]) * amp)
    v = mesh_matrix(lay, mzi_transfer(phases[..., m + n:]) * amp)
    s = torch.cos(phases[..., m:m + n]) * transmission[..., None]
    return (u * s[..., None, :]) @ v


def _levenberg_marquardt(params: torch.Tensor, cmd: torch.Tensor, readings: torch.Tensor, lay: Layout):
    """ITERATIONS damped Gauss-Newton steps on every unit at once; the Jacobian by finite differences in
    the phases the light sees (the response's columns by the chain rule: d/dg_k = command_k d/da_k) and
    in the transmission; the scale's analytically. Returns (params, final cost)."""
    p = lay.n ** 2
    units, k = params.shape
    damping = torch.full((units,), 1e-3, dtype=torch.float64)

    def residual(x):                                          # (..., units, k) -> (..., units, S n^2)
        return (model(x, cmd, lay) - readings).movedim(-4, -3).flatten(-3)

    def jacobian(x):                                          # (units, S n^2, k)
        phases = x[None, :, p:2 * p] * cmd + x[None, :, :p]                    # (S, units, p)
        base = block(phases, x[:, -1].expand(phases.shape[:-1]), lay)            # (S, units, n, n)
        scale = x[:, -2].exp()[None, :, None, None]
        probes = phases[None] + STEP * torch.eye(p, dtype=torch.float64)[:, None, None, :]   # (p, S, units, p)
        d_phase = (block(probes, x[:, -1].expand(probes.shape[:-1]), lay) - base) / STEP * scale
        d_phase = d_phase.permute(2, 1, 3, 4, 0).flatten(1, 3)                 # (units, S n^2, p)
        d_resp = d_phase * cmd.permute(1, 0, 2).repeat_interleave(lay.n ** 2, 1)   # chain rule
        d_trans = (block(phases, (x[:, -1] + STEP).expand(phases.shape[:-1]), lay) - base) / STEP * scale
        d_scale = base * scale
        flat = lambda t: t.movedim(0, 1).flatten(1)[..., None]               # noqa: E731
        return torch.cat([d_phase, d_resp, flat(d_scale), flat(d_trans)], -1)

    cost = residual(params).pow(2).sum(-1)
    for _ in range(ITERATIONS):
        r = residual(params)
        jac = jacobian(params)
        jtj = jac.transpose(1, 2) @ jac
        g = jac.transpose(1, 2) @ r[..., None]
        diag = torch.diagonal(jtj, dim1=1, dim2=2) + 1e-9
        step = -torch.linalg.solve(jtj + damping[:, None, None] * torch.diag_embed(diag), g)[..., 0]
        trial = params + step
        new_cost = residual(trial).pow(2).sum(-1)
        better = new_cost < cost
        params = torch.where(better[:, None], trial, params)
        cost = torch.where(better, new_cost, cost)
        damping = torch.where(better, damping / 4, damping * 4)
    return params, cost


def _random_settings(count: int, units: int, lay: Layout, generator: torch.Generator) -> torch.Tensor:
    """(count, units, n^2) phases like a programmed weight's: mesh angles in [-pi/2, pi/2], attenuators in
    [0, pi/2]."""
    n, m = lay.n, lay.size
    x = (torch.rand(count, units, n * n, generator=generator, dtype=torch.float64) - 0.5) * math.pi
    x[..., m:m + n] = x[..., m:m + n] + math.pi / 4
    return x


def _dac(commands: torch.Tensor, port: ChipPort) -> torch.Tensor:
    """What the phase DACs set for ``commands`` (the lab knows its DACs' grid)."""
    return commanded(commands, port.n, Noise(dac_bits=port.dac_bits))


def _screens(units: int, n: int) -> torch.Tensor:
    return torch.ones(units, 2 * n, dtype=torch.float64)


def _wrap(p: torch.Tensor) -> torch.Tensor:
    """Phases into [-pi, pi)."""
    return torch.remainder(p + math.pi, 2 * math.pi) - math.pi
