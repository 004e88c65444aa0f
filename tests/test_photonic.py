"""The photonic backend: MZI-mesh decompositions, the chip's non-idealities, both training modes."""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hwsim.backends import create_backend
from hwsim.backends.photonic.chip import (ChipState, Tiling, actual_phases, commanded, core_matrix, encode_blocks,
                                          imbalance_coefficients, imbalanced_mzi, matrix_core, neighbours, realise)
from hwsim.backends.photonic.mesh import clements_decompose, clements_reconstruct, layout, mzi_transfer
from hwsim.backends.photonic.noise import Noise, build_noise
from hwsim.build import build_backend, build_network
from hwsim.config import ConfigError, load_config
from hwsim.model import Activation, Linear, Network, TTLinear
from hwsim.objective import BatchObjective
from hwsim.tt import TTShape
from hwsim.zo import RGE

F64 = torch.float64


def haar_unitary(n, batch, gen, real):
    """Haar-random unitaries (complex) or orthogonal matrices (real), (batch, n, n)."""
    if real:
        a = torch.randn(batch, n, n, generator=gen, dtype=F64)
    else:
        a = torch.complex(torch.randn(batch, n, n, generator=gen, dtype=F64), torch.randn(batch, n, n, generator=gen, dtype=F64))
    q, r = torch.linalg.qr(a)
    d = torch.diagonal(r, dim1=-2, dim2=-1)
    return q * (d / d.abs())[..., None, :]


