"""BP-free PINNs: sparse grids, forward-only derivative stencils, problems, the PDE objective, `hwsim pinn`."""
import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hwsim.backends import create_backend
from hwsim.cli import main
from hwsim.config import ConfigError, PinnConfig, load_config
from hwsim.model import Activation, Linear, Network, TTLinear
from hwsim.pinn.derivatives import autodiff, finite_differences, stein_grid, stein_mc
from hwsim.pinn.objective import BLOCK_SHARE, AutodiffObjective, StencilLoss, autodiff_loss, stencil_objective
from hwsim.pinn.problems import HJB, Heat, build_problem
from hwsim.pinn.sparse_grid import gauss_hermite_smolyak
from hwsim.tt import TTShape


def _gaussian_moment(powers) -> float:
    """E[prod_i z_i^p_i] for z ~ N(0, I): prod of (p - 1)!! for even p, 0 if any p is odd."""
    out = 1
    for p in powers:
        if p % 2:
            return 0.0
        out *= math.prod(range(p - 1, 0, -2))
    return float(out)


def test_level_3_in_21_dimensions_is_the_925_node_rule_of_the_paper():
    nodes, weights = gauss_hermite_smolyak(21, 3)
    assert nodes.shape == (925, 21)
    nnz = (nodes != 0).sum(1)
    origin = nnz == 0
    assert weights[origin].tolist() == pytest.approx([204.0], abs=1e-9)
    ones = (nnz == 1) & np.isclose(np.abs(nodes).max(1), 1.0)
    root3 = (nnz == 1) & np.isclose(np.abs(nodes).max(1), math.sqrt(3))
    pairs = (nnz == 2) & np.all(np.isclose(np.abs(nodes[nnz == 2]), 1.0) | (nodes[nnz == 2] == 0), axis=1).all()
    assert ones.sum() == 42 and root3.sum() == 42 and (nnz == 2).sum() == 840 and pairs.sum() == 840
    np.testing.assert_allclose(weights[ones], -10.0, atol=1e-9)
    np.testing.assert_allclose(weights[root3], 1 / 6, atol=1e-12)
    np.testing.assert_allclose(weights[nnz == 2], 1 / 4, atol=1e-12)
    assert weights.sum() == pytest.approx(1.0, abs=1e-12)
    assert len(gauss_hermite_smolyak(21, 2)[1]) == 43
    assert len(gauss_hermite_smolyak(21, 4)[1]) == 13329


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 4), st.integers(1, 4), st.data())
def test_smolyak_rules_integrate_gaussian_moments_up_to_degree_2L_minus_1(dim, level, data):
    nodes, weights = gauss_hermite_smolyak(dim, level)
    degree = data.draw(st.integers(0, 2 * level - 1))
    cuts = sorted(data.draw(st.lists(st.integers(0, degree), min_size=dim - 1, max_size=dim - 1)))
    powers = [b - a for a, b in zip([0] + cuts, cuts + [degree])]          # total degree = degree
    got = float(weights @ np.prod(nodes ** np.array(powers), axis=1))
    assert got == pytest.approx(_gaussian_moment(powers), abs=1e-9 * max(1, _gaussian_moment(powers)))


@pytest.mark.parametrize("dim, level", [(1, 3), (3, 2), (5, 3), (4, 4)])
def test_rules_are_symmetric_sorted_and_unique(dim, level):
    nodes, weights = gauss_hermite_smolyak(dim, level)
    assert len({tuple(n) for n in np.round(nodes, 12)}) == len(nodes)
    by_node = {tuple(np.round(n, 12)): w for n, w in zip(nodes, weights)}
    for n, w in by_node.items():
        assert by_node[tuple(-v + 0.0 for v in n)] == pytest.approx(w)


def test_bad_grid_arguments_name_the_argument():
    with pytest.raises(ValueError, match=r"dim: expected an integer >= 1, got 0"):
        gauss_hermite_smolyak(0, 3)
    with pytest.raises(ValueError, match=r"level: expected an integer >= 1, got 2\.5"):
        gauss_hermite_smolyak(3, 2.5)


