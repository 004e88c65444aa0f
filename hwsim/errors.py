"""The errors hwsim reports as one line and an exit status, without a traceback (a leaf module: every layer
may raise them, none has to import another layer for an exception type).

``exit_code`` 2: the user's input (a config key, a file, a command-line flag) is wrong, and the message
names it; 1: a run or a tool could not finish (a simulator failed, a rank was lost, a value became NaN).
"""
from __future__ import annotations


class HwsimError(Exception):
    """Base of hwsim's reported errors."""

    exit_code = 2


class ConfigError(HwsimError, ValueError):
    """A config key (or a file, or a flag) has a bad value; the message starts with its path."""


class DataError(HwsimError, RuntimeError):
    """A dataset is missing or corrupt; the message says how to get it."""


class RunFailed(HwsimError, RuntimeError):
    """A run cannot go on (the message says why and names the last good checkpoint)."""

    exit_code = 1


class HardwareError(HwsimError, RuntimeError):
    """A backend's hardware tool (a Verilog simulator, a synthesiser) is missing or failed."""

    exit_code = 1
