"""Raw IDX reading, the seeded validation split and prepared tensors (lottery.data).

Fixtures are tiny gzip IDX files written under tmp_path: no test reads the real datasets.
"""
from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from lottery import config, data
from lottery.config import ConfigError
from lottery.data import DataError

N_TRAIN, N_TEST = 100, 20


def idx_bytes(array: np.ndarray) -> bytes:
    """Serialise a uint8 array in the IDX format (magic 0x0000 08 ndim, big-endian dims)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    return header + array.tobytes()


def write_gz(path: Path, payload: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wb") as f:
        f.write(payload)
    return path


def make_images(n: int, offset: int, seed: int) -> np.ndarray:
    """Random images whose pixel (0, 0) is a unique id (offset + i) so every image can be traced."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    x[:, 0, 0] = offset + np.arange(n)
    return x


@pytest.fixture
def raw_root(tmp_path) -> Path:
    folder = tmp_path / "raw" / "fashion-mnist"
    x_train, x_test = make_images(N_TRAIN, 0, seed=1), make_images(N_TEST, 150, seed=2)
    write_gz(folder / "train-images-idx3-ubyte.gz", idx_bytes(x_train))
    write_gz(folder / "train-labels-idx1-ubyte.gz", idx_bytes(np.arange(N_TRAIN) % 10))
    write_gz(folder / "t10k-images-idx3-ubyte.gz", idx_bytes(x_test))
    write_gz(folder / "t10k-labels-idx1-ubyte.gz", idx_bytes((np.arange(N_TEST) * 3) % 10))
    return tmp_path / "raw"


def make_cfg(root: Path | None = None, seed: int = 0, validation: int = 10, train_subset: int = 0,
             dataset: str = "fashion-mnist") -> config.Config:
    d = {"dataset": dataset, "validation": validation, "train_subset": train_subset}
    if root is not None:
        d["root"] = str(root)
    model = {"mnist1d": "mlp-mnist1d", "cifar10": "conv-2"}.get(dataset, "lenet-300-100")
    return config.from_dict({"seed": seed, "data": d, "model": {"name": model},
                             "prune": {"rounds": 1, "chain": config.chain(1)}})


def ids(x: torch.Tensor) -> list[int]:
    return x[:, 0, 0, 0].tolist()


# ---------------------------------------------------------------- read_idx


def test_read_idx_roundtrip_gz_and_plain(tmp_path):
    arr = make_images(7, 0, seed=3)
    gz = write_gz(tmp_path / "a-idx3-ubyte.gz", idx_bytes(arr))
    plain = tmp_path / "a-idx3-ubyte"
    plain.write_bytes(idx_bytes(arr))
    for path in (gz, plain):
        out = data.read_idx(path)
        assert out.dtype == np.uint8 and out.shape == (7, 28, 28)
        assert np.array_equal(out, arr)
    labels = write_gz(tmp_path / "l-idx1-ubyte.gz", idx_bytes(np.array([3, 1, 4, 1, 5])))
    assert data.read_idx(labels).tolist() == [3, 1, 4, 1, 5]


def test_read_idx_truncated_payload_names_file(tmp_path):
    full = idx_bytes(make_images(10, 0, seed=4))
    path = write_gz(tmp_path / "train-images-idx3-ubyte.gz", full[: len(full) - 100])
    with pytest.raises(DataError) as e:
        data.read_idx(path)
    assert str(path) in str(e.value)
    assert "7840" in str(e.value)  # the expected number of values


def test_read_idx_truncated_gzip_stream_names_file(tmp_path):
    path = write_gz(tmp_path / "train-images-idx3-ubyte.gz", idx_bytes(make_images(10, 0, seed=4)))
    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(DataError) as e:
        data.read_idx(path)
    assert str(path) in str(e.value)


def test_read_idx_extra_bytes_and_bad_magic_name_file(tmp_path):
    path = write_gz(tmp_path / "x.gz", idx_bytes(np.zeros((2, 3))) + b"\x00")
    with pytest.raises(DataError, match="x.gz"):
        data.read_idx(path)
    bad = tmp_path / "bad-idx"
    bad.write_bytes(b"\x00\x00\x0d\x01" + struct.pack(">I", 1) + b"\x00\x00\x00\x00")  # float IDX
    with pytest.raises(DataError, match="bad-idx"):
        data.read_idx(bad)
    empty = tmp_path / "empty-idx"
    empty.write_bytes(b"")
    with pytest.raises(DataError, match="empty-idx"):
        data.read_idx(empty)


# ---------------------------------------------------------------- prepare


def test_prepare_sizes_and_dtypes(raw_root):
    out = data.prepare(make_cfg(raw_root))
    assert out["x_train"].shape == (90, 1, 28, 28)
    assert out["x_val"].shape == (10, 1, 28, 28)
    assert out["x_test"].shape == (20, 1, 28, 28)
    assert out["x_train"].dtype == torch.uint8  # stored unnormalised
    assert [len(out[k]) for k in ("y_train", "y_val", "y_test")] == [90, 10, 20]
    assert out["y_train"].dtype == torch.int64
    # labels travel with their images (label = id % 10 in the fixture)
    for split in ("train", "val"):
        assert out[f"y_{split}"].tolist() == [i % 10 for i in ids(out[f"x_{split}"])]
    # the test set is untouched, in file order
    assert ids(out["x_test"]) == list(range(150, 170))
    assert out["y_test"].tolist() == [(i * 3) % 10 for i in range(20)]
    # mean and std come from the training split only
    assert float(out["mean"]) == pytest.approx(float(out["x_train"].double().mean()), rel=1e-5)
    assert float(out["std"]) == pytest.approx(float(out["x_train"].double().std()), rel=1e-5)