def _cubic(dim, gen):
    """A random cubic polynomial f and its Gaussian smoothing u_s = f + s^2/2 Laplacian(f) (exact for
    degree <= 3: odd moments of z vanish and E[z z^T] = I)."""
    a = torch.randn(dim, generator=gen, dtype=torch.float64)
    b = torch.randn(dim, dim, generator=gen, dtype=torch.float64)
    c = torch.randn(dim, generator=gen, dtype=torch.float64)

    def f(x):
        mixed = x[..., 0] * x[..., 1] * x[..., 2] if dim >= 3 else 0      # no Laplacian contribution
        return 1.5 + x @ a + ((x @ b) * x).sum(-1) + (c * x ** 3).sum(-1) + mixed

    def smoothed(s):
        return lambda x: f(x) + s ** 2 / 2 * (2 * torch.diagonal(b).sum() + (6 * c * x).sum(-1))
    return f, smoothed


@pytest.mark.parametrize("dim", [1, 3, 6])
def test_stein_grid_gives_the_exact_derivatives_of_the_smoothed_model_for_cubics(dim, gen):
    f, smoothed = _cubic(dim, gen)
    x = torch.rand(7, dim, generator=gen, dtype=torch.float64)
    for sigma in (0.1, 0.5):
        stencil = stein_grid(dim, sigma, 3)
        got = stencil.combine(f(stencil.points(x)))
        want = autodiff(smoothed(sigma), x)
        for name in ("value", "grad", "second"):
            torch.testing.assert_close(getattr(got, name), getattr(want, name).detach(), rtol=1e-9, atol=1e-9)


