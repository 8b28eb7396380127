"""The README and docs/ as tests (issue 24): every README command block runs, in order, in a fresh clone with
tiny settings, and what the README says about the output holds; every other command block names the test that
runs it (`# tested: tests/<file>.py::<test>`), and that test exists."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from conftest import ROOT, TINY, Repo, env_for, make_repo, ran

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
MARK = re.compile(r"^# tested: (\S+)::(\w+)$", re.M)
# The README's settings -> the tiny ones the test runs (TINY's mnist1d experiment; everything else verbatim)
TINY_SETTINGS = {"train.iterations=1000": "train.iterations=100"}
WIDTH = 120


def blocks(path: Path, lang: str = "bash") -> list[str]:
    """The fenced code blocks of one language in a Markdown file, in order."""
    return re.findall(rf"^```{lang}\n(.*?)^```$", path.read_text(), re.M | re.S)


def commands(block: str) -> list[str]:
    return [line for line in block.splitlines() if line.strip() and not line.startswith("#")]


def readme_sample(after: str) -> list[str]:
    """The lines of the README's first `text` block that follows the line containing `after`."""
    text = (ROOT / "README.md").read_text()
    return re.search(r"^```text\n(.*?)^```$", text[text.index(after):], re.M | re.S)[1].splitlines()


def test_every_command_block_is_run_or_names_an_existing_test():
    unmarked = []
    for path in DOCS:
        for block in blocks(path):
            marks = MARK.findall(block)
            for file, name in marks:
                source = ROOT / file
                assert source.is_file() and re.search(rf"^def {name}\(", source.read_text(), re.M), \
                    f"{path.name}: `# tested: {file}::{name}` names no test"
            if not marks:
                assert path.name == "README.md", f"{path.relative_to(ROOT)}: a bash block names no test:\n{block}"
                unmarked.append(block)
    assert len(unmarked) >= 2  # the README blocks test_readme_in_a_fresh_clone runs


def test_every_relative_link_of_the_docs_leads_to_a_file_and_heading():
    for path in DOCS:
        for target in re.findall(r"\]\(([^)#:\s]*)(?:#([^)\s]*))?\)", path.read_text()):
            file = (path.parent / target[0]).resolve() if target[0] else path
            assert file.exists(), f"{path.name}: link to {target[0]} leads nowhere"
            if target[1] and file.suffix == ".md":
                anchors = {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-")
                           for h in re.findall(r"^#+ (.*)$", file.read_text(), re.M)}
                assert target[1] in anchors, f"{path.name}: no heading #{target[1]} in {file.name}"


def _table(out: str) -> list[list[str]]:
    lines = out.strip("\n").splitlines()
    assert lines and max(map(len, lines)) <= WIDTH and "…" not in out, out
    return [line.split() for line in lines]


def _view_fits(out: str, rows: list[str]) -> None:
    """`python -m lottery.show`: at most 120 columns, nothing folded, the README sample's columns only."""
    table = _table(out)
    sample = readme_sample("python -m lottery.show` prints")[0].split()
    assert table[0][0] == "Experiment" and set(table[0]) <= set(sample), (table[0], sample)
    assert [row[0] for row in table[1:]] == rows, out
    assert {"dense_acc", "ticket.win"} <= set(table[0]), out


