"""MZI meshes as pure functions: phases -> unitary (or real orthogonal) matrix, and back.

Convention (Clements et al., Optica 3, 1460 (2016)): an MZI on neighbouring modes (m, m+1) with
internal phase theta and external phase phi acts on those two modes as

    T(theta, phi) = [[e^{i phi} cos theta, -sin theta],
                     [e^{i phi} sin theta,  cos theta]]

and as the identity elsewhere. With phi = 0 it is the real rotation by theta: the real orthogonal case.
A mesh of n modes is a :class:`Layout`, MZIs applied input -> output in column order, followed by a
diagonal output screen D: complex phases e^{i alpha} for a unitary, fixed signs +-1 in the real case.

    U = D . T_M ... T_2 . T_1

``clements`` is the rectangular layout of depth n (Clements 2016), ``reck`` the triangular one (Reck et
al., PRL 73, 58 (1994)); both hold n(n-1)/2 MZIs. Every function broadcasts over leading batch axes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import torch

LAYOUTS = ("clements", "reck")


@dataclass(frozen=True)
class Layout:
    """Where the MZIs of an n-mode mesh sit: MZI k couples modes (modes[k], modes[k] + 1) in column
    columns[k]; k runs in application order (columns ascending, then modes)."""

    name: str
    n: int
    modes: tuple[int, ...]
    columns: tuple[int, ...]

    @property
    def size(self) -> int:
        """Number of MZIs, n(n-1)/2."""
        return len(self.modes)

    @property
    def depth(self) -> int:
        return max(self.columns, default=-1) + 1


def _nulling_sequence(n: int, name: str) -> list[tuple[str, int, int, int]]:
    """The data-independent order in which a decomposition nulls entries: (side, mode, row, col);
    side "right" multiplies columns (mode, mode+1) by T^-1, "left" rows (mode, mode+1) by T."""
    ops = []
    if name == "clements":                       # Clements 2016, algorithm of Fig. 2 (0-indexed)
        for i in range(n - 1):
            if i % 2 == 0:
                ops += [("right", i - j, n - 1 - j, i - j) for j in range(i + 1)]
            else:
                ops += [("left", n + j - i - 3, n + j - i - 2, j - 1) for j in range(1, i + 2)]
    elif name == "reck":                          # null row by row from the bottom, right to left
        for row in range(n - 1, 0, -1):
            ops += [("right", col, row, col) for col in range(row)]
    else:
        raise ValueError(f"mesh layout must be one of {', '.join(LAYOUTS)}, got {name!r}")
    return ops


def _application_order(n: int, name: str) -> list[int]:
    """Indices into the nulling sequence in the order the MZIs act on light (see decompose)."""
    ops = _nulling_sequence(n, name)
    rights = [k for k, op in enumerate(ops) if op[0] == "right"]
    lefts = [k for k, op in enumerate(ops) if op[0] == "left"]
    return rights + lefts[::-1]


@lru_cache(maxsize=None)
def _schedule(n: int, name: str) -> tuple[Layout, tuple[int, ...]]:
    """The layout and, for each layout position, the index of its op in the nulling sequence."""
    ops = _nulling_sequence(n, name)
    order = _application_order(n, name)
    free = [0] * n                               # first column in which each mode is free
    placed = []
    for k in order:
        m = ops[k][1]
        col = max(free[m], free[m + 1])
        free[m] = free[m + 1] = col + 1
        placed.append((col, m, k))
    placed.sort()
    layout = Layout(name, n, tuple(m for _, m, _ in placed), tuple(c for c, _, _ in placed))
    return layout, tuple(k for _, _, k in placed)


def layout(n: int, name: str = "clements") -> Layout:
    """The n-mode mesh layout ``name`` (clements | reck)."""
    if n < 2:
        raise ValueError(f"a mesh needs at least 2 modes, got {n}")
    return _schedule(n, name)[0]


def mzi_transfer(theta: torch.Tensor, phi: torch.Tensor | None = None) -> torch.Tensor:
    """T(theta, phi) as (..., 2, 2); real (a rotation) when phi is None, else complex."""
    c, s = torch.cos(theta), torch.sin(theta)
    if phi is None:
        return torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], -2)
    e = torch.exp(1j * phi.to(theta.dtype))
    return torch.stack([torch.stack([e * c, -s.to(e.dtype)], -1), torch.stack([e * s, c.to(e.dtype)], -1)], -2)


def mesh_matrix(lay: Layout, transfers: torch.Tensor, screen: torch.Tensor | None = None) -> torch.Tensor:
    """The mesh's matrix D . T_M ... T_1 from per-MZI 2x2 transfers (..., M, 2, 2) in layout order and
    an optional output screen (..., n) (phases e^{i alpha} or signs). Returns (..., n, n).

    The MZIs of a column touch disjoint mode pairs, so each column is one n x n matrix (2x2 blocks, 1 on
    idle modes), scattered in one indexed write; the column matrices are multiplied as a balanced tree."""
    lead = transfers.shape[:-3]
    dtype = transfers.dtype if screen is None else torch.promote_types(transfers.dtype, screen.dtype)
    pos, idle = _column_positions(lay.n, lay.name)
    n, depth = lay.n, lay.depth
    flat = torch.zeros(*lead, depth * n * n, dtype=dtype, device=transfers.device)
    flat[..., idle.to(flat.device)] = 1
    flat[..., pos.to(flat.device)] = transfers.to(dtype).flatten(-3)
    x = flat.view(*lead, depth, n, n)
    while x.shape[-3] > 1:                          # later columns act after (left of) earlier ones
        odd = x[..., -1:, :, :] if x.shape[-3] % 2 else None
        x = x[..., 1::2, :, :] @ x[..., 0:x.shape[-3] - 1:2, :, :]
        x = x if odd is None else torch.cat([x, odd], -3)
    x = x[..., 0, :, :]
    return x if screen is None else screen.to(dtype)[..., :, None] * x


@lru_cache(maxsize=None)
def _column_positions(n: int, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat indices into (depth, n, n) column matrices: where MZI k's 2x2 entries go (M*4, in the order
    of a (M, 2, 2) transfer tensor), and the diagonal entries of the modes no MZI of a column touches."""
    lay = layout(n, name)
    pos, busy = [], set()
    for m, c in zip(lay.modes, lay.columns):
        pos += [(c * n + r) * n + col for r in (m, m + 1) for col in (m, m + 1)]
        busy |= {(c, m), (c, m + 1)}
    idle = [(c * n + m) * n + m for c in range(lay.depth) for m in range(n) if (c, m) not in busy]
    return torch.tensor(pos), torch.tensor(idle, dtype=torch.long)


