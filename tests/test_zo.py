"""Estimator properties on functions whose gradient is known exactly."""
import pytest
import torch

from hwsim.params import ParamSpace
from hwsim.zo import CGE, RGE, Hybrid, sample_directions


class Quadratic:
    """L(theta) = 0.5 theta^T A theta + b^T theta + c, evaluated exactly in float64."""

    def __init__(self, d, seed=0, curvature=1.0):
        g = torch.Generator().manual_seed(seed)
        m = torch.randn(d, d, generator=g, dtype=torch.float64)
        self.a = curvature * (m @ m.T) / d
        self.b = torch.randn(d, generator=g, dtype=torch.float64)
        self.calls = 0

    def value(self, t):
        return 0.5 * ((t @ self.a) * t).sum(-1) + t @ self.b + 0.5

    def grad(self, t):
        return self.a @ t + self.b

    def losses(self, theta, deltas, start=0):
        self.calls += len(deltas)
        moved = theta.repeat(len(deltas), 1)
        moved[:, start:start + deltas.shape[1]] += deltas
        return self.value(moved)

    def block_losses(self, theta, blocks):
        return [self.losses(theta, deltas, start) for deltas, start in blocks]

    def coordinate_losses(self, theta, idx, h):
        deltas = torch.zeros(len(idx), theta.numel(), dtype=theta.dtype)
        deltas[torch.arange(len(idx)), idx] = h
        return self.losses(theta, deltas)


def space(d, parts=1):
    cut = [d // parts] * (parts - 1)
    cut.append(d - sum(cut))
    return ParamSpace((f"t{i}", (n,)) for i, n in enumerate(cut))


def mean_estimate(est, f, theta, repeats, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.stack([est.estimate(f, theta, g).grad for _ in range(repeats)]).mean(0)


@pytest.mark.parametrize("distribution", ["rademacher", "gaussian", "sphere"])
@pytest.mark.parametrize("form", ["forward", "antithetic"])
@pytest.mark.parametrize("per_tensor", [False, True])
def test_rge_is_unbiased_on_a_quadratic(distribution, form, per_tensor):
    """E[g] = grad on a quadratic for symmetric directions (odd moments vanish); the mean of K
    single-direction estimates has E|g_mean - grad|^2 ~ (d_block + 1) |grad|^2 / K."""
    d = 12
    f = Quadratic(d)
    theta = torch.linspace(-1, 1, d, dtype=torch.float64)
    true = f.grad(theta)
    errs = {}
    for n, repeats in ((4, 25), (400, 25)):
        est = RGE(space(d, 3 if per_tensor else 1), n, 1e-3, distribution, form, per_tensor)
        errs[n] = (mean_estimate(est, f, theta, repeats) - true).norm().item()
        k = n * repeats
        # 4 sigma on the error norm; gaussian/sphere have a heavier 4th moment: (d + 2) instead of (d - 1)
        bound = 4 * ((d + 2) * true.norm().item() ** 2 / k) ** 0.5
        assert errs[n] < bound
    assert errs[400] < errs[4]


def test_rge_counts_queries_and_reuses_the_base_loss():
    f = Quadratic(10)
    theta = torch.zeros(10, dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    est = RGE(space(10, 2), 5, 0.01, per_tensor=True)
    out = est.estimate(f, theta, g)
    assert out.queries == f.calls == 2 * 5 + 1 == est.queries_per_step()
    assert float(out.loss) == pytest.approx(f.value(theta).item())
    anti = RGE(space(10), 5, 0.01, form="antithetic")
    f.calls = 0
    assert anti.estimate(f, theta, g).queries == f.calls == 10 == anti.queries_per_step()


def test_rge_per_tensor_touches_one_block_per_query():
    seen = []

    class Spy(Quadratic):
        def losses(self, theta, deltas, start=0):
            seen.append((start, tuple(deltas.shape), bool((deltas[0] == 0).all()), bool((deltas[1:] != 0).all())))
            return super().losses(theta, deltas, start)

    est = RGE(space(9, 3), 4, 0.1, per_tensor=True)
    est.estimate(Spy(9), torch.zeros(9, dtype=torch.float64), torch.Generator().manual_seed(0))
    # the base point (a zero row) rides with the first block's 4 queries; every other call moves one block
    assert seen == [(0, (5, 3), True, True), (3, (4, 3), False, True), (6, (4, 3), False, True)]


def test_rge_sign_returns_signs():
    est = RGE(space(6), 3, 0.01, sign=True)
    g = est.estimate(Quadratic(6), torch.ones(6, dtype=torch.float64), torch.Generator().manual_seed(0)).grad
    assert set(g.abs().unique().tolist()) <= {0.0, 1.0}


def test_directions_have_identity_second_moment():
    g = torch.Generator().manual_seed(0)
    like = torch.zeros(0, dtype=torch.float64)
    for dist in ("rademacher", "gaussian", "sphere"):
        u = sample_directions(20000, 5, dist, g, like)
        torch.testing.assert_close(u.T @ u / len(u), torch.eye(5, dtype=torch.float64), atol=0.05, rtol=0)
    u = sample_directions(3, 7, "sphere", g, like)
    torch.testing.assert_close(u.norm(dim=1), torch.full((3,), 7 ** 0.5, dtype=torch.float64))


def test_cge_is_exact_on_linear_and_central_is_exact_on_quadratic():
    d = 8
    f = Quadratic(d, curvature=0.0)          # linear
    theta = torch.randn(d, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(0)
    for form in ("forward", "central"):
        torch.testing.assert_close(CGE(space(d), 0.1, form).estimate(f, theta, g).grad, f.grad(theta),
                                   rtol=0, atol=1e-12)
    q = Quadratic(d)
    torch.testing.assert_close(CGE(space(d), 0.1, "central").estimate(q, theta, g).grad, q.grad(theta),
                               rtol=0, atol=1e-12)
    # forward differences are biased by exactly mu/2 * A_jj on a quadratic
    fwd = CGE(space(d), 0.1, "forward").estimate(q, theta, g).grad
    torch.testing.assert_close(fwd, q.grad(theta) + 0.05 * torch.diagonal(q.a), rtol=0, atol=1e-12)


def test_cge_subset_zeroes_the_rest_and_counts():
    d = 400
    f = Quadratic(d, curvature=0.0)
    est = CGE(space(d), 0.01, "central", subset=0.5)
    out = est.estimate(f, torch.zeros(d, dtype=torch.float64), torch.Generator().manual_seed(0))
    kept = (out.grad != 0).sum().item()
    assert 150 < kept < 250 and out.queries == 2 * kept
    nz = out.grad != 0
    torch.testing.assert_close(out.grad[nz], f.b[nz])


def test_hybrid_switches_on_epoch_and_on_patience():
    sp = space(4)
    h = Hybrid(RGE(sp), CGE(sp), switch_epoch=3)
    h.observe(2)
    assert h.phase == "rge"
    h.observe(3)
    assert h.phase == "cge"
    h = Hybrid(RGE(sp), CGE(sp), patience=2)
    for acc in (0.5, 0.6, 0.6):
        h.observe(0, acc)
    assert h.phase == "rge"
    h.observe(0, 0.55)
    assert h.phase == "cge"
    with pytest.raises(ValueError):
        Hybrid(RGE(sp), CGE(sp))


def test_bad_estimator_settings_are_rejected():
    with pytest.raises(ValueError, match="distribution"):
        RGE(space(3), distribution="uniform")
    with pytest.raises(ValueError, match="form"):
        CGE(space(3), form="backward")
    with pytest.raises(ValueError, match="subset"):
        CGE(space(3), subset=0.0)
