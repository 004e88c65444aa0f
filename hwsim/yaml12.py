"""YAML reading with YAML 1.2 numbers: PyYAML follows YAML 1.1, where ``1e-6`` and ``1E3`` (no dot) are
strings, so ``lr: 1e-4`` in a config or ``--set energy.phase_shifter_settle=1e-6`` would be refused as
"expected a number". This loader reads them as floats; everything else is PyYAML's safe loader."""
from __future__ import annotations

import re

import yaml


class Loader(yaml.SafeLoader):
    """yaml.SafeLoader that also resolves exponent floats without a dot (``1e-6``, ``-2E+3``)."""


Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."))


def load(text: str):
    """The Python value of YAML ``text`` (raises yaml.YAMLError on a syntax error)."""
    return yaml.load(text, Loader=Loader)
