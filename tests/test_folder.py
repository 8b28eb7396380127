"""Image-folder datasets (lottery.folder): streamed batches with the interface of TensorData, the same for any
number of workers, after a resume and across shards; the manifest that reruns what an edited image changes;
bad input in one line naming the path; and one real `dvc repro` that trains on a generated folder."""
from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import ran
from PIL import Image

from lottery import artifacts, config, data, folder, raw
from lottery.config import ConfigError
from lottery.raw import DataError

CLASSES = ("ant", "bee", "cat")
TINY_NET = '''from torch import nn


def build(num_classes, input_shape):
    return nn.Sequential(nn.Conv2d(input_shape[0], 4, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                         nn.Linear(16, num_classes))
'''


def make_folder(root: Path, train: int = 30, val: int = 6, seed: int = 0) -> Path:
    """3 classes x `train` PNGs under root/train, x `val` under root/val: 32x32 noise (every third 40 wide)."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", train), ("val", val)):
        for c in CLASSES:
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 256, (32, 40 if i % 3 == 0 else 32, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / c / f"{i:03d}.png")
    return root


def make_cfg(root: Path, dataset: str = "imagefolder", **data_keys) -> config.Config:
    return config.from_dict({
        "data": {"dataset": dataset, "root": str(root), "validation": 15, "image_size": 24, "resize": 28, **data_keys},
        "model": {"name": "tinynet:build"}, "prune": {"rounds": 0, "chain": {}}})


def prepare(cfg: config.Config, out: Path) -> Path:
    tensors = data.prepare(cfg, raw.describe(cfg.data.dataset, cfg.data.root))
    data.save_prepared(tensors, out, data.prepared_params(cfg))
    return out


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny image folder and its data/prepared.pt."""
    tmp = tmp_path_factory.mktemp("folder")
    root = make_folder(tmp / "images")
    return root, prepare(make_cfg(root), tmp / "prepared.pt")


def load(images, workers: int = 0, **keys) -> folder.FolderData:
    root, prepared = images
    cfg = make_cfg(root, workers=workers, **keys)
    return data.load_prepared(prepared, "cpu", data.prepared_params(cfg), cfg.data)


def draw(orders, count: int) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    out = []
    for _ in range(count):
        idx = orders.next_batch()
        out.append((idx, *orders.batch(idx)))
    return out


def same(a: list, b: list) -> bool:
    return len(a) == len(b) and all(torch.equal(u, v) for x, y in zip(a, b) for u, v in zip(x, y))


def test_prepare_splits_the_files_and_the_data_has_the_interface_of_tensor_data(images):
    root, prepared = images
    d = load(images)
    assert d.classes == 3 and d.example_shape == (3, 24, 24) and d.device == torch.device("cpu")
    assert (len(d.train), len(d.val), len(d.test)) == (75, 15, 18)
    orders = d.orders([1], 6)
    for cls, mine in ((data.TensorData, d), (data.Split, d.train), (data.Orders, orders)):  # every public name
        assert {n for n in vars(cls) if not n.startswith("_")} <= set(dir(mine)), cls
    assert orders.graphable is False and data.TensorData(*[torch.zeros(2, 1)] * 6).orders([1], 1).graphable is True
    t, meta = artifacts.load(prepared, "prepared")
    assert meta["params"] == data.prepared_params(make_cfg(root))
    # the validation split: data.validation training files drawn by data.split_seed, as for every dataset
    labels = np.repeat(np.arange(3), 30)
    val, train = data.holdout(make_cfg(root).data, labels, np.repeat(np.arange(3), 6))
    assert torch.equal(d.val.files, torch.from_numpy(val)) and torch.equal(d.train.files, torch.from_numpy(train))
    assert torch.equal(d.val.y, torch.from_numpy(labels[val]))
    assert torch.equal(d.test.y, torch.arange(3).repeat_interleave(6))
    paths = t["paths"].numpy().tobytes().decode().split("\n")  # no pickled object: text as uint8
    assert len(paths) == 108
    assert (paths[0], paths[30], paths[90]) == ("train/ant/000.png", "train/bee/000.png", "val/ant/000.png")
    assert t["manifest"].numpy().tobytes().decode() == raw.describe("imagefolder", root)["manifest"]["sha256"]


