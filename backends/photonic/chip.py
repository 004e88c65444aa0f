"""From weight matrices to photonic blocks and back, and what a block really does on the chip.

A block is an n x n weight W = g U diag(S) V (the tensorized optical NN of Zhao et al., arXiv:2401.00413): U and V real orthogonal meshes of
n(n-1)/2 MZIs each, S = cos(phi_S) realised by n attenuating MZIs, g one electronic gain. Its n^2 phases
sit in one vector [theta_U (M), phi_S (n), theta_V (M)], M = n(n-1)/2; every phase drives one MZI, so a
block holds n^2 MZIs. The output signs of U and V (fixed +-1 screens) and g are set when a weight is
programmed and stay fixed while phases are trained. A larger matrix is tiled into ceil(R/n) x ceil(C/n)
blocks, zero-padded.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import torch

from hwsim.backends.photonic.mesh import Layout, clements_decompose, layout, mesh_matrix, mzi_transfer
from hwsim.backends.photonic.noise import Noise

DRIFT_STEPS = 1000          # Noise.drift is the rms random-walk distance over this many optimizer steps


@dataclass(frozen=True)
class Tiling:
    """How a (rows, cols) matrix is cut into n x n blocks, row-major."""

    rows: int
    cols: int
    n: int

    @property
    def grid(self) -> tuple[int, int]:
        return -(-self.rows // self.n), -(-self.cols // self.n)

    @property
    def blocks(self) -> int:
        return math.prod(self.grid)

    def split(self, mat: torch.Tensor) -> torch.Tensor:
        """(..., rows, cols) -> (..., blocks, n, n), zero-padded."""
        gr, gc = self.grid
        n = self.n
        padded = torch.nn.functional.pad(mat, (0, gc * n - self.cols, 0, gr * n - self.rows))
        b = padded.reshape(*mat.shape[:-2], gr, n, gc, n).transpose(-3, -2)
        return b.reshape(*mat.shape[:-2], gr * gc, n, n)

    def join(self, blocks: torch.Tensor) -> torch.Tensor:
        """(..., blocks, n, n) -> (..., rows, cols) (padding dropped)."""
        gr, gc = self.grid
        n = self.n
        m = blocks.reshape(*blocks.shape[:-3], gr, gc, n, n).transpose(-3, -2)
        return m.reshape(*blocks.shape[:-3], gr * n, gc * n)[..., :self.rows, :self.cols]


def core_matrix(core: torch.Tensor) -> torch.Tensor:
    """A TT core (..., r, n, m, r') as the matrix one contraction step applies: (..., m r', r n)."""
    *lead, r, n, m, s = core.shape
    return core.permute(*range(len(lead)), -2, -1, -4, -3).reshape(*lead, m * s, r * n)


def matrix_core(mat: torch.Tensor, shape: tuple[int, int, int, int]) -> torch.Tensor:
    """Inverse of :func:`core_matrix`: (..., m r', r n) -> (..., r, n, m, r')."""
    r, n, m, s = shape
    lead = mat.shape[:-2]
    q = len(lead)
    return mat.reshape(*lead, m, s, r, n).permute(*range(q), q + 2, q + 3, q, q + 1)


def encode_blocks(blocks: torch.Tensor, lay: Layout) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Phases realising blocks (..., n, n) exactly on an ideal chip.

    Returns phases (..., n^2) = [theta_U, phi_S in [0, pi], theta_V], gains (...,) = the largest singular
    value, signs (..., 2n) = the output screens of U and V.
    """
    u, s, vh = torch.linalg.svd(blocks.to(torch.float64))
    gain = s[..., 0]
    cos_s = s / gain.clamp_min(1e-300)[..., None]
    phi_s = torch.arccos(cos_s.clamp(-1.0, 1.0))
    (theta_u, theta_v), (sign_u, sign_v) = clements_decompose(torch.stack([u, vh]), lay.name)   # one pass
    return torch.cat([theta_u, phi_s, theta_v], -1), gain, torch.cat([sign_u, sign_v], -1)


