"""Checkpoint files: a run's whole state at a step boundary, written atomically and checked when read.

A checkpoint is ``<run>/checkpoints/step-<step>.pt``: one header line ``HWSIM-CHECKPOINT 1 <sha256>`` and
then a ``torch.save`` payload (a dict of tensors, numbers, strings, lists and dicts; read back with
``weights_only=True``). The digest covers the payload, so a truncated or corrupted file is refused with
the file's name instead of resuming from damaged state. The payload also holds the keys of params.pt
("theta", "tensors", "backend", "backend_theta"), so deployment and fine-tuning read either file.
"""
from __future__ import annotations

import hashlib
import io
import re
from pathlib import Path

import torch

from hwsim.errors import ConfigError
from hwsim.report import write_atomic

MAGIC = b"HWSIM-CHECKPOINT 1 "
FOLDER = "checkpoints"
_NAME = re.compile(r"step-(\d+)\.pt")


class CheckpointError(ConfigError):
    """A checkpoint or params file cannot be used; the message names the file."""


def checkpoint_path(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / FOLDER / f"step-{step:08d}.pt"


def list_checkpoints(run_dir: Path) -> list[Path]:
    """The checkpoint files of a run directory, oldest (lowest step) first."""
    folder = Path(run_dir) / FOLDER
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.fullmatch(p.name))]
    return [p for _, p in sorted(found)]


def encode(state: dict) -> bytes:
    """The bytes of a checkpoint file holding ``state``."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    payload = buffer.getvalue()
    return MAGIC + hashlib.sha256(payload).hexdigest().encode() + b"\n" + payload


PARAMS_KEYS = ("theta", "tensors", "backend", "backend_theta")


def params_bytes(state: dict) -> bytes:
    """params.pt of a run state: "theta", the float weights the trained parameters stand for (CPU,
    float64), "tensors", the same by name; "backend" and "backend_theta", the parameters as that backend
    holds them (e.g. integer codes or phases). A plain torch file (``torch.load``)."""
    buffer = io.BytesIO()
    torch.save({key: state[key] for key in PARAMS_KEYS}, buffer)
    return buffer.getvalue()


def save(path: Path, state: dict) -> int:
    """Write ``state`` to ``path`` atomically (temp file + rename); returns the file's size in bytes."""
    data = encode(state)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, data)
    return len(data)


def load(path: Path) -> dict:
    """The state of a checkpoint file; a missing, truncated or corrupted file raises CheckpointError."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise CheckpointError(f"checkpoint {path}: cannot be read ({e.strerror or e})") from None
    head, _, payload = data.partition(b"\n")
    if not head.startswith(MAGIC):
        raise CheckpointError(f"checkpoint {path}: not an hwsim checkpoint (no {MAGIC.decode().strip()} header)")
    if hashlib.sha256(payload).hexdigest().encode() != head[len(MAGIC):]:
        raise CheckpointError(f"checkpoint {path}: truncated or corrupted (its sha256 does not match the header); "
                              f"delete it to resume from an older checkpoint")
    try:
        return torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    except Exception as e:  # the digest matched, so this is a file of another version or writer
        raise CheckpointError(f"checkpoint {path}: unreadable payload ({type(e).__name__})") from None


def latest(run_dir: Path) -> Path:
    """The newest checkpoint of a run directory (CheckpointError when there is none)."""
    found = list_checkpoints(run_dir)
    if not found:
        raise CheckpointError(f"{run_dir}: no checkpoints in {Path(run_dir) / FOLDER}: nothing to resume "
                              f"(give a run directory written by `hwsim train` or `hwsim pinn`)")
    return found[-1]


def read_params(source: str | Path, key: str = "theta") -> tuple[torch.Tensor, Path]:
    """The float weights ("theta", (d,)) a run stands for, and the file they came from: ``source`` is a
    params.pt, a checkpoint file, or a run directory (its params.pt, else its newest checkpoint)."""
    path = Path(source)
    if path.is_dir():
        found = list_checkpoints(path)
        path = path / "params.pt" if (path / "params.pt").is_file() or not found else found[-1]
    if not path.is_file():
        raise CheckpointError(f"{source}: neither a params.pt or checkpoint file nor a run directory with one")
    if _NAME.fullmatch(path.name) and path.parent.name == FOLDER:
        state = load(path)
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise CheckpointError(f"params file {path}: unreadable, truncated or corrupted ({type(e).__name__})") from None
    if not isinstance(state, dict) or not isinstance(state.get(key), torch.Tensor):
        raise CheckpointError(f"params file {path}: holds no {key!r} tensor")
    return state[key], path
