import json
import pytest

from hwsim.build import build_backend, build_network
from hwsim.compare import load_spec
from hwsim.config import (Config, ConfigError, PinnConfig, apply_override, from_dict, load_config, read_raw,
                          shipped_configs)

EXPECTED = {"mnist_tt_zo", "mnist_tt_fast", "mnist_tt_fo", "mnist_dense_zo", "mnist_dense_fo", "mnist_tt_cge", "mnist_tt_hybrid",
            "mnist_tt_fixed8", "mnist_tt_fixed8_int", "mnist_tt_fixed8_state12"}


PINN = {"hjb20_fo_ad", "hjb20_fo_sg", "hjb20_zo_dense_sg", "hjb20_zo_tt_sg", "hjb20_zo_tt_fd", "hjb20_zo_tt_sg_paper",
        "heat15_zo_tt_sg", "hjb20_photonic_phases", "hjb20_photonic_paper"}


def test_every_shipped_config_validates_and_builds():
    assert EXPECTED | PINN <= set(shipped_configs())
    for name in shipped_configs():
        if "rows" in read_raw(name):                     # a compare spec: its rows' backends must build
            spec = load_spec(name)
            net = build_network(load_config(spec.config, spec.set).model)
            for row in spec.rows:
                build_backend(load_config(spec.config, spec.set + [f"backend={json.dumps(row.backend)}"]).backend, net)
            continue
        pinn = "pde" in read_raw(name)
        cfg = load_config(name, [], PinnConfig if pinn else Config)
        net = build_network(cfg.model)
        assert (net.in_features, net.out_features) == ((cfg.pde.dim + 1, 1) if pinn else (784, 10))
        build_backend(cfg.backend, net)


def test_reference_model_sizes():
    assert build_network(load_config("mnist_tt_zo").model).trainable_params == 1504
    assert build_network(load_config("mnist_dense_zo").model).trainable_params == 203264


def test_overrides_are_applied_and_typed():
    cfg = load_config("mnist_tt_zo", ["train.steps=7", "estimator.rge.mu=0.5", "optimizer.betas=[0.9, 0.5]",
                                      "model.layers.0.rank=3", "backend.dtype=float64"])
    assert cfg.train.steps == 7 and cfg.estimator.rge.mu == 0.5 and cfg.optimizer.betas == [0.9, 0.5]
    assert cfg.model.layers[0].rank == 3 and cfg.backend.options == {"dtype": "float64"}
    # switching the backend drops the old one's options; later keys apply to the new one
    cfg = load_config("mnist_tt_zo", ["backend.name=fixed", "backend.bits=6"])
    assert cfg.backend.name == "fixed" and cfg.backend.options == {"bits": 6}


@pytest.mark.parametrize("override, message", [
    ("train.stepz=5", r"train\.stepz: unknown key; allowed: steps, epochs"),
    ("estimator.rge.mu=-1", r"estimator\.rge\.mu: expected a number > 0, got -1"),
    ("estimator.name=adam", r"estimator\.name: 'adam' is not allowed; expected one of 'rge', 'cge'"),
    ("train.batch_size=abc", r"train\.batch_size: expected an integer, got 'abc'"),
    ("train.epochs=3", r"train\.steps: give exactly one of train\.steps and train\.epochs"),
    ("estimator.cge.subset=1.5", r"estimator\.cge\.subset: expected a probability in \(0, 1\]"),
    ("model.layers.1.rank=2", r"model\.layers\[1\]\.rank: only tt_linear layers take TT settings"),
    ("optimizer.betas=[0.9]", r"optimizer\.betas: expected two numbers"),
    ("estimator.rge.per_tensor=maybe", r"estimator\.rge\.per_tensor: expected true or false"),
])
def test_bad_values_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config("mnist_tt_zo", [override])


def test_hybrid_needs_a_switch():
    raw = read_raw("mnist_tt_hybrid")
    del raw["estimator"]["switch_epoch"]
    with pytest.raises(ConfigError, match="estimator.switch_epoch: hybrid needs"):
        from_dict(Config, raw)


def test_bad_model_and_backend_are_reported_at_build_time():
    cfg = load_config("mnist_tt_zo", ["model.layers.0.in_factors=[4, 7, 7, 5]"])
    with pytest.raises(ConfigError, match=r"model\.layers\[0\]: in_factors .* multiply to 980"):
        build_network(cfg.model)
    cfg = load_config("mnist_dense_zo", ["model.layers.2.in_features=100"])
    with pytest.raises(ConfigError, match="do not chain"):
        build_network(cfg.model)
    net = build_network(load_config("mnist_tt_zo").model)
    with pytest.raises(ConfigError, match="unknown backend 'fpga'; known backends: .*ideal"):
        build_backend(load_config("mnist_tt_zo", ["backend.name=fpga"]).backend, net)
    with pytest.raises(ConfigError, match="backend.bits: unknown key; allowed: dtype, device, tt_method"):
        build_backend(load_config("mnist_tt_zo", ["backend.bits=8"]).backend, net)
    with pytest.raises(ConfigError, match=r"backend\.dtype: 'float16' is not allowed"):
        build_backend(load_config("mnist_tt_zo", ["backend.dtype=float16"]).backend, net)


def test_missing_config_lists_the_shipped_ones(tmp_path):
    with pytest.raises(ConfigError, match="shipped: .*mnist_tt_zo"):
        read_raw("no_such_config")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        read_raw(str(bad))


def test_override_syntax_errors():
    with pytest.raises(ConfigError, match="expected key.path=value"):
        apply_override({}, "train.steps")
    with pytest.raises(ConfigError, match="not an index"):
        apply_override({"a": [1]}, "a.3=2")


def test_malformed_yaml_and_set_values_are_one_line_errors(tmp_path, capsys):
    """Regression: a malformed YAML file ended in a PyYAML traceback with exit 1."""
    from hwsim.cli import main

    bad = tmp_path / "bad.yaml"
    bad.write_text("seed: 0\ntrain: {steps: 3\n")
    assert main(["train", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"hwsim: error: config '{bad}': not valid YAML at line ") and err.count("\n") == 1
    assert main(["train", "mnist_tt_zo", "--out", str(tmp_path / "run"), "--set", "train.steps=[1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("hwsim: error: --set train.steps: '[1' is not a valid YAML value") and err.count("\n") == 1


@pytest.mark.parametrize("text, value", [("1e-6", 1e-6), ("-2E+3", -2000.0), ("5e3", 5000.0), (".5e1", 5.0),
                                         ("1.5e-3", 1.5e-3), ("3", 3), ("e5", "e5"), ("1e", "1e")])
def test_exponent_numbers_without_a_dot_are_numbers(tmp_path, text, value):
    """Regression: PyYAML (YAML 1.1) read `1e-6` as a string, so `--set energy.phase_shifter_settle=1e-6`
    and `lr: 1e-4` in a file were refused as "expected a number"."""
    raw = {"a": 0}
    apply_override(raw, f"a={text}")
    assert raw["a"] == value and type(raw["a"]) is type(value)
    path = tmp_path / "c.yaml"
    path.write_text("seed: 0\noptimizer: {name: adam, lr: 1e-4}\ntrain: {steps: 1}\n")
    assert load_config(str(path)).optimizer.lr == 1e-4


def test_files_are_written_under_missing_parents(tmp_path):
    """Regression: `hwsim rtl verify` crashed writing its JSON where runs/ did not exist yet."""
    from hwsim.report import write_json

    write_json(tmp_path / "runs" / "deep" / "x.json", {"a": 1})
    assert (tmp_path / "runs" / "deep" / "x.json").read_text().strip().startswith("{")