def split_phases(phases: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(..., n^2) -> theta_U (..., M), phi_S (..., n), theta_V (..., M)."""
    m = n * (n - 1) // 2
    return phases[..., :m], phases[..., m:m + n], phases[..., m + n:]


@lru_cache(maxsize=None)
def neighbours(n: int, name: str) -> torch.Tensor:
    """(n^2, n^2) 0/1 matrix of physically adjacent shifters in a block: MZIs of the same mesh column on
    neighbouring mode pairs (m, m +- 2), and neighbouring attenuators."""
    lay = layout(n, name)
    m = lay.size
    adj = torch.zeros(n * n, n * n, dtype=torch.float64)
    for base in (0, m + n):
        for a in range(m):
            for b in range(m):
                if lay.columns[a] == lay.columns[b] and abs(lay.modes[a] - lay.modes[b]) == 2:
                    adj[base + a, base + b] = 1.0
    for i in range(n - 1):
        adj[m + i, m + i + 1] = adj[m + i + 1, m + i] = 1.0
    return adj


class ChipState:
    """The frozen variations of one chip region of ``blocks`` blocks (drawn once from ``generator``) and
    its drift, which :meth:`advance` moves. Shapes: (blocks, n^2) per shifter; couplers (blocks, n^2, 2)."""

    def __init__(self, blocks: int, n: int, noise: Noise, generator: torch.Generator):
        p = n * n
        f64 = dict(dtype=torch.float64)
        self.gamma = 1.0 + noise.gamma_spread * torch.randn(blocks, p, generator=generator, **f64)
        self.bias = noise.phase_bias * (2 * torch.rand(blocks, p, generator=generator, **f64) - 1)
        self.coupler = noise.splitter_imbalance * torch.randn(blocks, p, 2, generator=generator, **f64)
        self.mzi = imbalance_coefficients(self.coupler)      # every MZI's (a, b), (blocks, p, 2, 2) each
        self.drift = torch.zeros(blocks, p, **f64)
        self.correction = torch.zeros(blocks, p, **f64)      # calibrated offset, subtracted from commands
        self.response = torch.ones(blocks, p, **f64)         # calibrated power-to-phase factor, divides commands
        self.gain = torch.ones(blocks, **f64)                # calibrated gain factor of every block
        self.transmission = torch.ones(blocks, **f64)        # calibrated amplitude transmission per MZI

    @classmethod
    def concat(cls, states: list["ChipState"]) -> "ChipState":
        """The blocks of ``states`` as one state (copies, for reading: realise them in one call)."""
        merged = cls.__new__(cls)
        for name in ("gamma", "bias", "coupler", "drift", "correction", "response", "gain", "transmission"):
            setattr(merged, name, torch.cat([getattr(s, name) for s in states]))
        merged.mzi = tuple(torch.cat(parts) for parts in zip(*(s.mzi for s in states)))
        return merged

    def advance(self, noise: Noise, steps: int, generator: torch.Generator) -> None:
        if noise.drift and steps:
            sigma = noise.drift * math.sqrt(steps / DRIFT_STEPS)
            self.drift += sigma * torch.randn(self.drift.shape, generator=generator, dtype=torch.float64)


def commanded(phases: torch.Tensor, n: int, noise: Noise) -> torch.Tensor:
    """What the DACs set: phases wrapped into [-pi, pi] (push-pull shifters heat one arm or the other, so a
    phase is signed and 0 means no heating; |phase| < pi is kept exactly) and rounded to the DAC grid of
    2^bits - 1 levels k * step, |k| <= 2^(bits-1) - 1."""
    wrapped = phases - 2 * math.pi * torch.round(phases / (2 * math.pi))
    step = noise.dac_step
    if step is None:
        return wrapped
    top = 2 ** (noise.dac_bits - 1) - 1
    return torch.round(wrapped / step).clamp(-top, top) * step


def actual_phases(phases: torch.Tensor, n: int, name: str, noise: Noise, state: ChipState | None,
                  calibrated: bool = True) -> torch.Tensor:
    """The phases (..., blocks, n^2) the light sees when ``phases`` are commanded: through the state's
    calibration (offset subtracted, divided by the power-to-phase factor) unless ``calibrated`` is False
    (raw DAC commands, as a calibration sets them)."""
    target = phases if state is None or not calibrated else (phases - state.correction) / state.response
    heater = commanded(target, n, noise)
    if state is None:
        return heater
    if noise.gamma_spread:
        heater = heater * state.gamma
    if noise.crosstalk:
        heater = heater + noise.crosstalk * heater @ neighbours(n, name)
    return heater + state.bias + state.drift


def imbalance_coefficients(eps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """An MZI of two couplers with splitting angles pi/4 + eps[..., 0|1] around a push-pull shifter
    diag(e^{i theta}, e^{-i theta}), in the frame in which the ideal MZI is the rotation R(theta)
    (frame . B(pi/4) P(theta) B(pi/4) = R(theta), frame = -i diag(1, -1) R(-pi/2)), is
    a e^{i theta} + b e^{-i theta}; returns the complex (a, b), each (..., 2, 2)."""
    c1, s1 = torch.cos(math.pi / 4 + eps[..., 0]), torch.sin(math.pi / 4 + eps[..., 0])
    c2, s2 = torch.cos(math.pi / 4 + eps[..., 1]), torch.sin(math.pi / 4 + eps[..., 1])
    pair = lambda p, q, r, t: torch.stack([torch.stack([p, q], -1), torch.stack([r, t], -1)], -2)  # noqa: E731
    a = pair(s2 * c1 + 0j, 1j * s1 * s2, -1j * c1 * c2, c2 * s1 + 0j)
    b = pair(c2 * s1 + 0j, -1j * c1 * c2, 1j * s1 * s2, s2 * c1 + 0j)
    return a, b


def imbalanced_mzi(theta: torch.Tensor, coefficients: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """The complex 2x2 (..., 2, 2) of imbalanced MZIs at phases theta (...), coefficients from
    :func:`imbalance_coefficients`."""
    e = torch.exp(1j * theta.to(torch.float64))[..., None, None]
    return coefficients[0] * e + coefficients[1] * e.conj()


def realise(phases: torch.Tensor, gains: torch.Tensor, signs: torch.Tensor, lay: Layout, noise: Noise,
            state: ChipState | None = None, calibrated: bool = True) -> torch.Tensor:
    """The matrices (..., blocks, n, n) the blocks really apply when ``phases`` (..., blocks, n^2) are
    commanded, with gains (..., blocks) and output signs (..., blocks, 2n). Real unless the couplers are
    imbalanced (then complex: the detector reads the real part). ``state`` None: no per-chip variation;
    ``calibrated`` False: raw commands, no calibrated offsets or gains (what a calibration measures)."""
    act = actual_phases(phases.to(torch.float64), lay.n, lay.name, noise, state, calibrated)
    if state is not None and calibrated:
        gains = gains * state.gain
    return optics(act, gains, signs, lay, noise, state)


def optics(act: torch.Tensor, gains: torch.Tensor, signs: torch.Tensor, lay: Layout, noise: Noise,
           state: ChipState | None = None) -> torch.Tensor:
    """The block matrices (..., blocks, n, n) for the phases ``act`` the light sees (no DAC, no wrapping):
    meshes, attenuators, gains, insertion loss and (with a ``state``) coupler imbalance."""
    n = lay.n
    theta_u, phi_s, theta_v = split_phases(act, n)
    amp = 10.0 ** (-noise.insertion_loss_db / 20.0)
    if noise.splitter_imbalance and state is not None:
        t = imbalanced_mzi(act, state.mzi)                                    # (..., blocks, n^2, 2, 2)
        m = n * (n - 1) // 2
        t_u, s, t_v = t[..., :m, :, :], t[..., m:m + n, 0, 0], t[..., m + n:, :, :]
    else:
        t_u, t_v, s = mzi_transfer(theta_u), mzi_transfer(theta_v), torch.cos(phi_s)
    if amp != 1.0:
        t_u, t_v, s = t_u * amp, t_v * amp, s * amp
    u = mesh_matrix(lay, t_u, signs[..., :n])
    v = mesh_matrix(lay, t_v, signs[..., n:])
    return gains[..., None, None] * (u * s[..., None, :]) @ v
