"""YAML reading with YAML 1.2 numbers: PyYAML follows YAML 1.1, where ``1e-6`` and ``1E3`` (no dot) are
strings, so ``lr: 1e-4`` in a config or ``--set energy.phase_shifter_settle=1e-6`` would be refused as
"expected a number". This loader reads them as floats, and refuses a key given twice in one mapping (YAML
forbids it; PyYAML would keep the last silently); everything else is PyYAML's safe loader."""
from __future__ import annotations

import re

import yaml


class Loader(yaml.SafeLoader):
    """yaml.SafeLoader that also resolves exponent floats without a dot (``1e-6``, ``-2E+3``)."""


Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."))


def _mapping(loader: Loader, node: yaml.MappingNode) -> dict:
    """A mapping whose keys are all different (a duplicate is a YAMLError naming the key and its line)."""
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        if not isinstance(key, (str, int, float, bool)):
            continue                          # unhashable keys: construct_mapping refuses them itself
        if key in seen:
            raise yaml.constructor.ConstructorError(None, None, f"the key {str(key)[:60]!r} is given twice",
                                                    key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=True)


Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


def load(text: str):
    """The Python value of YAML ``text`` (raises yaml.YAMLError on a syntax error, a duplicate key, or
    nesting deeper than the parser can follow)."""
    try:
        return yaml.load(text, Loader=Loader)
    except RecursionError:
        raise yaml.YAMLError("nested deeper than can be read") from None