def test_finite_differences_are_exact_for_quadratics_and_count_2d_plus_1(gen):
    dim = 5
    q = torch.randn(dim, dim, generator=gen, dtype=torch.float64)
    f = lambda x: ((x @ q) * x).sum(-1) + x.sum(-1)  # noqa: E731
    x = torch.rand(4, dim, generator=gen, dtype=torch.float64)
    stencil = finite_differences(dim, 0.1)
    assert stencil.size == 2 * dim + 1
    got, want = stencil.combine(f(stencil.points(x))), autodiff(f, x)
    torch.testing.assert_close(got.grad, want.grad.detach(), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(got.second, want.second.detach(), rtol=1e-9, atol=1e-9)


def test_monte_carlo_stein_is_unbiased_within_its_sampling_error(gen):
    """For f = sum_i x_i^2 the smoothed gradient is 2 x and the Laplacian diagonal 2; the MC estimate's
    error must be within 5 standard errors of its own sample spread."""
    dim, samples = 4, 4000
    x = torch.rand(1, dim, generator=gen, dtype=torch.float64)
    stencil = stein_mc(dim, samples, gen, 0.1)
    assert stencil.size == 2 * samples + 1
    values = (stencil.points(x) ** 2).sum(-1)
    got = stencil.combine(values)
    z = stencil.offsets[1:samples + 1] / 0.1
    f_plus, f_minus, f0 = values[1:samples + 1], values[samples + 1:], values[0]
    per_grad = z * ((f_plus - f_minus) / 0.2)[:, None]
    per_second = (z ** 2 - 1) * ((f_plus + f_minus - 2 * f0) / 0.02)[:, None]
    for est, per, want in ((got.grad[0], per_grad, 2 * x[0]), (got.second[0], per_second, torch.full((dim,), 2.0))):
        stderr = per.std(0) / math.sqrt(samples)
        assert ((est - want).abs() <= 5 * stderr + 1e-12).all()


@pytest.mark.parametrize("problem", [HJB(20), HJB(3), Heat(10), Heat(2)])
def test_exact_solutions_satisfy_the_pde_and_the_ansatz_reaches_them(problem, gen):
    x = problem.sample(50, gen)
    d = autodiff(problem.exact, x)
    assert problem.residual(d).abs().max() < 1e-12
    # the ansatz with the right N is exact: N = 1 (HJB), N = (exact - base) / t (heat)
    net = (problem.exact(x) - problem.base(x)) / problem.gate(x)
    torch.testing.assert_close(problem.ansatz(x, net), problem.exact(x))
    if isinstance(problem, HJB):
        torch.testing.assert_close(net, torch.ones_like(net))


def test_the_untrained_hjb20_model_scores_5_46_percent():
    p = HJB(20)
    x = p.sample(200_000, torch.Generator().manual_seed(0))
    err = float((p.base(x) - p.exact(x)).norm() / p.exact(x).norm())
    assert err == pytest.approx(0.0546, abs=0.0003)
    with pytest.raises(ValueError, match=r"pde\.problem: 'wave' is not allowed; use one of hjb, heat"):
        build_problem("wave", 3)


def _pinn_net(inputs, width=8):
    return Network([Linear(inputs, width), Activation("sin"), Linear(width, 1)], init_gain=1.0)


def test_stencil_objective_batches_queries_exactly_like_one_at_a_time(gen):
    problem, backend = HJB(3), create_backend("ideal", dtype="float64")
    net = _pinn_net(problem.inputs)
    backend.bind(net)
    theta = net.init_params(gen)
    x = problem.sample(5, gen)
    stencil = stein_grid(problem.inputs, 0.1, 3)
    deltas = 0.01 * torch.randn(6, net.space.size, generator=gen, dtype=torch.float64)
    objective = stencil_objective(net, backend, problem, stencil, x, chunk_elements=1000)
    together = objective.losses(theta, deltas)
    for q in range(6):
        t = theta + deltas[q]
        u = problem.ansatz(objective.loss.points, net.forward(backend, net.space.unflatten(t), objective.x)[..., 0])
        alone = problem.residual(stencil.combine(u)).pow(2).mean()
        torch.testing.assert_close(together[q], alone, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("start", [0, "last"])
@pytest.mark.parametrize("block", [1, 2, 5])
def test_split_and_blocked_losses_equal_every_point_through_the_network(gen, start, block):
    """The ideal backend's sin(a + c) split of a TT first layer, on blocks of points (2 does not divide
    B = 5), gives the losses of all stencil points through the network at once, with the first layer's
    tensors perturbed per query or shared; so does the plain blocked evaluation (what the fixed backend,
    not exactly linear, runs); and the FO loss and its gradient equal the unblocked ones."""
    problem, backend = HJB(3), create_backend("ideal", dtype="float64")
    net = Network([TTLinear(4, 8, True, TTShape.build(4, 8, 2, (2, 2), (2, 4))), Activation("sin"),
                   Linear(8, 8), Activation("sin"), Linear(8, 1)], init_gain=1.0)
    backend.bind(net)
    theta = net.init_params(gen)
    x = problem.sample(5, gen)
    stencil = stein_grid(problem.inputs, 0.1, 3)
    first = 0 if start == 0 else net.space.entries[-1].offset
    deltas = 0.01 * torch.randn(4, net.space.size - first, generator=gen, dtype=torch.float64)
    loss = StencilLoss(problem, stencil, x)
    want = torch.stack([loss(net.forward(backend, net.space.unflatten(torch.cat([theta[:first], theta[first:] + d])),
                                         loss.points)) for d in deltas])
    chunk = BLOCK_SHARE * stencil.size * 8 * block
    split = stencil_objective(net, backend, problem, stencil, x, chunk_elements=chunk)
    plain = stencil_objective(net, backend, problem, stencil, x, chunk_elements=chunk)
    plain.split_rows = None
    assert split.split_rows is not None and split.block == block
    for objective in (split, plain):
        torch.testing.assert_close(objective.losses(theta, deltas, first), want, rtol=1e-12, atol=1e-15)
    at = theta.clone().requires_grad_(True)
    blocked = split.loss_at(at)
    grad, = torch.autograd.grad(blocked, at)
    ref = theta.clone().requires_grad_(True)
    whole = loss(net.forward(backend, net.space.unflatten(ref), loss.points))
    torch.testing.assert_close(blocked, whole, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(grad, torch.autograd.grad(whole, ref)[0], rtol=1e-10, atol=1e-13)
    fixed = create_backend("fixed", bits=16)
    fixed.bind(net)
    assert stencil_objective(net, fixed, problem, stencil, x, chunk_elements=1000).split_rows is None


def test_autodiff_objective_keeps_every_query_its_own_input_gradient(gen):
    problem, backend = Heat(2), create_backend("ideal", dtype="float64")
    net = _pinn_net(problem.inputs)
    backend.bind(net)
    theta = net.init_params(gen)
    x = problem.sample(4, gen)
    deltas = 0.05 * torch.randn(3, net.space.size, generator=gen, dtype=torch.float64)
    got = AutodiffObjective(net, backend, problem, x).losses(theta, deltas)
    for q in range(3):
        tensors = net.space.unflatten(theta + deltas[q])
        want = autodiff_loss(problem, lambda p: net.forward(backend, tensors, p), x)
        torch.testing.assert_close(got[q], want.detach(), rtol=1e-12, atol=1e-14)
    # CGE on the multilinear ideal backend must not take the linear shortcut through the loss
    idx = torch.tensor([0, 5])
    cge = AutodiffObjective(net, backend, problem, x).coordinate_losses(theta, idx, 0.1)
    plus = torch.zeros(2, net.space.size, dtype=torch.float64)
    plus[0, 0] = plus[1, 5] = 0.1
    torch.testing.assert_close(cge, AutodiffObjective(net, backend, problem, x).losses(theta, plus))


SMALL = ["pde.dim=3", "pde.points=16", "pde.test_points=200", "train.steps=6", "train.eval_every=3",
         "train.smoothed_points=20"]


@pytest.mark.parametrize("config, extra", [
    ("hjb20_zo_tt_sg", []), ("hjb20_fo_ad", []), ("hjb20_zo_tt_fd", []),
    ("hjb20_zo_tt_sg", ["pde.derivatives.method=stein_mc", "pde.derivatives.samples=8"]),
    ("hjb20_zo_tt_sg", ["pde.problem=heat", "backend.name=fixed", "backend.bits=16"]),
])
@pytest.mark.slow
def test_pinn_runs_write_a_run_directory_and_are_deterministic(tmp_path, config, extra):
    overrides = SMALL + ["model.layers.0.in_features=4", "model.layers.0.in_factors=[2, 2]"] + extra
    for run in ("a", "b"):
        assert main(["pinn", config, "--out", str(tmp_path / run), "--quiet"] + sum((["--set", o] for o in overrides), [])) == 0
    m = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert json.loads((tmp_path / "b" / "metrics.json").read_text())["rel_l2"] == m["rel_l2"]
    for name in ("config.yaml", "metrics.jsonl", "params.pt", "error.png", "line.png"):
        assert (tmp_path / "a" / name).is_file()
    assert m["steps"] == 6 and m["forward_evals"] == m["loss_queries"] * 16 * m["evals_per_point"]
    assert np.isfinite(m["rel_l2"]) and np.isfinite(m["rel_l2_learned"])


def test_pinn_config_errors_are_clear(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)          # the default --out runs/<config> must not meet a run of the developer's
    with pytest.raises(ConfigError, match=r"has a pde section: it is a PINN config; run it with `hwsim pinn`"):
        load_config("hjb20_zo_tt_sg")
    with pytest.raises(ConfigError, match=r"has a data section: it is a training config; run it with `hwsim train`"):
        load_config("mnist_tt_zo", [], PinnConfig)
    assert main(["pinn", "hjb20_zo_tt_sg", "--set", "pde.dim=5", "--quiet"]) == 2
    assert "the network maps 21 -> 1; pde hjb with dim 5 needs 6 -> 1" in capsys.readouterr().err
    assert main(["pinn", "hjb20_fo_ad", "--set", "backend.name=fixed", "--set", "estimator.name=rge", "--quiet"]) == 2
    assert "'autodiff' needs a differentiable backend" in capsys.readouterr().err


TINY = ["pde.dim=3", "pde.points=8", "pde.test_points=100", "train.steps=5", "train.eval_every=5",
        "train.smoothed_points=10", "model.layers.0.in_features=4", "model.layers.0.in_factors=[2, 2]"]


def test_eval_deploys_a_pinn_run_on_another_backend(tmp_path, capsys):
    """`hwsim eval` refused PINN runs ("has a pde section"). On the run's own backend (ideal, float64) the
    deployed params.pt (the decoded weights, float64) are the trained ones and the test points are the run's:
    the run's final rel. L2 error, bit for bit; 8-bit fixed point rounds weights and activations: another,
    finite error. A config change that breaks the model is the run's clear error."""
    run = tmp_path / "run"
    assert main(["pinn", "hjb20_zo_tt_sg", "--quiet", "--out", str(run)] + [a for k in TINY for a in ("--set", k)]) == 0
    m = json.loads((run / "metrics.json").read_text())
    capsys.readouterr()
    assert main(["eval", str(run), "--json", str(tmp_path / "same.json")]) == 0
    same = json.loads((tmp_path / "same.json").read_text())
    assert (same["rel_l2"], same["rel_l2_learned"]) == (m["rel_l2"], m["rel_l2_learned"])
    assert same["backend"] == "ideal" and same["inferences"] == 100 and same["energy_j_per_inference"] > 0
    assert f"{run} on ideal {{'dtype': 'float64'}}: rel. L2 error {100 * m['rel_l2']:.3f} %" in capsys.readouterr().out
    assert main(["eval", str(run), "--set", "backend.name=fixed", "--set", "backend.bits=8",
                 "--json", str(tmp_path / "fixed.json")]) == 0
    fixed = json.loads((tmp_path / "fixed.json").read_text())
    assert fixed["backend"] == "fixed" and math.isfinite(fixed["rel_l2"]) and fixed["rel_l2"] != m["rel_l2"]
    assert f"on fixed {{'bits': 8}}: rel. L2 error {100 * fixed['rel_l2']:.3f} %" in capsys.readouterr().out
    assert main(["eval", str(run), "--set", "pde.dim=5"]) == 2
    assert "the network maps 4 -> 1; pde hjb with dim 5 needs 6 -> 1" in capsys.readouterr().err


@pytest.mark.slow
def test_compare_tables_pinn_runs_and_refuses_mixed_kinds(tmp_path, capsys):
    """Regression: `hwsim compare` ended in a KeyError on PINN run directories."""
    for run in ("a", "b"):
        assert main(["pinn", "hjb20_zo_tt_sg", "--out", str(tmp_path / run), "--quiet"]
                    + sum((["--set", o] for o in SMALL + ["model.layers.0.in_features=4", "model.layers.0.in_factors=[2, 2]",
                                                          f"seed={ord(run)}"]), [])) == 0
    capsys.readouterr()
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--plot", str(tmp_path / "c.png")]) == 0
    m = json.loads((tmp_path / "a" / "metrics.json").read_text())
    table = capsys.readouterr().out
    assert "| run | estimator | backend | rel. L2 (%) |" in table and f"| a | rge | ideal | {100 * m['rel_l2']:.4g} |" in table
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "metrics.json").write_text(json.dumps({"test_accuracy": 0.5, "best_test_accuracy": 0.5}))
    (tmp_path / "t" / "metrics.jsonl").write_text("")
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "t")]) == 2
    assert "mix `hwsim train` and `hwsim pinn` runs" in capsys.readouterr().err
