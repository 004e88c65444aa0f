"""The phase calibration (backends/photonic/calibration.py) on a chip it can only set and read."""
from __future__ import annotations

import torch

from hwsim.backends.photonic import calibration as C
from hwsim.backends.photonic.mesh import layout


class Bench:
    """A small chip of 4x4 blocks (no imbalance, no loss, ideal DACs): true offsets U[-1, 1] rad, Gaussian
    read-out noise of std ``sigma`` x the probe's largest output. Records what was commanded."""

    def __init__(self, units: int, sigma: float, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.lay = layout(4)
        self.truth = 2 * torch.rand(units, 16, generator=g, dtype=torch.float64) - 1
        self.scale = 0.5 + torch.rand(units, generator=g, dtype=torch.float64)
        self.sigma, self.noise, self.commands = sigma, g, []
        self.units = units

    def port(self) -> C.ChipPort:
        regions = [C.RegionInfo("r", (self.units, 1), 1)]
        return C.ChipPort(regions, 4, "clements", None, self._set, self._read)

    def _set(self, name, commands):
        self.commands.append(commands.reshape(self.units, 16).clone())

    def _read(self, name, x):
        w = C.block(self.commands[-1] + self.truth, torch.ones(self.units, dtype=torch.float64), self.lay)
        w = w * self.scale[:, None, None]
        y = torch.einsum("pkc,roc->pkro", x, w).flatten(-2)                     # (1, K, units x 4)
        fs = y.abs().amax(-1, keepdim=True)
        return y + self.sigma * fs * torch.randn(y.shape, generator=self.noise, dtype=torch.float64)


def test_calibration_sees_only_set_phases_and_read():
    """The port has no other public attribute, and the procedure runs on a chip that offers nothing else."""
    public = {a for a in dir(C.ChipPort) if not a.startswith("_")}
    assert public == {"regions", "n", "mesh", "dac_bits", "set_phases", "read"}
    bench = Bench(units=2, sigma=0.0)
    est = C.calibrate_mesh(bench.port(), torch.Generator().manual_seed(1))
    err = C._wrap(est["r"].offset - bench.truth)
    assert float(err.abs().max()) < 1e-6


def test_offsets_within_the_noise_bound():
    """With read-out noise of std sigma FS per reading and the right model, least squares has covariance
    (J^T J)^-1 J^T Sigma J (J^T J)^-1 (J: the readings' derivatives at the truth for the commands the fit
    used, Sigma: the readings' variances); every offset lies within 5 standard deviations of it."""
    sigma = 1e-3
    bench = Bench(units=3, sigma=sigma)
    est = C.calibrate_mesh(bench.port(), torch.Generator().manual_seed(2))
    lay, p = bench.lay, 16
    cmd = torch.stack(bench.commands[-C.SETTINGS:])                              # the fit's settings (S, units, p)
    truth = torch.cat([bench.truth, torch.ones(3, p, dtype=torch.float64), bench.scale.log()[:, None],
                       torch.ones(3, 1, dtype=torch.float64)], -1)
    h = 1e-6
    base = C.model(truth, cmd, lay)                                               # (S, units, 4, 4)
    cols = []
    for k in range(truth.shape[1]):
        moved = truth.clone()
        moved[:, k] += h
        cols.append(((C.model(moved, cmd, lay) - base) / h).movedim(1, 0).flatten(1))
    jac = torch.stack(cols, -1)                                                   # (units, S 16, params)
    fs = base.abs().amax(-2, keepdim=True).expand_as(base)                       # a probe's largest output
    var = (sigma * fs).pow(2).movedim(1, 0).flatten(1)                            # (units, S 16)
    inv = torch.linalg.pinv(jac.transpose(1, 2) @ jac)
    cov = inv @ (jac.transpose(1, 2) * var[:, None, :]) @ jac @ inv
    std = torch.diagonal(cov, dim1=1, dim2=2)[:, :p].sqrt()
    err = C._wrap(est["r"].offset - bench.truth)
    assert float((err.abs() / std).max()) < 5.0, (err.abs() / std).max()
    assert float(std.max()) < 0.01                                                # a bound that means something