def test_evaluation_is_torchvisions_resize_and_center_crop_normalised(images):
    from torchvision import transforms

    root, _ = images
    d = load(images)
    x, y = next(d.test.chunks(4))
    tv = transforms.Compose([transforms.Resize(28), transforms.CenterCrop(24), transforms.PILToTensor()])
    expect = torch.stack([tv(Image.open(root / "val" / "ant" / f"{i:03d}.png").convert("RGB")) for i in range(4)])
    assert torch.equal(x, (expect.float() - d.mean) / d.std) and torch.equal(y, torch.zeros(4, dtype=torch.long))
    # per channel, of pixel values (0-255) of the training split: uniform noise here
    assert d.mean.shape == (3, 1, 1) and (120 < d.mean).all() and (d.mean < 135).all()
    assert (70 < d.std).all() and (d.std < 78).all()


def test_batches_are_the_same_for_0_1_2_workers_and_after_a_resume_or_skip(images):
    seeds, bs = [5, 6, 5], 12  # 75 training files: 6 batches an epoch, so 8 cross into the second permutation
    runs = {w: draw(load(images, w).orders(seeds, bs, augment=True), 8) for w in (0, 1, 2)}
    assert same(runs[0], runs[1]) and same(runs[0], runs[2])
    idx, x, y = runs[0][0]
    assert idx.shape == (2, 12) and x.shape == (3, 12, 3, 24, 24) and y.shape == (3, 12) and x.dtype == torch.float32
    assert torch.equal(x[0], x[2]) and not torch.equal(x[0], x[1])  # networks that share a seed share batches
    plain = draw(load(images).orders(seeds, bs), 8)
    assert [torch.equal(a[0], b[0]) for a, b in zip(plain, runs[0])] == [True] * 8  # the same order, other pixels
    assert not torch.equal(plain[0][1], x)
    # the order: TensorData's, from the same seeds
    tensor_orders = data.TensorData(*[torch.zeros(75, 1), torch.zeros(75, dtype=torch.long)] * 3).orders(seeds, bs)
    assert all(torch.equal(tensor_orders.next_batch(), b[0]) for b in plain)

    first = load(images, 2).orders(seeds, bs, augment=True)
    draw(first, 3)
    state = first.state_dict()
    first.close()
    resumed = load(images, 1).orders(seeds, bs, augment=True)
    resumed.load_state_dict(state)
    assert same(draw(resumed, 5), runs[0][3:])
    skipped = load(images, 2).orders(seeds, bs, augment=True)
    for _ in range(3):
        skipped.skip()
    assert same(draw(skipped, 5), runs[0][3:])
    again = load(images).orders(seeds, bs, augment=True)  # batch() of an idx it did not foresee: still right
    i1, i2 = again.next_batch(), again.next_batch()
    assert torch.equal(again.batch(i2)[0], runs[0][1][1])


