"""Artifacts (lottery.artifacts): digests that catch corrupt bytes, compact saves, atomic writes on a full disk,
malformed inputs named in one line, and a ticket export that checks what it exports."""
from __future__ import annotations

import json
import shutil
import struct
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path

import pytest
import torch

from lottery import artifacts, data, rounds, summary, ticket
from lottery.artifacts import ArtifactError
from lottery.data import DataError
from test_rounds import cfg, fake_round, runs  # noqa: F401 (cfg and runs are fixtures)


def zero_2kb_inside_largest_tensor(path: Path, size: int | None = None) -> int:
    """Overwrite 2 KB with zeros inside the biggest tensor record of a torch zip file (or the one of `size` bytes);
    returns that record's size."""
    with zipfile.ZipFile(path) as z:
        records = [i for i in z.infolist() if "/data/" in i.filename and size in (None, i.file_size)]
        info = max(records, key=lambda i: i.file_size)
    assert info.file_size > 3072, info
    with open(path, "r+b") as f:
        f.seek(info.header_offset + 26)
        name_len, extra_len = struct.unpack("<HH", f.read(4))
        start = info.header_offset + 30 + name_len + extra_len + 1000  # inside the record's data
        f.seek(start)
        assert f.read(2048) != bytes(2048)  # the bytes change
        f.seek(start)
        f.write(bytes(2048))
    return info.file_size