@pytest.mark.parametrize("name", ["clements", "reck"])
@pytest.mark.parametrize("real", [True, False])
@pytest.mark.parametrize("n", range(2, 17))
def test_decomposition_round_trip(name, real, n):
    gen = torch.Generator().manual_seed(n)
    u = haar_unitary(n, 3, gen, real)
    phases = clements_decompose(u, name)
    if real:
        theta, signs = phases
        back = clements_reconstruct(theta, signs, name=name)
        assert set(signs.unique().tolist()) <= {-1.0, 1.0}
        assert theta.abs().max() <= math.pi / 2 + 1e-12          # far from the DACs' +-pi wrap
    else:
        theta, phi, alpha = phases
        back = clements_reconstruct(theta, alpha, phi, name=name)
    assert theta.shape == (3, n * (n - 1) // 2)
    assert (back - u).abs().max() < 1e-10


def test_layouts():
    for n in (2, 5, 8):
        lay = layout(n)
        assert lay.size == n * (n - 1) // 2 and lay.depth == (n if n > 2 else 1)
        assert all(m % 2 == c % 2 for m, c in zip(lay.modes, lay.columns))      # rectangular: alternating columns
        assert layout(n, "reck").depth == max(1, 2 * n - 3)
    with pytest.raises(ValueError, match="clements, reck"):
        layout(4, "triangle")


def test_decompose_rejects_non_unitary():
    with pytest.raises(ValueError, match="not orthogonal"):
        clements_decompose(torch.randn(4, 4, dtype=F64))


def test_mzi_convention():
    theta, phi = torch.tensor(0.3, dtype=F64), torch.tensor(1.1, dtype=F64)
    t = mzi_transfer(theta, phi)
    c, s, e = math.cos(0.3), math.sin(0.3), complex(math.cos(1.1), math.sin(1.1))
    assert torch.allclose(t, torch.tensor([[e * c, -s], [e * s, c]], dtype=torch.complex128))
    assert torch.allclose(mzi_transfer(theta), torch.tensor([[c, -s], [s, c]], dtype=F64))


@settings(max_examples=20, deadline=None)
@given(st.integers(1, 20), st.integers(1, 20), st.integers(0, 2 ** 31))
def test_blocks_round_trip(rows, cols, seed):
    """Any matrix, tiled into 8x8 blocks and encoded to phases, comes back on an ideal chip."""
    gen = torch.Generator().manual_seed(seed)
    mat = torch.randn(rows, cols, generator=gen, dtype=F64)
    tiling = Tiling(rows, cols, 8)
    assert torch.equal(tiling.join(tiling.split(mat)), mat)
    lay = layout(8)
    phases, gains, signs = encode_blocks(tiling.split(mat), lay)
    assert phases.shape == (tiling.blocks, 64)
    back = tiling.join(realise(phases, gains, signs, lay, Noise()))
    assert (back - mat).abs().max() < 1e-10


def test_core_matrix_inverse():
    core = torch.randn(2, 3, 4, 5, dtype=F64)
    mat = core_matrix(core)
    assert mat.shape == (4 * 5, 2 * 3)
    assert torch.equal(matrix_core(mat, (2, 3, 4, 5)), core)


# --- non-idealities, one at a time -------------------------------------------------------------------
def _state(noise, blocks=3, seed=0):
    return ChipState(blocks, 8, noise, torch.Generator().manual_seed(seed))


def _phases(blocks=3, seed=1):
    p = torch.rand(blocks, 64, generator=torch.Generator().manual_seed(seed), dtype=F64) * math.pi
    return p


def test_every_noise_source_off_is_exact():
    noise = Noise()
    p = _phases()
    assert torch.equal(actual_phases(p, 8, "clements", noise, _state(noise)), p)


def test_dac_quantization():
    noise = Noise(dac_bits=8)
    p = _phases()
    q = commanded(p, 8, noise)
    step = 2 * math.pi / 255
    assert torch.allclose(q / step, torch.round(q / step), atol=1e-9)
    assert (q - p).abs().max() <= step / 2 + 1e-12


def test_gamma_spread_and_crosstalk():
    p = _phases()
    g = Noise(gamma_spread=0.01)
    st_g = _state(g)
    assert torch.allclose(actual_phases(p, 8, "clements", g, st_g), p * st_g.gamma)
    assert 0.005 < float((st_g.gamma - 1).std()) < 0.015
    x = Noise(crosstalk=0.005)
    adj = neighbours(8, "clements")
    assert torch.equal(adj, adj.T) and adj.sum() > 0
    assert torch.allclose(actual_phases(p, 8, "clements", x, _state(x)), p + 0.005 * p @ adj)


def test_phase_error_scales_output_error():
    """A phase bias of rms sigma moves a block's outputs proportionally to sigma (small sigma)."""
    lay = layout(8)
    p = _phases()
    ones, signs = torch.ones(3, dtype=F64), torch.ones(3, 16, dtype=F64)
    ideal = realise(p, ones, signs, lay, Noise())
    errs = []
    for sigma in (1e-3, 2e-3, 4e-3):
        noise = Noise(phase_bias=sigma)
        errs.append(float((realise(p, ones, signs, lay, noise, _state(noise)) - ideal).pow(2).mean().sqrt()))
    assert errs[1] / errs[0] == pytest.approx(2, rel=0.02) and errs[2] / errs[1] == pytest.approx(2, rel=0.02)


def test_insertion_loss_applies_to_power():
    """Identity blocks: each mode's power drops by loss_dB per MZI on its path (Clements edges pass fewer)."""
    lay = layout(8)
    p = torch.zeros(1, 64, dtype=F64)                                  # all rotations 0, attenuators open
    ones, signs = torch.ones(1, dtype=F64), torch.ones(1, 16, dtype=F64)
    block = realise(p, ones, signs, lay, Noise(insertion_loss_db=0.2))[0]
    passed = torch.tensor([sum(1 for m in lay.modes if j in (m, m + 1)) for j in range(8)], dtype=F64)
    expected_power = 10 ** (-0.2 * (2 * passed + 1) / 10)
    assert torch.allclose(torch.diagonal(block) ** 2, expected_power, atol=1e-12)
    assert torch.allclose(block, torch.diag(torch.diagonal(block)))


def test_splitter_imbalance_limits_extinction():
    """An MZI with coupler errors e1, e2 is unitary, equals R(theta) at e = 0, and can no longer switch
    fully: min |cross| = |sin(e1 + e2)|, min |bar| = |sin(e1 - e2)|."""
    theta = torch.linspace(0, math.pi, 20001, dtype=F64)
    balanced = imbalance_coefficients(torch.zeros(len(theta), 2, dtype=F64))
    assert torch.allclose(imbalanced_mzi(theta, balanced), mzi_transfer(theta).to(torch.complex128))
    eps = torch.tensor([0.02, 0.005], dtype=F64).expand(len(theta), 2)
    t = imbalanced_mzi(theta, imbalance_coefficients(eps))
    eye = torch.eye(2, dtype=torch.complex128)
    assert torch.allclose(t @ t.mH, eye.expand_as(t), atol=1e-12)
    assert float(t[:, 1, 0].abs().min()) == pytest.approx(math.sin(0.025), rel=1e-4)
    assert float(t[:, 0, 0].abs().min()) == pytest.approx(math.sin(0.015), rel=1e-4)


def test_imbalanced_mzi_is_the_coupler_product():
    """The closed form a e^{i theta} + b e^{-i theta} is frame . B(pi/4 + e2) . P(theta) . B(pi/4 + e1)."""
    gen = torch.Generator().manual_seed(0)
    theta = 3 * torch.randn(50, generator=gen, dtype=F64)
    eps = 0.1 * torch.randn(50, 2, generator=gen, dtype=F64)

    def coupler(a):
        c, s = torch.cos(a) + 0j, 1j * torch.sin(a)
        return torch.stack([torch.stack([c, s], -1), torch.stack([s, c], -1)], -2)
    e = torch.exp(1j * theta)
    shifter = torch.diag_embed(torch.stack([e, e.conj()], -1))
    frame = torch.tensor([[0, -1j], [-1j, 0]], dtype=torch.complex128)
    want = frame @ coupler(math.pi / 4 + eps[:, 1]) @ shifter @ coupler(math.pi / 4 + eps[:, 0])
    assert torch.allclose(imbalanced_mzi(theta, imbalance_coefficients(eps)), want, atol=1e-14)


def test_drift_is_a_random_walk():
    noise = Noise(drift=0.02)
    state = _state(noise, blocks=200)
    gen = torch.Generator().manual_seed(3)
    for _ in range(4):
        state.advance(noise, 250, gen)
    assert float(state.drift.std()) == pytest.approx(0.02, rel=0.05)       # 0.02 rad rms per 1,000 steps


# --- the backend --------------------------------------------------------------------------------------
def tt_net():
    return Network([TTLinear(16, 12, True, TTShape.build(16, 12, 3, (4, 4), (3, 4))), Activation("relu"),
                    Linear(12, 5)])


def _backend(net, **options):
    backend = create_backend("photonic", dtype="float64", **options)
    backend.bind(net)
    return backend


@pytest.mark.parametrize("params", ["weights", "phases"])
def test_ideal_chip_equals_ideal_backend(params):
    net = tt_net()
    theta = net.init_params(torch.Generator().manual_seed(0))
    x = torch.randn(7, 16, dtype=F64)
    ideal = create_backend("ideal", dtype="float64")
    want = net.forward(ideal, net.space.unflatten(theta), x)
    chip = _backend(net, params=params)
    phases = chip.encode(theta)
    got = net.forward(chip, chip.param_space(net).unflatten(phases), x)
    assert (got - want).abs().max() < 1e-10
    assert (chip.decode(phases) - theta).abs().max() < 1e-10
    if params == "phases":
        blocks = {e.name: e.shape for e in chip.param_space(net).entries}
        assert blocks["0.core0"] == (Tiling(4 * 3, 1 * 4, 8).blocks, 64) and blocks["0.bias"] == (12,)
    counts = chip.counters()                # the heaters' load of every region, weighted by the 7 rows
    assert sorted(k for k in counts if k.startswith("held_pi_rows:")) == [f"held_pi_rows:{n}" for n in ("0.core0", "0.core1", "2.weight")]
    assert counts["rows"] == 2 * 7


@pytest.mark.parametrize("params", ["weights", "phases"])
def test_a_layer_realised_together_equals_core_by_core(params):
    """One realise call for all cores of a layer (the fast path) computes what each core's blocks do alone,
    on a chip with every phase-path and optical non-ideality, also when only one core carries queries."""
    net = tt_net()
    theta = net.init_params(torch.Generator().manual_seed(0))
    chip = _backend(net, params=params, noise={"preset": "typical", "phase_bias": 0.3, "drift": 0.5})
    chip.advance(100)
    tensors = chip.param_space(net).unflatten(chip.encode(theta))
    names = ["0.core0", "0.core1"]
    regions = [chip._regions[n] for n in names]
    queried = tensors["0.core1"].expand(3, *tensors["0.core1"].shape) + 0.01 * torch.randn(
        3, *tensors["0.core1"].shape, generator=torch.Generator().manual_seed(1), dtype=F64)
    for pair in ([tensors["0.core0"], tensors["0.core1"]], [tensors["0.core0"], queried]):
        together, heat = chip._program(regions, list(pair))
        alone = [chip._program([r], [t]) for r, t in zip(regions, pair)]
        for name, (b, _) in zip(names, alone):
            assert torch.equal(together[name], b[name])
        assert heat == pytest.approx({k: v for _, h in alone for k, v in h.items()}, rel=1e-12)


def test_read_out_noise_and_adc():
    """8 inputs: one block column, so every output is one detection: thermal noise of std 0.01 x the
    full scale, ADC levels of full scale / 31 at 6 bits."""
    net = Network([Linear(8, 64, bias=False)])
    theta = net.init_params(torch.Generator().manual_seed(0))
    x = torch.randn(50, 8, dtype=F64)
    clean = net.forward(_backend(net), net.space.unflatten(theta), x)
    fs = float(clean.abs().max())
    noisy = net.forward(_backend(net, noise={"thermal_noise": 0.01}), net.space.unflatten(theta), x)
    assert float((noisy - clean).std()) == pytest.approx(0.01 * fs, rel=0.05)
    adc = net.forward(_backend(net, noise={"adc_bits": 6}), net.space.unflatten(theta), x)
    step = fs / 31
    assert torch.allclose(adc / step, torch.round(adc / step), atol=1e-9)
    assert (adc - clean).abs().max() <= step / 2 + 1e-12


@pytest.mark.parametrize("partial_sums", ["photocurrent", "digital"])
def test_partial_sums_of_block_columns(partial_sums):
    """32 inputs on 8x8 blocks: 4 block columns. Photocurrent: the 4 detectors of an output feed one TIA,
    noise 0.01 x the largest output; digital: each block's outputs read on their own (full scale: the
    largest block output), then added: sqrt(4) x that noise."""
    from hwsim.arch.spec import resolve
    net = Network([Linear(32, 8, bias=False)])
    theta = net.init_params(torch.Generator().manual_seed(0))
    x = torch.randn(400, 32, generator=torch.Generator().manual_seed(1), dtype=F64)
    w = net.space.unflatten(theta)["0.weight"]
    partial = torch.einsum("bjc,ojc->bjo", x.reshape(400, 4, 8), w.reshape(8, 4, 8))
    clean = net.forward(_backend(net), net.space.unflatten(theta), x)
    torch.testing.assert_close(clean, partial.sum(1), rtol=1e-10, atol=1e-10)
    chip = create_backend("photonic", dtype="float64", noise={"thermal_noise": 0.01})
    chip.bind(net, resolve(chip, {"partial_sums": partial_sums}))
    noisy = net.forward(chip, net.space.unflatten(theta), x)
    want = 0.01 * float(clean.abs().max()) if partial_sums == "photocurrent" else 2 * 0.01 * float(partial.abs().max())
    assert float((noisy - clean).std()) == pytest.approx(want, rel=0.05)


def test_the_modulators_quantise_every_cores_inputs():
    """A two-core TT layer with 4-bit modulator DACs equals its core-by-core contraction with the layer
    input and the intermediate rounded to 7 signed levels of each one's largest |value|."""
    net = Network([TTLinear(16, 4, False, TTShape.build(16, 4, 2, (4, 4), (2, 2)))])
    theta = net.init_params(torch.Generator().manual_seed(0))
    x = torch.randn(6, 16, dtype=F64)
    got = net.forward(_backend(net, noise={"input_bits": 4}), net.space.unflatten(theta), x)
    q = lambda v: torch.round(v / (v.abs().max() / 7)) * (v.abs().max() / 7)   # noqa: E731
    g0, g1 = (net.space.unflatten(theta)[f"0.core{k}"] for k in (0, 1))      # (1, 4, 2, 2), (2, 4, 2, 1)
    h = torch.einsum("bnz,anms->bmsz", q(x).reshape(6, 4, 4), g0)             # (B, m0, r, n1)
    h = q(h)
    want = torch.einsum("bmrn,rnus->bmus", h, g1).reshape(6, 4)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_same_chip_seed_same_numbers():
    net = tt_net()
    theta = net.init_params(torch.Generator().manual_seed(0))
    x = torch.randn(5, 16, dtype=F64)
    run = lambda seed: net.forward(_backend(net, noise="typical", chip_seed=seed), net.space.unflatten(theta), x)  # noqa: E731
    assert torch.equal(run(0), run(0))
    assert not torch.equal(run(0), run(1))


@pytest.mark.slow
def test_phase_domain_zo_step_lowers_the_loss():
    """In-situ training: RGE over the phases (the host never decodes a weight) on a noisy chip."""
    net = tt_net()
    chip = _backend(net, params="phases", noise={"preset": "typical", "phase_bias": 0.0})
    gen = torch.Generator().manual_seed(0)
    phases = chip.encode(net.init_params(gen))
    x, y = torch.randn(64, 16, dtype=F64), torch.randint(0, 5, (64,), generator=gen)
    objective = BatchObjective(net, chip, x, y)
    rge = RGE(chip.param_space(net), num_queries=20, mu=0.05)
    loss0 = float(objective.losses(phases, phases.new_zeros(1, phases.numel()))[0])
    opt_phases = torch.nn.Parameter(phases.clone())
    opt = torch.optim.Adam([opt_phases], lr=0.02)
    for _ in range(30):
        opt_phases.grad = rge.estimate(objective, opt_phases.detach(), gen).grad
        opt.step()
        chip.project_(opt_phases.data)
        chip.advance()
    m = 8 * 7 // 2
    s_phases = chip.param_space(net).unflatten(opt_phases.detach())["0.core0"][:, m:m + 8]
    assert s_phases.min() >= 0 and s_phases.max() <= math.pi
    assert float(objective.losses(opt_phases.detach(), phases.new_zeros(1, phases.numel()))[0]) < 0.9 * loss0


def test_calibration_cancels_small_biases():
    net = tt_net()
    theta = net.init_params(torch.Generator().manual_seed(0))
    x = torch.randn(20, 16, dtype=F64)
    want = net.forward(_backend(net), net.space.unflatten(theta), x)
    err = {}
    for calibrate in (False, True):
        chip = _backend(net, noise={"phase_bias": 0.2}, calibrate=calibrate)
        err[calibrate] = float((net.forward(chip, net.space.unflatten(theta), x) - want).abs().max())
    report = _backend(net, noise={"phase_bias": 0.2}).calibrate()           # from an uncalibrated chip
    assert report["rms_after"] < 1e-3 * report["rms_before"]
    # no read-out noise, no other error: the programmed blocks are the ideal ones to the fit's precision,
    # and an uncalibrated block with offsets U[-0.2, 0.2] errs by about their rms 0.2 / sqrt(3) (per phase)
    assert report["matrix_error"] < 1e-3 * report["matrix_error_before"]
    assert report["matrix_error_before"] > 0.1
    assert chip.counters()["calibration_settings"] > 0
    assert err[True] < 1e-3 * err[False]


@pytest.mark.parametrize("bias", [0.0, 1.0])
def test_gain_calibration_cancels_insertion_loss(bias):
    """0.3 dB per MZI over ~2n + 1 MZIs per block shrinks a 3-core TT layer by ~10 dB; the gain calibration
    measures it (also under 1 rad phase biases) and restores most of the output scale. Not all: it cancels the
    mean loss over random settings, but Clements edge modes pass 4 fewer MZIs than the others, so a given
    block's loss lies within 2.4 dB of that mean (0.3 dB x (17 - 9) MZIs)."""
    net = tt_net()
    theta = net.init_params(torch.Generator().manual_seed(0))
    x = torch.randn(200, 16, generator=torch.Generator().manual_seed(1), dtype=F64)   # not the global stream:
    out = {}                                                     # the test's figures must not depend on test order
    for calibrate in (False, "gain"):
        chip = _backend(net, noise={"insertion_loss_db": 0.3, "phase_bias": bias}, calibrate=calibrate)
        out[calibrate] = net.forward(chip, net.space.unflatten(theta), x)
    want = net.forward(_backend(net), net.space.unflatten(theta), x)
    log_ratio = {k: abs(math.log(float(v.norm() / want.norm()))) for k, v in out.items()}
    assert log_ratio[False] > 1.0 and log_ratio["gain"] < 0.2 * log_ratio[False]
    report = chip.calibrate("gain")
    assert 0.3 * 8 < report["loss_db"] < 0.3 * 18
    assert report["calibration_settings"] > 0


def test_perturbation_below_dac_step_warns():
    chip = create_backend("photonic", params="phases", noise="typical")
    assert "DAC step" in chip.check_perturbation(0.001)
    assert chip.check_perturbation(0.05) is None


@pytest.mark.parametrize("override, message", [
    ("backend.noise=loud", "backend.noise.preset: 'loud' is not allowed"),
    ("backend.noise={preset: typical, hum: 1}", "unknown key 'hum'"),
    ("backend.noise={dac_bits: 1}", "backend.noise.dac_bits: 1 is not allowed"),
    ("backend.noise={drift: -1}", "backend.noise.drift: -1 is not allowed"),
    ("backend.params=voltages", "backend.params: 'voltages' is not allowed"),
    ("backend.mesh=star", "backend.mesh: 'star' is not allowed"),
    ("backend.calibrate=bias", "backend.calibrate: expected true or false or one of 'gain', got 'bias'"),
    ("backend.calibrate=1", "backend.calibrate: expected true or false or one of 'gain', got 1"),
])
def test_bad_options_name_the_key(override, message):
    cfg = load_config("mnist_tt_zo", ["backend.name=photonic", override])
    with pytest.raises(ConfigError, match=message.replace("{", r"\{").replace("[", r"\[")):
        build_backend(cfg.backend, build_network(cfg.model))


def test_noise_presets():
    assert build_noise("ideal") == Noise()
    typical = build_noise("typical")
    assert typical.dac_bits == 8 and typical.gamma_spread == 0.002 and typical.crosstalk == 0.005
    assert build_noise({"preset": "typical", "phase_bias": 0.0}).phase_bias == 0.0
    assert create_backend("photonic").noise == Noise()             # no noise option: an ideal chip
    assert create_backend("photonic", noise="typical").noise == typical


def test_phases_of_a_block_do_not_depend_on_the_blocks_decomposed_with_it():
    """Regression: a TT core whose matrix has one row (the last core of MNIST's last layer) fills its 8x8
    blocks with one non-zero row; the orthogonal factors then hold entries that are zero up to rounding,
    and the sign of such a zero (which changed with how many blocks were decomposed together, through
    the batched products' kernels) flipped a mesh phase by pi. So 2 ranks and 1 process realised different
    chips for the same query. The commanded phases are now the same whatever the batch."""
    gen = torch.Generator().manual_seed(0)
    lay = layout(8, "clements")
    tiling = Tiling(1, 16, 8)
    noise = build_noise("typical")
    for _ in range(20):
        blocks = tiling.split(torch.randn(10, 1, 16, generator=gen, dtype=torch.float32))
        together, gains, signs = encode_blocks(blocks, lay)
        for lo, hi in ((0, 5), (5, 10), (3, 4)):
            alone, g, s = encode_blocks(blocks[lo:hi], lay)
            assert torch.equal(commanded(together[lo:hi], 8, noise), commanded(alone, 8, noise))
            assert torch.equal(signs[lo:hi], s) and torch.equal(gains[lo:hi], g)


def test_replicated_cores_give_every_copy_its_own_variations():
    """architecture.cores: replicated places a copy of a core's blocks per sub-vector of a row: on an ideal
    chip the same numbers as one time-multiplexed copy (and the ideal backend); with fabrication biases
    every copy errs on its own, so the outputs differ from the time-multiplexed chip's."""
    from hwsim.arch.spec import resolve
    net = tt_net()
    theta = net.init_params(torch.Generator().manual_seed(0))
    x = torch.randn(7, 16, generator=torch.Generator().manual_seed(2), dtype=F64)
    want = net.forward(create_backend("ideal", dtype="float64"), net.space.unflatten(theta), x)
    outs = {}
    for noise in ("ideal", {"phase_bias": 0.3}):
        for cores in ("time_multiplexed", "replicated"):
            chip = create_backend("photonic", dtype="float64", noise=noise)
            chip.bind(net, resolve(chip, {"cores": cores}))
            outs[str(noise), cores] = net.forward(chip, net.space.unflatten(theta), x)
    assert (outs["ideal", "replicated"] - want).abs().max() < 1e-10
    region = chip._regions["0.core0"]
    subvectors = chip.mapping.layer(0).cores[0].step.subvectors
    assert region.copies == subvectors > 1 and region.state.bias.shape[0] == subvectors * region.tiling.blocks
    biased = str({"phase_bias": 0.3})
    assert not torch.allclose(outs[biased, "replicated"], outs[biased, "time_multiplexed"])


def test_recalibration_follows_drift():
    """Three identical chips drift alike (same chip seed: same drift draws) for 200 steps, rms
    sigma = drift sqrt(200 / 1000) per shifter; no read-out noise, so a (re)calibration fits to its
    Levenberg-Marquardt precision. Without recalibration the programmed blocks err to first order in sigma
    (each of a block's phases moves its matrix by ~sigma; 0.1 sigma is a safe floor); with
    ``recalibrate_every`` or a monitor threshold below that error the drift is fitted away (1000x smaller),
    and a threshold above every reading never recalibrates. The recalibrations are paid for."""
    net = tt_net()
    noise = {"phase_bias": 0.2, "drift": 0.1}
    sigma = 0.1 * math.sqrt(200 / 1000)
    chips = {"never": _backend(net, noise=noise, calibrate=True),
             "every": _backend(net, noise=noise, calibrate=True, recalibrate_every=200),
             "monitor": _backend(net, noise=noise, calibrate=True, recalibrate_threshold=0.1 * sigma, monitor_every=50),
             "deaf": _backend(net, noise=noise, calibrate=True, recalibrate_threshold=1e9, monitor_every=50)}
    for chip in chips.values():
        for _ in range(4):
            chip.advance(50)
    error = {k: c.matrix_error()[0] for k, c in chips.items()}
    runs = {k: c.counters()["calibration_runs"] for k, c in chips.items()}
    assert error["never"] > 0.1 * sigma                      # deaf: the same chip and drift, never recalibrated
    assert math.isclose(error["deaf"], error["never"], rel_tol=1e-6)
    assert error["every"] < 1e-3 * error["never"] and error["monitor"] < 1e-3 * error["never"]
    assert runs["never"] == runs["deaf"] == 1 and runs["every"] == 2 and runs["monitor"] >= 2
    assert chips["deaf"].counters()["calibration_monitor_reads"] == 4
    assert chips["never"].monitor() > 0.1 * sigma > chips["every"].monitor()
    settings = {k: c.counters()["calibration_settings"] for k, c in chips.items()}
    assert settings["every"] > settings["never"] and settings["monitor"] > settings["deaf"] > settings["never"]


def test_keyed_read_out_draws_are_the_same_on_one_thread_or_several():
    """Every query's read-out noise comes from its own stream; drawn side by side on the intra-op threads,
    each lands in its query's slot: the same numbers as one after another."""
    b = create_backend("photonic", noise="typical")
    queries = torch.tensor([3, 0, 7, 5, 1])
    draws = []
    threads = torch.get_num_threads()
    try:
        for n in (1, 2, 4):
            torch.set_num_threads(n)
            with b.keyed(11, queries):
                draws.append(b._standard_normal(torch.Size([5, 64, 33]), torch.float32, layer=0, per=2))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(draws[0], draws[1]) and torch.equal(draws[0], draws[2])
    with b.keyed(11, queries[[2]]):                     # query 7 alone draws what it drew among the five
        alone = b._standard_normal(torch.Size([1, 64, 33]), torch.float32, layer=0, per=2)
    assert torch.equal(alone[0], draws[0][2])