def test_shards_of_a_batch_and_of_the_chunks_add_up_to_the_whole(images):
    d = load(images, 1)
    whole = draw(d.orders([7, 8], 12, augment=True), 7)
    ranks = [draw(d.orders([7, 8], 12, augment=True, shard=(r, 2)), 7) for r in range(2)]
    for w, r0, r1 in zip(whole, *ranks):
        assert torch.equal(r0[0], w[0]) and torch.equal(r1[0], w[0])  # global indices on every rank
        assert r0[1].shape == (2, 6, 3, 24, 24)
        assert torch.equal(torch.cat([r0[1], r1[1]], 1), w[1]) and torch.equal(torch.cat([r0[2], r1[2]], 1), w[2])
    with pytest.raises(ConfigError, match="train.batch_size: 12 is not divisible by train.world_size=5"):
        d.orders([7], 12, shard=(0, 5))
    chunks = list(d.val.chunks(4))
    assert [len(y) for _, y in chunks] == [4, 4, 4, 3]
    shards = [list(d.val.chunks(4, (r, 3))) for r in range(3)]
    assert [len(s) for s in shards] == [2, 1, 1]
    for i, (x, y) in enumerate(chunks):
        sx, sy = shards[i % 3][i // 3]
        assert torch.equal(sx, x) and torch.equal(sy, y)


class Crash(Exception):
    pass


def test_training_on_a_folder_resumed_after_a_crash_is_bit_identical(images, tmp_path):
    from torch import nn

    from lottery import generic, masks, models
    from lottery.training import train

    def run(resume_dir, crash_at=None):
        d = load(images, 1)
        model = generic.build(lambda num_classes, input_shape: nn.Sequential(
            nn.Conv2d(3, 4, 3, stride=2), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 11 * 11, num_classes)),
            [3, 4], d.classes, d.example_shape)
        mask = masks.ones(model, models.prunable(model))
        cfg = config.TrainConfig(iterations=12, eval_every=2, batch_size=10, log_every=2)

        def log(line):
            lines.append(line)
            if crash_at and f"it {crash_at:>6}/" in line:
                raise Crash(line)

        result = train(model, mask, d, cfg, [3, 4], log=log, resume_dir=resume_dir, checkpoint_seconds=0.0,
                       augment=True)
        return model.state_dict(), result

    lines: list[str] = []
    reference = run(None)
    with pytest.raises(Crash):  # after the resume point of iteration 8 (mid-epoch: 7 batches of 10 an epoch)
        run(tmp_path, crash_at=8)
    assert len(list(tmp_path.glob("*.pt"))) == 1
    lines.clear()
    state, result = run(tmp_path)
    assert any("resumed from" in line and "at iteration 8" in line for line in lines), lines
    assert result == reference[1] and all(torch.equal(a, b) for a, b in zip(state.values(), reference[0].values()))
    assert [c["iteration"] for c in result.curve] == [2, 4, 6, 8, 10, 12]


def test_first_batches_and_subset(images):
    d = load(images, 2)
    firsts = d.first_batches([3, 4], 6, 2)
    orders = d.orders([3, 4], 6)
    assert same([b for b in firsts], [orders.batch(orders.next_batch()) for _ in range(2)])
    sub = d.train.subset(torch.tensor([9, 2, 70]))
    x, y = next(sub.chunks(10))
    rows = torch.cat([x for x, _ in d.train.chunks(10)])
    assert len(sub) == 3 and torch.equal(x, rows[[9, 2, 70]]) and torch.equal(y, d.train.y[[9, 2, 70]])


def test_a_malformed_prepared_folder_is_one_line_naming_the_tensor(images, tmp_path):
    root, prepared = images
    tensors, _ = artifacts.load(prepared, "prepared")
    cfg = make_cfg(root)
    for key, value, why in (("y_val", torch.full((15,), 3), "expected int64 labels below 3, one per file"),
                            ("index_test", torch.tensor([108]), "expected int64 positions among 108 files"),
                            ("paths", torch.zeros(4), "expected uint8 text"), ("mean", None, "is missing")):
        bad = {k: v for k, v in {**tensors, key: value}.items() if v is not None}
        with pytest.raises(DataError) as e:
            data.save_prepared(bad, tmp_path / "bad.pt")
        assert str(e.value).startswith(f"{tmp_path / 'bad.pt'}: prepared tensor '{key}' ") and why in str(e.value)
    artifacts.save(tmp_path / "bad.pt", {**tensors, "y_val": torch.full((15,), 3)},
                   {"kind": "prepared", "params": data.prepared_params(cfg)})
    with pytest.raises(DataError, match=r"prepared tensor 'y_val' is torch.int64 \(15,\): expected int64 labels below 3"):
        data.load_prepared(tmp_path / "bad.pt", "cpu", data.prepared_params(cfg), cfg.data)


def test_imagenet_is_found_under_root_and_uses_its_constants(tmp_path):
    make_folder(tmp_path / "raw" / "imagenet", train=6, val=2)
    cfg = make_cfg(tmp_path / "raw", "imagenet", validation=3)
    record = raw.describe("imagenet", tmp_path / "raw")
    assert record["root"] == str(tmp_path / "raw" / "imagenet") and record["classes"] == list(CLASSES)
    assert {k: record["manifest"][k] for k in ("train", "val")} == {"train": 18, "val": 6}
    d = data.load_prepared(prepare(cfg, tmp_path / "p.pt"), "cpu", data.prepared_params(cfg), cfg.data)
    assert torch.equal(d.mean.flatten(), torch.tensor(folder.IMAGENET_MEAN, dtype=torch.float64).mul(255).float())
    assert torch.equal(d.std.flatten(), torch.tensor(folder.IMAGENET_STD, dtype=torch.float64).mul(255).float())


