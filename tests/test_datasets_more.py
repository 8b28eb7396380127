"""cifar100, svhn and kmnist: each read from small files written in its real on-disk format."""
from __future__ import annotations

import pickle

import numpy as np
import pytest
from scipy.io import savemat
from test_data import idx_bytes, ids, make_images, write_gz

from lottery import config, data, raw
from lottery.raw import DataError


def cfg_for(root, dataset: str, validation: int = 5) -> config.Config:
    return config.from_dict({"data": {"dataset": dataset, "validation": validation, "root": str(root)},
                             "model": {"name": "examples.my_network:build"},
                             "prune": {"rounds": 1, "chain": config.chain(1)}})


def cifar100_file(n: int, offset: int) -> bytes:
    """CIFAR-100's python format: a dict of bytes keys with fine and coarse labels, protocol 2."""
    x = np.random.default_rng(offset).integers(0, 256, size=(n, 3072), dtype=np.uint8)
    x[:, 0] = offset + np.arange(n)
    d = {b"filenames": [f"{i}.png".encode() for i in range(n)], b"batch_label": b"training batch 1 of 1",
         b"fine_labels": [int((offset + i % 6) * 7 % 100) for i in range(n)],  # 6 labels: each in train and test
         b"coarse_labels": [int(i % 20) for i in range(n)], b"data": x}
    return pickle.dumps(d, protocol=2)


def test_cifar100_python_format_loads_fine_labels(tmp_path):
    folder = tmp_path / "raw" / "cifar100" / raw.CIFAR100_DIR
    folder.mkdir(parents=True)
    (folder / "train").write_bytes(cifar100_file(20, 0))
    (folder / "test").write_bytes(cifar100_file(6, 100))
    (folder / "meta").write_bytes(pickle.dumps({b"fine_label_names": [b"apple"] * 100}, protocol=2))
    out = data.prepare(cfg_for(tmp_path / "raw", "cifar100"))
    assert out["x_train"].shape == (15, 3, 32, 32) and out["x_test"].shape == (6, 3, 32, 32)
    assert sorted(ids(out["x_train"]) + ids(out["x_val"])) == list(range(20))
    assert ids(out["x_test"]) == list(range(100, 106))
    assert out["y_test"].tolist() == [(100 + i) * 7 % 100 for i in range(6)]
    assert data.CLASSES["cifar100"] == 100 and data.SHAPES["cifar100"] == (3, 32, 32)


def svhn_file(path, n: int, offset: int) -> None:
    """SVHN's cropped digits as the real .mat files hold them: X (32, 32, 3, N) uint8, y (N, 1), 10 for digit 0."""
    x = np.random.default_rng(offset).integers(0, 256, size=(32, 32, 3, n), dtype=np.uint8)
    x[0, 0, 0, :] = offset + np.arange(n)  # channel 0, pixel (0, 0): the image's id
    y = (np.arange(n) % 10 + 1).reshape(n, 1).astype(np.uint8)  # 1..10
    savemat(path, {"X": x, "y": y})


def test_svhn_mat_files_load_with_digit_zero_as_label_zero(tmp_path):
    folder = tmp_path / "raw" / "svhn"
    folder.mkdir(parents=True)
    svhn_file(folder / "train_32x32.mat", 20, 0)
    svhn_file(folder / "test_32x32.mat", 10, 100)
    out = data.prepare(cfg_for(tmp_path / "raw", "svhn"))
    assert out["x_train"].shape == (15, 3, 32, 32) and out["x_test"].shape == (10, 3, 32, 32)
    assert sorted(ids(out["x_train"]) + ids(out["x_val"])) == list(range(20))
    assert ids(out["x_test"]) == list(range(100, 110))
    assert out["y_test"].tolist() == [(i % 10 + 1) % 10 for i in range(10)]  # 10 -> 0


def test_svhn_file_of_another_kind_is_refused_naming_it(tmp_path):
    folder = tmp_path / "raw" / "svhn"
    folder.mkdir(parents=True)
    svhn_file(folder / "train_32x32.mat", 4, 0)
    (folder / "test_32x32.mat").write_bytes(b"not a mat file")
    with pytest.raises(DataError, match="test_32x32.mat: not an SVHN .mat file"):
        data.prepare(cfg_for(tmp_path / "raw", "svhn", validation=1))


def test_kmnist_idx_files_load_like_mnist(tmp_path):
    folder = tmp_path / "raw" / "kmnist"
    write_gz(folder / "train-images-idx3-ubyte.gz", idx_bytes(make_images(30, 0, seed=1)))
    write_gz(folder / "train-labels-idx1-ubyte.gz", idx_bytes(np.arange(30) % 10))
    write_gz(folder / "t10k-images-idx3-ubyte.gz", idx_bytes(make_images(8, 150, seed=2)))
    write_gz(folder / "t10k-labels-idx1-ubyte.gz", idx_bytes(np.arange(8) % 10))
    out = data.prepare(cfg_for(tmp_path / "raw", "kmnist", validation=10))
    assert out["x_train"].shape == (20, 1, 28, 28) and ids(out["x_test"]) == list(range(150, 158))
    assert raw.describe("kmnist", tmp_path / "raw")["files"]["train_x"]["path"].startswith(str(folder))
