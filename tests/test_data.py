"""Raw IDX reading, the seeded validation split and prepared tensors (lottery.data).

Fixtures are tiny gzip IDX files written under tmp_path: no test reads the real datasets.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import os
import pickle
import pickletools
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from lottery import config, data, raw
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
             dataset: str = "fashion-mnist", split_seed: int = 0) -> config.Config:
    d = {"dataset": dataset, "validation": validation, "train_subset": train_subset, "split_seed": split_seed}
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


def test_validation_split_is_a_function_of_the_split_seed_alone(raw_root):
    a = data.prepare(make_cfg(raw_root, seed=0))
    b = data.prepare(make_cfg(raw_root, seed=1))  # the trial seed does not move the split
    c = data.prepare(make_cfg(raw_root, split_seed=1))
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


def test_a_validation_split_that_leaves_a_label_out_of_training_stops_prepare(raw_root):
    out = data.prepare(make_cfg(raw_root, validation=50))
    assert len(out["y_train"]) == 50 and len(out["y_val"]) == 50
    with pytest.raises(DataError, match=r"^data.dataset: fashion-mnist: validation split: label \d does not occur in "
                                        r"the training split left after holding out data.validation=98$"):
        data.prepare(make_cfg(raw_root, validation=98))


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
    for split in ("train", "val", "test"):
        got = getattr(out, split)
        assert got.x.dtype == torch.float32
        assert got.x.shape == tensors[f"x_{split}"].shape
        assert torch.equal(got.y, tensors[f"y_{split}"])
        # every split is normalised with the *training* mean and std
        want = (tensors[f"x_{split}"].float() - tensors["mean"]) / tensors["std"]
        assert torch.allclose(got.x, want, atol=1e-6, rtol=0)
    assert float(out.train.x.mean()) == pytest.approx(0.0, abs=1e-4)
    assert float(out.train.x.std()) == pytest.approx(1.0, abs=1e-4)
    assert out.example_shape == (1, 28, 28) and out.classes == int(tensors["y_train"].max()) + 1


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


# ---------------------------------------------------------------- data/raw.json: the files prepare reads


def test_describe_records_path_size_and_sha256_of_each_file(raw_root):
    record = raw.describe("fashion-mnist", raw_root)
    assert record["dataset"] == "fashion-mnist" and set(record["files"]) == set(raw.IDX_FILES)
    for role, f in record["files"].items():
        path = raw_root / "fashion-mnist" / (raw.IDX_FILES[role] + ".gz")
        assert f == {"path": str(path), "size": path.stat().st_size,
                     "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    # an edited raw file is a different record (the check stage writes it; prepare depends on it)
    write_gz(raw_root / "fashion-mnist" / "train-labels-idx1-ubyte.gz", idx_bytes((np.arange(N_TRAIN) + 1) % 10))
    assert raw.describe("fashion-mnist", raw_root)["files"]["train_y"]["sha256"] != record["files"]["train_y"]["sha256"]


def test_a_copy_that_takes_precedence_changes_the_record(tmp_path):
    # mnist: data.root/mnist/ before the system folder before data.root/MNIST/raw/ (torchvision's download)
    for folder in (tmp_path / "MNIST" / "raw", tmp_path / "mnist"):
        write_gz(folder / "train-images-idx3-ubyte.gz", idx_bytes(make_images(N_TRAIN, 0, seed=1)))
        write_gz(folder / "train-labels-idx1-ubyte.gz", idx_bytes(np.arange(N_TRAIN) % 10))
        write_gz(folder / "t10k-images-idx3-ubyte.gz", idx_bytes(make_images(N_TEST, 150, seed=2)))
        write_gz(folder / "t10k-labels-idx1-ubyte.gz", idx_bytes(np.arange(N_TEST) % 10))
        if folder.name == "raw":
            downloaded = raw.describe("mnist", tmp_path)
            assert downloaded["files"]["train_x"]["path"] == str(folder / "train-images-idx3-ubyte.gz")
    local = raw.describe("mnist", tmp_path)
    assert local["files"]["train_x"]["path"] == str(tmp_path / "mnist" / "train-images-idx3-ubyte.gz")
    assert local != downloaded


def test_prepare_reads_the_recorded_files_and_refuses_a_changed_one(raw_root, tmp_path):
    record_path = tmp_path / "raw.json"
    record_path.write_text(json.dumps(raw.describe("fashion-mnist", raw_root)))
    record = raw.read_record(record_path, "fashion-mnist")
    out = data.prepare(make_cfg(raw_root), record)
    assert torch.equal(out["x_train"], data.prepare(make_cfg(raw_root))["x_train"])
    # the record, not data.root, names the files read
    assert torch.equal(data.prepare(make_cfg(tmp_path / "elsewhere"), record)["x_test"], out["x_test"])
    with pytest.raises(DataError, match="mnist1d"):
        raw.read_record(record_path, "mnist1d")
    changed = raw_root / "fashion-mnist" / "t10k-labels-idx1-ubyte.gz"
    write_gz(changed, idx_bytes(np.arange(N_TEST) % 10))
    with pytest.raises(DataError) as e:
        raw.read_record(record_path, "fashion-mnist")
    assert str(changed) in str(e.value) and "changed" in str(e.value)
    with pytest.raises(DataError, match="none.json"):
        raw.read_record(tmp_path / "none.json", "fashion-mnist")


def test_mnist1d_record_holds_the_generator_version_and_arguments():
    pytest.importorskip("mnist1d")
    from importlib import metadata

    from mnist1d.data import get_dataset_args

    record = raw.describe("mnist1d", "data/raw")
    assert record == {"dataset": "mnist1d", "generator": {
        "package": "mnist1d", "version": metadata.version("mnist1d"), "args": dict(vars(get_dataset_args()))}}
    assert record["generator"]["args"]["seed"] == 42 and record["generator"]["args"]["num_samples"] == 5000
    # prepare generates with the recorded arguments
    record["generator"]["args"]["num_samples"] = 1000
    out = data.prepare(make_cfg(dataset="mnist1d", validation=100), record)
    assert len(out["y_train"]) + 100 == 800 and len(out["y_test"]) == 200


# ---------------------------------------------------------------- CIFAR-10 python batches


class _Hostile:
    """A pickle that runs a shell command when loaded by an unrestricted unpickler."""

    def __init__(self, target: Path):
        self.target = target

    def __reduce__(self):
        return os.system, (f"touch {self.target}",)


def cifar_batch(n: int, offset: int, numpy_module: str = "numpy._core.multiarray") -> bytes:
    """A CIFAR-10 python batch as the real files hold it: a dict of bytes keys, pickled in protocol 2,
    the images a uint8 numpy array (the real files, from numpy 1, name numpy.core.multiarray)."""
    x = np.random.default_rng(offset).integers(0, 256, size=(n, 3072), dtype=np.uint8)
    x[:, 0] = offset + np.arange(n)
    d = {b"batch_label": b"training batch", b"labels": [int(i % 10) for i in range(offset, offset + n)],
         b"data": x, b"filenames": [f"img_{i}.png".encode() for i in range(n)]}
    blob = pickle.dumps(d, protocol=2)
    return blob.replace(b"numpy._core.multiarray\n", numpy_module.encode() + b"\n")


def test_cifar_batch_pickle_globals_are_the_admitted_ones():
    blob = cifar_batch(2, 0, "numpy.core.multiarray")
    found = {arg for op, arg, _ in pickletools.genops(blob) if op.name == "GLOBAL"}
    assert found == {"_codecs encode", "numpy.core.multiarray _reconstruct", "numpy ndarray", "numpy dtype"}


@pytest.mark.parametrize("numpy_module", ["numpy.core.multiarray", "numpy._core.multiarray"])
def test_real_format_cifar_batches_load(tmp_path, numpy_module):
    folder = tmp_path / "raw" / raw.CIFAR_DIR
    folder.mkdir(parents=True)
    for i in range(1, 6):
        (folder / f"data_batch_{i}").write_bytes(cifar_batch(10, 10 * (i - 1), numpy_module))
    (folder / "test_batch").write_bytes(cifar_batch(10, 100, numpy_module))
    out = data.prepare(make_cfg(tmp_path / "raw", dataset="cifar10", validation=5))
    assert out["x_train"].shape == (45, 3, 32, 32) and out["x_test"].shape == (10, 3, 32, 32)
    assert sorted(ids(out["x_train"]) + ids(out["x_val"])) == list(range(50))
    assert ids(out["x_test"]) == list(range(100, 110)) and out["y_test"].tolist() == [i % 10 for i in range(100, 110)]


def test_cifar_batch_with_numpy_integer_labels_loads(tmp_path):
    path = tmp_path / "data_batch_1"
    labels = list(np.arange(4, dtype=np.int64) + 3)  # numpy scalars, pickled with numpy's scalar()
    path.write_bytes(pickle.dumps({b"data": np.zeros((4, 3072), np.uint8), b"labels": labels}))
    x, y = data._read_cifar_batch(path)
    assert x.shape == (4, 3, 32, 32) and y.tolist() == [3, 4, 5, 6]


def test_hostile_cifar_batch_is_refused_naming_the_file_and_runs_nothing(tmp_path):
    target = tmp_path / "pwned"
    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps({b"data": _Hostile(target), b"labels": [0]}, protocol=2))
    assert b"system" in path.read_bytes()  # the pickle does call os.system (posix.system) when loaded
    with pytest.raises(DataError) as e:
        data._read_cifar_batch(path)
    assert str(path) in str(e.value) and "refused" in str(e.value) and "system" in str(e.value)
    assert not target.exists()