def test_the_new_keys_reach_the_rounds_digests_only_for_image_folders():
    stages = ("init", "dense", "round")
    for name in stages:
        assert {"data.image_size", "data.resize"} <= set(config.STAGE_PARAMS[name]), name
    assert not any("data.workers" in keys for keys in config.STAGE_PARAMS.values())  # it changes no batch
    # tensor datasets: their artifacts keep the bytes they had before these keys existed
    base = config.from_dict({"prune": {"chain": config.chain(15)}})
    bigger = dataclasses.replace(base, data=dataclasses.replace(base.data, image_size=100, resize=120, workers=7))
    for name in stages:
        keys = [k for k in config.STAGE_PARAMS[name] if k not in config.FOLDER_KEYS]
        assert base.digest(config.STAGE_PARAMS[name]) == bigger.digest(config.STAGE_PARAMS[name]) == base.digest(keys)
    imgs = make_cfg(Path("x"))
    other = dataclasses.replace(imgs, data=dataclasses.replace(imgs.data, image_size=20))
    assert imgs.digest(config.STAGE_PARAMS["round"]) != other.digest(config.STAGE_PARAMS["round"])
    with pytest.raises(ConfigError, match=r"data.resize: 20 is not allowed \(at least data.image_size=24"):
        make_cfg(Path("x"), resize=20)
    with pytest.raises(ConfigError, match=r"data.workers: -1 is not allowed"):
        make_cfg(Path("x"), workers=-1)


@pytest.mark.parametrize("case", ["no root", "no train", "no val", "empty class", "class lists", "extension",
                                  "loose file", "empty file"])
def test_bad_layouts_are_one_line_naming_the_path(tmp_path, case):
    root = make_folder(tmp_path / "images", train=2, val=1)
    path, expect = {
        "no root": (tmp_path / "nowhere", "image folder missing"),
        "no train": (root / "train", "missing (an image folder holds train/<class>/<image>"),
        "no val": (root / "val", "missing (an image folder holds train/<class>/<image>"),
        "empty class": (root / "val" / "bee", "empty class folder (no image files)"),
        "class lists": (root / "val" / "cow", None),
        "extension": (root / "train" / "ant" / "notes.txt", "not an image file (extensions: .jpg"),
        "loose file": (root / "train" / "x.png", "not in a class folder"),
        "empty file": (root / "train" / "cat" / "001.png", "empty file (0 bytes), not an image"),
    }[case]
    if case in ("no train", "no val"):
        shutil.rmtree(path)
    elif case == "empty class":
        shutil.rmtree(path)
        path.mkdir()
    elif case == "class lists":
        shutil.copytree(root / "val" / "cat", path)
        expect = "the class lists of train/ and val/ differ: val/cow has no counterpart (1 such class folder(s))"
        path = root
    elif case in ("extension", "loose file", "empty file"):
        path.write_bytes(b"" if case == "empty file" else b"text")
    with pytest.raises(DataError) as e:
        raw.describe("imagefolder", tmp_path / "nowhere" if case == "no root" else root)
    assert str(e.value).startswith(f"{path}: {expect}") and "\n" not in str(e.value), str(e.value)


def test_a_corrupt_image_stops_training_and_evaluation_naming_it(tmp_path):
    root = make_folder(tmp_path / "images", train=8, val=2)
    cfg = make_cfg(root, validation=3)
    prepared = prepare(cfg, tmp_path / "p.pt")
    d = data.load_prepared(prepared, "cpu", data.prepared_params(cfg), cfg.data)
    bad_train, bad_test = (d.decoder.path(int(s.files[5])) for s in (d.train, d.test))
    for bad in (bad_train, bad_test):
        bad.write_bytes(bad.read_bytes()[:100])  # truncated: found only when it is decoded
    for workers in (0, 2):
        d = data.load_prepared(prepared, "cpu", data.prepared_params(cfg), dataclasses.replace(cfg.data, workers=workers))
        orders = d.orders([0], len(d.train), augment=True)  # one batch holds every training file
        reads = ((bad_train, lambda: orders.batch(orders.next_batch())), (bad_test, lambda: list(d.test.chunks(4))))
        for bad, read in reads:
            with pytest.raises(DataError) as e:
                read()
            assert str(e.value).startswith(f"{bad}: cannot decode the image (") and "\n" not in str(e.value), e.value
    with pytest.raises(DataError, match=f"^{bad_train}: cannot decode the image"):
        prepare(cfg, tmp_path / "q.pt")  # prepare decodes a sample of every split (here: every file), train first


