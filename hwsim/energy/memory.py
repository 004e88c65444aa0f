"""On-device training memory: what a device must hold to train BP-free, against back-propagation.

Counts bytes from the model's shapes and the backend's number formats (docs/energy.md):
- both: the parameters in the device's format and the optimizer's state (Adam: two 32-bit moments per
  parameter; SGD with momentum: one);
- BP-free (ZO): the perturbation (a 64-bit seed it is regenerated from; ``perturbation_stored`` when held as
  parameters), two losses, and the largest activations live at once: one layer's input and output and
  the TT intermediate states of its core steps, for one batch;
- back-propagation: a 32-bit gradient per parameter, and every activation of the batch kept for the
  backward pass (each layer's input and output, the TT intermediate states).
"""
from __future__ import annotations

from hwsim.model import Activation, TTLinear
from hwsim.tt import step_outputs

OPTIMIZER_STATES = {"adam": 2, "adamw": 2}


def device_memory(network, backend, optimizer: str, momentum: float, rows: int) -> dict:
    """Bytes to train ``network`` on ``backend`` with ``rows`` input rows per forward pass (the batch, or
    collocation points x stencil size)."""
    d = backend.param_space(network).size
    w_bits, a_bits = backend.storage_bits()
    states = OPTIMIZER_STATES.get(optimizer, 1 if momentum else 0)
    params, opt = d * w_bits / 8, d * states * 4
    stored = [rows * network.in_features]                    # activations kept for the backward pass
    live = 0
    for layer in network.layers:
        if isinstance(layer, Activation):
            stored.append(stored[-1])                         # same size as its input
            continue
        inner = step_outputs(layer.tt.core_shapes, rows)[:-1] if isinstance(layer, TTLinear) else []
        stored += inner + [rows * layer.out_features]
        live = max(live, rows * (layer.in_features + layer.out_features) + max(inner, default=0))
    zo = params + opt + 8 + 2 * 4 + live * a_bits / 8
    bp = params + opt + d * 4 + sum(stored) * a_bits / 8
    return {"device_memory_bytes_zo": int(zo), "device_memory_bytes_zo_perturbation_stored": int(zo + params),
            "device_memory_bytes_bp": int(bp), "device_memory_rows": rows,
            "device_memory_breakdown": {"parameters": int(params), "optimizer_state": int(opt),
                                        "zo_live_activations": int(live * a_bits / 8),
                                        "bp_gradient": int(d * 4), "bp_stored_activations": int(sum(stored) * a_bits / 8)}}
