"""The fixed-point backend: the bit-exact integer spec of docs/fixed_point.md and its emulator.

Public helpers (also the contract the RTL backend is checked against): :func:`quantize`,
:func:`requantize`, :func:`int_linear` / :func:`int_linear_steps` with a :class:`LayerSpec`.
"""
from hwsim.backends.fixed.layer import LayerSpec, int_linear, int_linear_steps
from hwsim.backends.fixed.numerics import Format, quantize, requantize

__all__ = ["Format", "LayerSpec", "int_linear", "int_linear_steps", "quantize", "requantize"]