def test_an_image_folder_trains_through_dvc_and_an_edited_image_reruns_prepare_and_the_rounds(repo):
    (repo.path / "tinynet.py").write_text(TINY_NET)
    repo.set_params({"trials": 1, "data": {"dataset": "imagefolder", "root": "images", "validation": 15, "image_size": 32,
                                           "resize": 36, "augment": True, "workers": 1},
                     "model": {"name": "tinynet:build"}, "prune": {"rounds": 1},
                     "train": {"iterations": 6, "eval_every": 3, "batch_size": 12, "log_every": 0}})
    params = repo.params()
    params["prune"]["chain"] = {"r1": "r0"}
    (repo.path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    before = (repo.path / "runs" / "r1" / "model.pt").read_bytes()  # the template's (mnist1d)
    p = repo.dvc("repro", check=False)  # no folder yet: the check stage stops, one line, nothing lost
    assert p.returncode != 0 and "error: images: image folder missing (data.root; an image folder holds " \
        "train/<class>/<image> and val/<class>/<image>)\n" in p.stderr, p.stderr
    assert (repo.path / "runs" / "r1" / "model.pt").read_bytes() == before
    make_folder(repo.path / "images")
    out = repo.dvc("repro")
    assert ran(out.stdout) == ["prepare", "init", "dense", "round@r1", "summarize"], out.stdout
    assert "[check] params.yaml valid; imagefolder: 90 train / 18 val images in 3 classes" in out.stdout
    record = json.loads((repo.path / "data" / "raw.json").read_text())
    assert set(record) == {"dataset", "root", "classes", "manifest"} and record["classes"] == list(CLASSES)
    metrics = json.loads((repo.path / "runs" / "r1" / "metrics.json").read_text())
    assert metrics and (repo.path / "metrics" / "summary.json").exists()
    trained = (repo.path / "runs" / "r1" / "model.pt").read_bytes()

    # the dense round again as 2 processes (gloo), each decoding its half of every augmented batch in its own
    # DataLoader worker: the same networks up to the order of float sums
    one = artifacts.load(repo.path / "runs" / "r0" / "model.pt", "weights")[0]
    repo.set_params({"train": {"world_size": 2}})
    out = repo.dvc("repro", "dense")
    assert ran(out.stdout) == ["init", "dense"], out.stdout
    two = artifacts.load(repo.path / "runs" / "r0" / "model.pt", "weights")[0]
    assert 0 < max(float((two[k] - one[k]).abs().max()) for k in one) < 1e-4
    repo.set_params({"train": {"world_size": 1}})
    assert ran(repo.dvc("repro").stdout) == []  # back from the run-cache

    # a corrupt image met while training (a held-out validation file: read at the first evaluation) stops the round
    # in one line naming it, its outputs untouched
    tensors, _ = artifacts.load(repo.path / "data" / "prepared.pt", "prepared")
    name = tensors["paths"].numpy().tobytes().decode().split("\n")[int(tensors["index_val"][0])]
    image = repo.path / "images" / name
    image.write_bytes(image.read_bytes()[:200])
    p = repo.run(sys.executable, "-m", "stages.round", "r1", "r0", check=False)
    assert p.returncode == 2 and p.stderr.strip().splitlines()[-1].startswith(
        f"error: images/{name}: cannot decode the image ("), p.stderr
    assert (repo.path / "runs" / "r1" / "model.pt").read_bytes() == trained

    # resizing one image changes the manifest: prepare reruns, and then every round is stale
    Image.fromarray(np.zeros((36, 36, 3), dtype=np.uint8) + 7).save(image)
    out = repo.dvc("repro", "prepare")
    assert ran(out.stdout) == ["prepare"], out.stdout
    status = repo.dvc("status").stdout
    stale = {line.split(":")[0].strip() for line in status.splitlines() if line and not line.startswith("\t")}
    assert stale - {"check"} == {"init", "dense", "round@r1", "summarize"}, status