def test_validation_split_is_disjoint_and_covers_train(raw_root):
    out = data.prepare(make_cfg(raw_root))
    train, val = ids(out["x_train"]), ids(out["x_val"])
    assert len(set(train)) == 90 and len(set(val)) == 10
    assert not set(train) & set(val)
    assert sorted(train + val) == list(range(N_TRAIN))
    assert train == sorted(train)  # training images kept in file order
    assert val != list(range(10)) and val != list(range(90, 100))  # really random, not a head/tail cut


def test_validation_split_is_a_function_of_the_seed(raw_root):
    a = data.prepare(make_cfg(raw_root, seed=0))
    b = data.prepare(make_cfg(raw_root, seed=0))
    c = data.prepare(make_cfg(raw_root, seed=1))
    for k in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test"):
        assert torch.equal(a[k], b[k]), k
    assert set(ids(a["x_val"])) != set(ids(c["x_val"]))
    assert torch.equal(a["x_test"], c["x_test"])


def test_train_subset(raw_root):
    full = data.prepare(make_cfg(raw_root))
    sub = data.prepare(make_cfg(raw_root, train_subset=30))
    assert sub["x_train"].shape == (30, 1, 28, 28) and len(sub["y_train"]) == 30
    assert torch.equal(sub["x_val"], full["x_val"])  # the split is made before the subset
    assert set(ids(sub["x_train"])) <= set(ids(full["x_train"]))
    assert ids(sub["x_train"]) == ids(full["x_train"])[:30]
    assert float(sub["mean"]) == pytest.approx(float(sub["x_train"].double().mean()), rel=1e-5)


@pytest.mark.parametrize("validation", [100, 150])
def test_validation_not_smaller_than_train_raises(raw_root, validation):
    with pytest.raises(ConfigError, match=r"data\.validation"):
        data.prepare(make_cfg(raw_root, validation=validation))


def test_validation_99_leaves_one_training_image(raw_root):
    out = data.prepare(make_cfg(raw_root, validation=99))
    assert len(out["y_train"]) == 1 and len(out["y_val"]) == 99


def test_corrupt_raw_file_raises_data_error_naming_it(raw_root):
    path = raw_root / "fashion-mnist" / "train-labels-idx1-ubyte.gz"
    write_gz(path, idx_bytes(np.arange(N_TRAIN) % 10)[:-3])
    with pytest.raises(DataError) as e:
        data.prepare(make_cfg(raw_root))
    assert str(path) in str(e.value)


def test_mismatched_image_and_label_counts_raise(raw_root):
    write_gz(raw_root / "fashion-mnist" / "train-labels-idx1-ubyte.gz", idx_bytes(np.arange(N_TRAIN - 1) % 10))
    with pytest.raises(DataError, match="train images"):
        data.prepare(make_cfg(raw_root))


# ---------------------------------------------------------------- save / load prepared


def test_load_prepared_after_save_prepared_is_normalised(raw_root, tmp_path):
    tensors = data.prepare(make_cfg(raw_root))
    path = tmp_path / "prepared" / "data.pt"
    data.save_prepared(tensors, path)
    assert path.is_file()
    assert not [p for p in path.parent.iterdir() if p.name != "data.pt"]  # no temporary file left
    out = data.load_prepared(path)
    assert set(out) == {"x_train", "y_train", "x_val", "y_val", "x_test", "y_test"}
    for split in ("train", "val", "test"):
        assert out[f"x_{split}"].dtype == torch.float32
        assert out[f"x_{split}"].shape == tensors[f"x_{split}"].shape
        assert torch.equal(out[f"y_{split}"], tensors[f"y_{split}"])
        # every split is normalised with the *training* mean and std
        want = (tensors[f"x_{split}"].float() - tensors["mean"]) / tensors["std"]
        assert torch.allclose(out[f"x_{split}"], want, atol=1e-6, rtol=0)
    assert float(out["x_train"].mean()) == pytest.approx(0.0, abs=1e-4)
    assert float(out["x_train"].std()) == pytest.approx(1.0, abs=1e-4)


def test_load_prepared_missing_and_corrupt(tmp_path):
    missing = tmp_path / "none.pt"
    with pytest.raises(DataError, match="none.pt"):
        data.load_prepared(missing)
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a torch file")
    with pytest.raises(DataError, match="corrupt.pt"):
        data.load_prepared(corrupt)


def test_shape_registry():
    assert data.SHAPES["fashion-mnist"] == (1, 28, 28)
    assert data.SHAPES["mnist1d"] == (40,)


# ---------------------------------------------------------------- mnist1d


def test_prepare_mnist1d():
    pytest.importorskip("mnist1d")
    out = data.prepare(make_cfg(dataset="mnist1d", validation=500))
    n = len(out["y_train"])
    assert out["x_train"].shape == (n, 40) and out["x_train"].dtype == torch.float32
    assert out["x_val"].shape == (500, 40) and out["x_test"].shape[1:] == (40,)
    assert n + 500 == 4000  # the package's default 4000 training examples
    assert sorted(out["y_train"].unique().tolist()) == list(range(10))
    assert out["y_train"].dtype == torch.int64
    assert torch.isfinite(out["x_train"]).all()
