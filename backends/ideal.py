"""The ideal backend: exact floating-point arithmetic in PyTorch (float32 or float64, CPU or CUDA)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from hwsim.backends.base import Backend, Capabilities, DeviceChoice, SparseDelta
from hwsim.model import TTLinear
from hwsim.tt import choose_method, core_environment, to_dense, tt_linear

DTYPES = {"float32": torch.float32, "float64": torch.float64}


class IdealBackend(Backend):
    """Float reference hardware: what the algorithm does with no precision, noise or energy limit."""

    name = "ideal"
    summary = "float PyTorch (CPU or CUDA): the reference every other backend is compared with"
    capabilities = Capabilities(exact=True, differentiable=True, multilinear=True, devices=("cpu", "cuda"),
                                replayable=True)

    @dataclass
    class Options:
        """dtype: float32 | float64; device: cpu | cuda | auto; tt_method: auto | dense | direct."""

        dtype: Literal["float32", "float64"] = "float32"
        device: DeviceChoice = "cpu"
        tt_method: Literal["auto", "dense", "direct"] = "auto"

    def __init__(self, options: "IdealBackend.Options | None" = None):
        super().__init__(options)
        self._dtype = DTYPES[self.options.dtype]

    @property
    def dtype(self) -> torch.dtype:
        return self._dtype

    def linear(self, layer, params, x, queries):
        rows = x.shape[-2] * (queries or 1)
        if isinstance(layer, TTLinear):
            cores = [params[n] for n in layer.core_names]
            method = self.options.tt_method
            if method == "auto":
                method = choose_method(layer.tt, x.shape[-2], queries or 1)
            flops = layer.tt.dense_flops if method == "dense" else layer.tt.direct_flops
            self.count("macs_" + self.options.dtype, flops(x.shape[-2], queries or 1))
            y = tt_linear(cores, x, method)
        else:
            y = torch.matmul(x, params["weight"].transpose(-1, -2))
            self.count("macs_" + self.options.dtype, rows * layer.in_features * layer.out_features)
        if layer.bias:
            b = params["bias"]
            y = y.add_(b.unsqueeze(-2) if queries else b)      # y is a fresh matmul output
        self.count("linear_calls")
        self.count("rows", rows)
        return y

    def coordinate_jvp(self, layer, params, x, name):
        if name == "bias":
            return lambda idx: SparseDelta(x.new_ones(len(idx), x.shape[0], 1), idx[:, None])
        if name == "weight":
            return lambda idx: SparseDelta(x[:, idx % layer.in_features].T.unsqueeze(-1),
                                           (idx // layer.in_features)[:, None])
        k = layer.core_names.index(name)
        env = core_environment([params[n] for n in layer.core_names], k, x)   # (B, U, r, n, r', V)
        _, n, m, r1 = layer.tt.core_shapes[k]
        u_size, v_size = env.shape[1], env.shape[-1]
        env = env.permute(2, 3, 4, 0, 1, 5).contiguous()                      # (r, n, r', B, U, V)
        self.count("macs_" + self.options.dtype, env.numel() * layer.tt.in_factors[k])
        # output position of (u, i, v) is (u * m + i) * V + v; "grid" holds it for i = 0
        grid = (torch.arange(u_size, device=x.device)[:, None] * m * v_size
                + torch.arange(v_size, device=x.device)[None, :]).reshape(-1)

        def core_jvp(idx):
            a, rest = idx // (n * m * r1), idx % (n * m * r1)
            j, rest = rest // (m * r1), rest % (m * r1)
            i, c = rest // r1, rest % r1
            values = env[a, j, c].reshape(len(idx), x.shape[0], -1)
            return SparseDelta(values, grid[None, :] + (i * v_size)[:, None])
        return core_jvp

    def linear_input_delta(self, layer, params, delta):
        if isinstance(layer, TTLinear):
            weight = to_dense([params[n] for n in layer.core_names])
        else:
            weight = params["weight"]
        picked = weight.T[delta.index]                      # (J, T, out)
        self.count("macs_" + self.options.dtype, delta.values.numel() * layer.out_features)
        return torch.bmm(delta.values, picked)
