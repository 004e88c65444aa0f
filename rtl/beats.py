"""Lanes <-> stream beats. A beat carries one value of every lane, lane l in bits [l W, (l + 1) W) as
W-bit two's complement; beats are Python ints (any width). numpy only: imported inside the simulator.
"""
from __future__ import annotations

import numpy as np


def pack(codes: np.ndarray, width: int) -> list[int]:
    """codes (..., LANES) signed integers -> flat list of beats (one per leading index, row-major)."""
    codes = np.asarray(codes, dtype=np.int64)
    lanes = codes.shape[-1]
    words = (codes.reshape(-1, lanes) & ((1 << width) - 1)).astype(object)
    beats = np.zeros(words.shape[0], dtype=object)
    for lane in range(lanes):
        beats += words[:, lane] << (lane * width)
    return beats.tolist()


def unpack(beats: list[int], lanes: int, width: int) -> np.ndarray:
    """Inverse of :func:`pack`: beats -> (len(beats), lanes) int64 signed codes."""
    words = np.array(beats, dtype=object)
    out = np.empty((len(beats), lanes), dtype=np.int64)
    mask, sign = (1 << width) - 1, 1 << (width - 1)
    for lane in range(lanes):
        u = (words >> (lane * width)) & mask
        out[:, lane] = (u - ((u & sign) << 1)).astype(np.int64)
    return out


def group_beats(x: np.ndarray, lanes: int) -> np.ndarray:
    """Input rows x (B, P) -> the stream order (G, P, LANES): group g carries rows g LANES ...,
    one input feature per beat; the last group is padded with zero rows."""
    rows, features = x.shape
    groups = -(-rows // lanes)
    padded = np.zeros((groups * lanes, features), dtype=np.int64)
    padded[:rows] = x
    return padded.reshape(groups, lanes, features).transpose(0, 2, 1)


def ungroup(y: np.ndarray, rows: int) -> np.ndarray:
    """Output beats (G, M, LANES) -> rows (B, M): the inverse of :func:`group_beats`."""
    groups, features, lanes = y.shape
    return y.transpose(0, 2, 1).reshape(groups * lanes, features)[:rows]
