"""Non-idealities of the photonic chip, each configurable and off unless a preset or key turns it on.

Phase path of every shifter (commanded phase -> phase the light sees):
  wrap into [-pi, pi] (push-pull: a signed phase, 0 = no heating) -> phase DAC (``dac_bits``,
  step 2 pi / (2^bits - 1); Zhao et al., arXiv:2401.00413) -> heater law |phase| = gamma V^2 with a per-shifter gamma
  spread (frozen per chip) -> thermal crosstalk (a fraction of each neighbour's phase) -> fabrication
  bias U[-b, b] (frozen) -> drift (a random walk, ``drift`` rad rms per 1,000 optimizer steps).
Optics: MZI insertion loss (dB on power, so amplitude 10^(-dB/20) per MZI passed) and beam-splitter
imbalance (each coupler's splitting angle pi/4 + N(0, sigma^2), frozen). Read-out: photodetector thermal
noise (std ``thermal_noise`` x full scale) and shot noise (variance ``shot_noise``^2 x full scale x |y|),
then a signed ADC of ``adc_bits`` (levels k x full scale / (2^(bits-1) - 1)) (full scale: the largest |output| of a
query's detections in a core pass). Input: the modulators' DACs put every value a core receives on ``input_bits``
signed levels of the largest |value| of the query's sub-vectors.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from hwsim.errors import ConfigError
from hwsim.text import excerpt

PRESETS = ("ideal", "typical", "pessimistic")


@dataclass(frozen=True)
class Noise:
    """One chip's non-idealities; every field at its default is exactly off (None / 0)."""

    dac_bits: int | None = None
    v_pi: float = 4.36
    gamma_spread: float = 0.0
    crosstalk: float = 0.0
    phase_bias: float = 0.0
    drift: float = 0.0
    insertion_loss_db: float = 0.0
    splitter_imbalance: float = 0.0
    shot_noise: float = 0.0
    thermal_noise: float = 0.0
    adc_bits: int | None = None
    input_bits: int | None = None

    def __post_init__(self):
        for key in ("dac_bits", "adc_bits", "input_bits"):
            value = getattr(self, key)
            if value is not None and (not isinstance(value, int) or not 2 <= value <= 24):
                raise ConfigError(f"backend.noise.{key}: {excerpt(value)} is not allowed; use an integer in 2..24 or null (off)")
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name.endswith("_bits"):
                continue
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0 or not math.isfinite(value):
                raise ConfigError(f"backend.noise.{f.name}: {excerpt(value)} is not allowed; use a number >= 0")
        if self.v_pi <= 0:
            raise ConfigError(f"backend.noise.v_pi: {excerpt(self.v_pi)} is not allowed; use a voltage > 0")

    @property
    def dac_step(self) -> float | None:
        """Phase step of the DAC (rad), None when continuous."""
        return None if self.dac_bits is None else 2 * math.pi / (2 ** self.dac_bits - 1)


# Zhao et al., arXiv:2401.00413 (tensorized optical NN) gives DAC, gamma, V_pi, crosstalk, bias and drift; the loss, imbalance, detector and
# ADC figures of "typical" are our assumptions of common silicon-photonics values (docs/photonic.md).
_PRESET_VALUES = {
    "ideal": {},
    "typical": dict(dac_bits=8, gamma_spread=0.002, crosstalk=0.005, phase_bias=1.0, drift=0.02,
                    insertion_loss_db=0.1, splitter_imbalance=0.01, shot_noise=1e-3, thermal_noise=1e-3,
                    adc_bits=8, input_bits=8),
    "pessimistic": dict(dac_bits=6, gamma_spread=0.01, crosstalk=0.02, phase_bias=1.0, drift=0.1,
                        insertion_loss_db=0.3, splitter_imbalance=0.03, shot_noise=5e-3, thermal_noise=5e-3,
                        adc_bits=6),
}


def build_noise(spec) -> Noise:
    """A Noise from a preset name, or a mapping {preset: name, <field>: value, ...} overriding a preset
    (default preset ``ideal``)."""
    if isinstance(spec, Noise):
        return spec
    if isinstance(spec, str):
        spec = {"preset": spec}
    if not isinstance(spec, dict):
        raise ConfigError(f"backend.noise: {excerpt(spec)} is not allowed; use a preset ({', '.join(PRESETS)}) "
                         f"or a mapping of noise keys")
    spec = dict(spec)
    preset = spec.pop("preset", "ideal")
    if preset not in PRESETS:
        raise ConfigError(f"backend.noise.preset: {excerpt(preset)} is not allowed; use one of {', '.join(PRESETS)}")
    allowed = {f.name for f in dataclasses.fields(Noise)}
    bad = sorted(set(spec) - allowed)
    if bad:
        raise ConfigError(f"backend.noise: unknown key {excerpt(bad[0])}; allowed: preset, {', '.join(sorted(allowed))}")
    return Noise(**{**_PRESET_VALUES[preset], **spec})