def clements_reconstruct(theta: torch.Tensor, screen: torch.Tensor, phi: torch.Tensor | None = None,
                         name: str = "clements") -> torch.Tensor:
    """The matrix of an n-mode mesh. theta (..., n(n-1)/2) in layout order; phi likewise for a complex
    mesh (None: real orthogonal); screen (..., n): output phases alpha (complex) or signs +-1 (real).
    Returns (..., n, n), complex when phi is given."""
    n = screen.shape[-1]
    lay = layout(n, name)
    if theta.shape[-1] != lay.size:
        raise ValueError(f"{theta.shape[-1]} internal phases given for a {n}-mode mesh of {lay.size} MZIs")
    d = torch.exp(1j * screen.to(theta.dtype)) if phi is not None else screen
    return mesh_matrix(lay, mzi_transfer(theta, phi), d)


def clements_decompose(u: torch.Tensor, name: str = "clements"):
    """Phases of a mesh that realises u (..., n, n): unitary (complex dtype) or real orthogonal.

    Returns (theta, phi, alpha) for a complex u, each in layout order (alpha: output phases), and
    (theta, signs) for a real u, such that clements_reconstruct gives u back. Raises if u is not
    unitary / orthogonal to 1e-6.
    """
    n = u.shape[-1]
    if u.dim() < 2 or u.shape[-2] != n:
        raise ValueError(f"expected square matrices (..., n, n), got shape {tuple(u.shape)}")
    eye = torch.eye(n, dtype=u.dtype, device=u.device)
    err = float((u @ u.mH - eye).abs().max()) if u.numel() else 0.0
    if err > 1e-6:
        raise ValueError(f"matrix is not {'unitary' if u.is_complex() else 'orthogonal'}: "
                         f"max |U U^H - I| = {err:.2e}")
    real = not u.is_complex()
    lay, placement = _schedule(n, name)
    ops = _nulling_sequence(n, name)
    x = u.clone()
    theta = u.new_zeros(*u.shape[:-2], len(ops), dtype=u.real.dtype if not real else u.dtype)
    phi = torch.zeros_like(theta)
    for k, (side, m, row, col) in enumerate(ops):
        if side == "right":
            a, b = x[..., row, m], x[..., row, m + 1]
            if real:
                th = _half_atan2(a, b)
            else:
                th, phi[..., k] = torch.atan2(a.abs(), b.abs()), torch.angle(a) - torch.angle(b)
            t = mzi_transfer(th, None if real else phi[..., k])
            cols = x[..., :, [m, m + 1]] @ t.mH                       # U <- U T^-1 on columns m, m+1
            x = x.clone()
            x[..., :, [m, m + 1]] = cols
        else:
            a, b = x[..., m, col], x[..., m + 1, col]
            if real:
                th = _half_atan2(-b, a)
            else:
                th, phi[..., k] = torch.atan2(b.abs(), a.abs()), torch.angle(b) - torch.angle(a) + math.pi
            t = mzi_transfer(th, None if real else phi[..., k])
            rows = t @ x[..., [m, m + 1], :]                          # U <- T U on rows m, m+1
            x = x.clone()
            x[..., [m, m + 1], :] = rows
        theta[..., k] = th
    d = torch.diagonal(x, dim1=-2, dim2=-1)
    # U = L_1^-1 .. L_p^-1 D R_q .. R_1: move D through the left ops to the output side
    if real:
        d = torch.sign(d)
        for k in reversed([k for k, op in enumerate(ops) if op[0] == "left"]):
            m = ops[k][1]
            theta[..., k] = -theta[..., k] * d[..., m] * d[..., m + 1]     # R^T D = D R(-theta d_m d_m+1)
    else:
        alpha = torch.angle(d)
        for k in reversed([k for k, op in enumerate(ops) if op[0] == "left"]):
            m = ops[k][1]
            a0, a1 = alpha[..., m].clone(), alpha[..., m + 1]
            alpha[..., m] = math.pi - phi[..., k] + a1                      # T^-1 D = D' T(theta, phi')
            phi[..., k] = math.pi + a0 - a1
    idx = torch.tensor(placement, device=u.device)
    theta = theta[..., idx]
    if real:
        return theta, d
    return theta, _wrap(phi[..., idx]), _wrap(alpha)


# Entries of an orthogonal matrix below this are zeros blurred by rounding (~1e-16): which way such a
# zero leans depends on the kernel a batched product happened to use, i.e. on how many matrices were
# decomposed together, and must not decide a phase.
ZERO = 1e-12


def _half_atan2(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The angle in [-pi/2, pi/2] with tan = y / x: either solution nulls the element, and this one keeps
    real meshes' phases far from the +-pi wrap of the DACs (the other differs by pi: a -1 on two modes,
    which the remaining nulling steps and the output signs absorb). A rounding-level x counts as +0 (not
    its sign: that would flip the angle by pi), and a pair of rounding-level zeros needs no rotation: 0."""
    s = torch.where(x < -ZERO, -1.0, 1.0).to(x.dtype)
    angle = torch.atan2(y * s, x * s)
    return torch.where(torch.hypot(x, y) < ZERO, torch.zeros_like(angle), angle)


def _wrap(p: torch.Tensor) -> torch.Tensor:
    """Phases into [0, 2 pi)."""
    return torch.remainder(p, 2 * math.pi)