def test_readme_in_a_fresh_clone(tmp_path):
    """Each command of the README's runnable blocks, in order, in a fresh clone: no dvc.lock and no results
    committed (the template fixture has both, so it is not used here)."""
    repo = make_repo(tmp_path / "repo", env_for(tmp_path), TINY)
    (repo.path / ".venv").symlink_to(Path(sys.prefix))  # what `make setup` leaves: `source .venv/bin/activate`
    out = {}
    for block in blocks(ROOT / "README.md"):
        if MARK.search(block):
            continue
        for cmd in commands(block):
            tiny = cmd
            for readme, small in TINY_SETTINGS.items():
                tiny = tiny.replace(readme, small)
            p = subprocess.run(["bash", "-c", f"source .venv/bin/activate && {tiny}"], cwd=repo.path, env=repo.env,
                               capture_output=True, text=True)
            assert p.returncode == 0, f"{tiny}\n{p.stdout}\n{p.stderr}"
            out.setdefault(cmd.split("#")[0].strip(), []).append(p)
    first = out["dvc exp run -n quick -S train.iterations=1000 -S prune.rounds=3 -S prune.rate=0.5"][0]
    second = out["dvc exp run -n rate30 -S prune.rate=0.3 -S train.iterations=1000 -S prune.rounds=3"][0]
    # the first run of a fresh clone warns once per output (nothing to restore), the next one does not
    assert "WARNING: No file hash info found for" in first.stderr and "It won't be created." in first.stderr
    lock = yaml.safe_load((repo.path / "dvc.lock").read_text())
    outs = sum(len(stage.get("outs", [])) for stage in lock["stages"].values())
    assert first.stderr.count("No file hash info found") == outs, first.stderr
    assert "No file hash info found" not in second.stderr, second.stderr
    assert ran(second.stdout) == ["round@r1", "round@r2", "round@r3", "summarize"]  # quick's data, θ0, dense reused
    # progress at least every 10% of a round (100 iterations: every 10), then one line per variant
    progress = re.findall(r"^\[r3\] it +(\d+)/100 ", first.stdout, re.M)
    assert progress == [str(i) for i in range(10, 101, 10)], first.stdout
    for variant in ("ticket", "reinit", "random"):
        assert re.search(rf"^\[r3\] {variant}: +\d+\.\d\d% remaining  test acc ", first.stdout, re.M), first.stdout
    for name in ("report.md", "accuracy.png", "early_stop.png", "summary.json", "rounds.json", "rounds.csv",
                 "ticket.pt"):
        assert (repo.path / "metrics" / name).is_file(), name
    assert all((repo.path / "runs" / r / "mask.pt").is_file() for r in ("r0", "r1", "r2", "r3"))

    shows = out["python -m lottery.show"]
    _view_fits(shows[0].stdout, ["workspace", "main", "quick"])  # after one experiment
    _view_fits(shows[1].stdout, ["workspace", "main", "rate30", "quick"])  # after two
    assert "prune.rate" in _table(shows[1].stdout)[0]  # a param that differs between the rows
    main_row = _table(shows[0].stdout)[2]
    assert main_row[1] == "!"  # the commit has no results
    diff = out["dvc metrics diff quick rate30"][0].stdout
    assert "metrics/summary.json" in diff and "ticket.win" in diff, diff
    assert "quick" in (repo.path / "plots" / "index.html").read_text()
    assert "plots/" not in repo.run("git", "status", "--porcelain").stdout  # git-ignored, as lottery.pool's output
    ignored = repo.run("git", "check-ignore", "plots/index.html", "metrics-pooled/summary.json").stdout.split()
    assert ignored == ["plots/index.html", "metrics-pooled/summary.json"]
    compare = out["python -m lottery.compare quick rate30 --round r2"][0].stdout
    assert "layers.0.weight" in compare and "trial 0:" in compare, compare
    all_commits = out["python -m lottery.show -A"][0].stdout
    _view_fits(all_commits, ["workspace", "main", "quick"])  # rate30 removed, quick applied
    assert yaml.safe_load((repo.path / "params.yaml").read_text())["prune"]["rate"] == 0.5


def test_after_make_repro_in_a_fresh_clone_the_view_fits(template, tmp_path):
    """`make repro` in a fresh clone = set-up, then `dvc repro`: the template is exactly a `dvc repro` of tiny
    settings, committed afterwards; taking that commit back gives the state `make repro` leaves."""
    repo = Repo(tmp_path / "repo", env_for(tmp_path))
    shutil.copytree(template.path, repo.path, symlinks=True)
    repo.run("git", "reset", "-q", "HEAD~1")
    assert repo.run("git", "ls-files", "dvc.lock").stdout == "" and (repo.path / "dvc.lock").is_file()
    _view_fits(repo.run(sys.executable, "-m", "lottery.show").stdout, ["workspace", "main"])
    repo.env["COLUMNS"] = "100000"  # plain `dvc exp show`, nothing folded: why the README has lottery.show
    assert max(map(len, repo.dvc("exp", "show", "--no-pager").stdout.splitlines())) > 1000