def raw_meta(path: Path) -> dict:
    """The metadata as stored, read by torch.load alone."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's note on validating sparse tensors
        return torch.load(path, weights_only=True)["meta"]


def digest_error(path: Path, name: str) -> str:
    return f"{path}: tensor '{name}' does not match its recorded digest (corrupt); `dvc repro -f` the stage that writes it"


# ---------------------------------------------------------------- digests (issue 16, item 4)


def test_digests_are_recorded_at_save_and_verified_at_load(tmp_path):
    path = tmp_path / "a.pt"
    tensors = {"w": torch.arange(6.0).reshape(2, 3), "m": torch.tensor([True, False]),
               "s": torch.tensor([[0.0, 2.0], [3.0, 0.0]]).to_sparse()}
    artifacts.save(path, tensors, {"kind": "weights"})
    digests = raw_meta(path)["digests"]
    assert digests == {k: artifacts.digest(v) for k, v in tensors.items()}
    assert len(set(digests.values())) == 3 and all(len(d) == 64 for d in digests.values())
    loaded, meta = artifacts.load(path, "weights")
    assert meta == {"kind": "weights"}
    assert torch.equal(loaded["w"], tensors["w"]) and torch.equal(loaded["s"].to_dense(), tensors["s"].to_dense())
    # the digest covers dtype and shape, not only the bytes
    assert artifacts.digest(torch.zeros(4)) != artifacts.digest(torch.zeros(2, 2))
    assert artifacts.digest(torch.zeros(4, dtype=torch.int32)) != artifacts.digest(torch.zeros(4))


def test_corrupt_bytes_inside_a_mask_stop_the_next_round_naming_file_and_tensor(cfg, runs):
    fake_round(runs, "r0")
    path = runs / "r0" / "mask.pt"
    good, _ = artifacts.load(path, "mask")
    size = zero_2kb_inside_largest_tensor(path)
    assert size == good["layers.1.weight"].nbytes == 2 * 100 * 100
    # torch.load alone does not check the zip CRC: it reads a mask with 2048 weights fewer
    bad = torch.load(path, weights_only=True)["tensors"]["layers.1.weight"]
    assert int(good["layers.1.weight"].sum()) - int(bad.sum()) == 2048
    with pytest.raises(ArtifactError) as e:
        rounds.build_stack(cfg, "r1", "r0", runs)
    assert str(e.value) == digest_error(path, "layers.1.weight")


def test_corrupt_mask_stops_the_round_stage_in_one_line(repo):
    path = repo.path / "runs" / "r1" / "mask.pt"
    zero_2kb_inside_largest_tensor(path)
    p = repo.run(sys.executable, "stages/round.py", "r2", "r1", check=False)
    assert p.returncode == 2, p.stderr
    assert p.stderr.strip() == "error: " + digest_error(Path("runs/r1/mask.pt"), "layers.1.weight")


def test_an_artifact_without_digests_is_refused(tmp_path):
    path = tmp_path / "old.pt"
    torch.save({"meta": {"kind": "mask", "shapes": {"w": [2]}}, "tensors": {"w": torch.ones(2)}}, path)
    with pytest.raises(ArtifactError, match=r"old\.pt: records no tensor digests"):
        artifacts.load(path, "mask")


# ---------------------------------------------------------------- prepared data as an artifact


def prepared(n: int = 300, d: int = 40) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, d, generator=g)
    y = x[:, :10].argmax(1)
    return {"x_train": x[:200], "y_train": y[:200], "x_val": x[200:250], "y_val": y[200:250],
            "x_test": x[250:], "y_test": y[250:], "mean": torch.zeros(1), "std": torch.ones(1)}


def test_prepared_data_is_an_artifact_with_digests(tmp_path):
    path = tmp_path / "prepared.pt"
    data.save_prepared(prepared(), path)
    tensors, meta = artifacts.load(path, "prepared")
    assert meta == {"kind": "prepared"} and set(tensors) == set(data.PREPARED)
    # x_train was a view of 300 examples: stored compact, 200 x 40 floats
    assert tensors["x_train"].untyped_storage().nbytes() == 200 * 40 * 4
    size = zero_2kb_inside_largest_tensor(path)
    assert size == 200 * 40 * 4
    with pytest.raises(DataError) as e:
        data.load_prepared(path)
    assert str(e.value) == digest_error(path, "x_train")


@pytest.mark.parametrize("key, value, message", [
    ("y_val", None, "'y_val' is missing"),
    ("y_train", torch.zeros(200), "'y_train' is torch.float32 (200,): expected int64, (200,)"),
    ("y_test", torch.zeros(49, dtype=torch.int64), "'y_test' is torch.int64 (49,): expected int64, (50,)"),
    ("x_test", torch.zeros(50, 39), "'x_test' is torch.float32 (50, 39): expected uint8 or float, examples (40,)"),
    ("x_val", torch.zeros(50, 40, dtype=torch.int64), "'x_val' is torch.int64 (50, 40)"),
    ("std", torch.ones(3), "'std' is torch.float32 (3,): expected float, broadcastable to (40,)"),
])
def test_malformed_prepared_data_names_file_and_tensor(tmp_path, key, value, message):
    path = tmp_path / "prepared.pt"
    tensors = prepared()
    if value is None:
        del tensors[key]
    else:
        tensors[key] = value
    artifacts.save(path, tensors, {"kind": "prepared"})  # as a buggy or older prepare would
    with pytest.raises(DataError) as e:
        data.load_prepared(path)
    assert str(e.value).startswith(f"{path}: prepared tensor {message}")
    with pytest.raises(DataError, match="prepared tensor"):
        data.save_prepared(tensors, tmp_path / "again.pt")
    assert not (tmp_path / "again.pt").exists()


# ---------------------------------------------------------------- compact saves (issue 16, item 6)


def test_a_view_is_saved_compact(tmp_path):
    stack = torch.arange(6 * 5000, dtype=torch.float32).reshape(6, 5000)
    artifacts.save(tmp_path / "a.pt", {"w": stack[2:4]}, {"kind": "weights"})
    loaded, _ = artifacts.load(tmp_path / "a.pt", "weights")
    assert torch.equal(loaded["w"], stack[2:4])
    assert loaded["w"].untyped_storage().nbytes() == 2 * 5000 * 4  # not the 6 rows of the stack
    assert (tmp_path / "a.pt").stat().st_size < 2 * 5000 * 4 + 2048


def test_a_round_writes_only_the_bytes_it_needs(cfg, tmp_path):
    path = tmp_path / "prepared.pt"
    data.save_prepared(prepared(), path, data.prepared_params(cfg))
    runs = tmp_path / "runs"
    rounds.init(cfg, runs / "init")
    quiet = lambda *_: None  # noqa: E731
    rounds.run_round(cfg, "r0", "init", runs, path, log=quiet)
    rounds.run_round(cfg, "r1", "r0", runs, path, log=quiet)
    n_weights = 2 * (100 * 40 + 100 + 100 * 100 + 100 + 10 * 100 + 10)  # mlp-mnist1d, 2 trials
    n_mask = 2 * (100 * 40 + 100 * 100 + 10 * 100)
    want = {"model.pt": ("weights", 4 * n_weights), "mask.pt": ("mask", n_mask),
            "controls.pt": ("controls", 2 * (4 * n_weights + n_mask))}  # reinit and random
    for name, (kind, nbytes) in want.items():
        tensors, _ = artifacts.load(runs / "r1" / name, kind)
        assert sum(v.untyped_storage().nbytes() for v in tensors.values()) == nbytes, name
        assert all(v.untyped_storage().nbytes() == v.nbytes for v in tensors.values()), name
        size = (runs / "r1" / name).stat().st_size
        assert nbytes < size < nbytes + 2048 + 512 * len(tensors), (name, size, nbytes)


# ---------------------------------------------------------------- atomic writes on a full disk (issue 16, item 8)


def in_small_tmpfs(repo, folder: str, options: str, command: str) -> subprocess.CompletedProcess:
    """Run `command` in `repo` with `folder` on a fresh tmpfs (a private mount namespace: no root needed)."""
    probe = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "true"], capture_output=True)
    if shutil.which("unshare") is None or probe.returncode != 0:
        pytest.skip("needs `unshare` and user namespaces to mount a small tmpfs")
    script = (f"mount -t tmpfs -o {options} tmpfs {folder} || exit 99; {command}; echo \"rc=$?\"; "
              f"ls -A {folder}; cat {folder}/* | wc -c")
    p = repo.run("unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script, check=False)
    assert p.returncode == 0 and "rc=" in p.stdout, p.stdout + p.stderr
    return p


def test_full_disk_stops_a_round_in_one_line_leaving_no_partial_file(repo, template):
    r2 = template.path / "runs" / "r2"
    pt = ["controls.pt", "early_bird.pt", "mask.pt", "model.pt"]
    pages = sum(-(-(r2 / f).stat().st_size // 4096) for f in pt)  # room for the .pt files, none for metrics.json
    command = f"{sys.executable} stages/round.py r2 r1 >/dev/null 2>err.txt"
    p = in_small_tmpfs(repo, "runs/r2", f"size={4096 * pages}", command)
    err = (repo.path / "err.txt").read_text()
    need = (r2 / "metrics.json").stat().st_size
    assert err.splitlines()[-1] == f"error: runs/r2/metrics.json: no space left on device ({need} bytes needed)", err
    assert "Traceback" not in err
    rc, *listing, total = p.stdout.split()
    assert rc == "rc=2" and listing == pt  # no metrics.json, empty or partial, and no temporary file
    assert int(total) == sum((r2 / f).stat().st_size for f in pt)


@pytest.mark.parametrize("options, message", [
    ("size=8k", "metrics/summary.json: no space left on device ({n} bytes needed)"),
    ("ro,size=64k", "metrics/rounds.csv: read-only file system"),
])
def test_full_or_read_only_disk_stops_summarize_in_one_line(repo, template, options, message):
    p = in_small_tmpfs(repo, "metrics", options, f"{sys.executable} stages/summarize.py >/dev/null 2>err.txt")
    err = (repo.path / "err.txt").read_text()
    n = (template.path / "metrics" / "summary.json").stat().st_size
    assert err == "error: " + message.format(n=n) + "\n"
    rc, *listing, _ = p.stdout.split()
    assert rc == "rc=2" and not [f for f in listing if f.endswith(".tmp") or f == "summary.json"], listing


# ---------------------------------------------------------------- malformed metrics.json (issue 16, item 8)


@pytest.mark.parametrize("text, problem", [
    ('{"round": "r0", "index": 0', "corrupt metrics file"),
    ('[1, 2]', "malformed metrics file (not a JSON object)"),
    ('{"round": "r0", "index": 0, "curve": []}', "malformed metrics file (no 'networks')"),
    ('{"round": "r0", "index": 0, "networks": [{"variant": "ticket"}], "curve": []}',
     "malformed metrics file (networks[0] is not an object with trial, seed"),
])
def test_malformed_metrics_json_names_the_file(tmp_path, text, problem):
    path = tmp_path / "r0" / "metrics.json"
    path.parent.mkdir()
    path.write_text(text)
    with pytest.raises(ArtifactError) as e:
        summary.collect(tmp_path, ["r0"])
    assert str(e.value).startswith(f"{path}: {problem}") and "\n" not in str(e.value)
    with pytest.raises(ArtifactError, match=r"r1/metrics.json: missing"):
        summary.collect(tmp_path, ["r1"])


# ---------------------------------------------------------------- ticket export (issue 16, item 8)


def test_ticket_export_refuses_a_mask_moved_from_another_round(runs, tmp_path):
    fake_round(runs, "r1", seed=1)
    fake_round(runs, "r2", seed=2)
    (runs / "r1" / "mask.pt").replace(runs / "r2" / "mask.pt")
    with pytest.raises(ArtifactError) as e:
        ticket.export(runs, "r2", tmp_path / "ticket.pt", tmp_path / "unread.pt")
    assert str(e.value) == f"{runs / 'r2' / 'mask.pt'}: metadata round='r1' does not match this run's 'r2'"
    assert not (tmp_path / "ticket.pt").exists()


def test_ticket_export_refuses_another_experiments_round(runs, tmp_path):
    fake_round(runs, "r1")
    path = runs / "r1" / "model.pt"
    weights, meta = artifacts.load(path, "weights")
    artifacts.save(path, weights, {**meta, "seeds": [0, 1]})
    with pytest.raises(ArtifactError, match=r"model.pt: metadata seeds=\[0, 1\] does not match this run's \[10, 11\]"):
        ticket.export(runs, "r1", tmp_path / "ticket.pt", tmp_path / "unread.pt")


def test_exported_ticket_has_digests(runs, tmp_path, template):
    fake_round(runs, "r1")
    path = tmp_path / "ticket.pt"
    ticket.export(runs, "r1", path, template.path / "data" / "prepared.pt")
    tensors, _ = artifacts.load(path, "ticket")
    assert set(raw_meta(path)["digests"]) == set(tensors) and len(tensors) == 3 * 3 + 3 * 2 + 2  # masks; θ0, trained; mean, std
    assert ticket.load_ticket(path)(torch.randn(3, 40)).shape == (3, 10)
    zero_2kb_inside_largest_tensor(path, size=100 * 100)  # the bool mask of layers.1 (trial 0)
    with pytest.raises(ArtifactError) as e:
        ticket.load_ticket(path)
    assert str(e.value) == digest_error(path, "mask/layers.1.weight")


def test_exported_ticket_takes_raw_inputs_normalised_as_in_training(template, tmp_path):
    """The ticket records data/prepared.pt's mean and std and applies them: on the raw test set it scores exactly
    the final test accuracy its round recorded (issue 24)."""
    raw, _ = artifacts.load(template.path / "data" / "prepared.pt", "prepared")
    path = template.path / "metrics" / "ticket.pt"
    net = ticket.load_ticket(path)
    assert torch.equal(net.mean, raw["mean"]) and torch.equal(net.std, raw["std"])
    _, meta = artifacts.load(path, "ticket")
    recorded = json.loads((template.path / "runs" / meta["round"] / "metrics.json").read_text())["networks"]
    want = next(n["final_test_accuracy"] for n in recorded if n["variant"] == "ticket" and n["trial"] == 0)
    with torch.no_grad():
        correct = (net(raw["x_test"]).argmax(1) == raw["y_test"]).double().mean().item()
    assert round(100 * correct, 4) == want
    tensors, meta = artifacts.load(path, "ticket")  # an export from before the normalisation was recorded
    artifacts.save(tmp_path / "old.pt", {k: v for k, v in tensors.items() if not k.startswith("input/")}, meta)
    with pytest.raises(ArtifactError, match="old.pt: no input normalisation recorded"):
        ticket.load_ticket(tmp_path / "old.pt")
