"""Each stage depends on exactly the project code it runs, so editing a module reruns exactly
the stages that import it (DVC would otherwise restore results of the old code from its cache)."""
from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import yaml
from conftest import ROOT, run_queue

PACKAGES = ("lottery", "stages")


def _module_file(root: Path, dotted: str) -> Path | None:
    path = root.joinpath(*dotted.split("."))
    if path.with_suffix(".py").is_file():
        return path.with_suffix(".py")
    return None


def imports(root: Path, file: Path) -> set[Path]:
    """Project modules imported by `file`, anywhere in it (function-level imports included)."""
    package = file.relative_to(root).parent.as_posix().replace("/", ".")
    found = set()
    for node in ast.walk(ast.parse(file.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            if name.split(".")[0] in PACKAGES and (f := _module_file(root, name)):
                found.add(f)
    return found


def closure(root: Path, script: Path) -> set[str]:
    """The script and every project module it imports, transitively (repo-relative paths)."""
    seen, todo = set(), [script]
    while todo:
        f = todo.pop()
        if f in seen:
            continue
        seen.add(f)
        todo += imports(root, f)
    return {f.relative_to(root).as_posix() for f in seen}


def stage_code(root: Path) -> dict[str, tuple[set[str], set[str]]]:
    """stage -> (code deps listed in dvc.yaml, code it really runs)."""
    stages = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
    out = {}
    for name, st in stages.items():
        st = st.get("do", st)
        module = re.match(r"python -m (stages\.\w+)", st["cmd"]).group(1)
        listed = {d for d in st.get("deps", []) if d.endswith(".py")}
        out[name] = (listed, closure(root, _module_file(root, module)))
    return out


def test_init_files_hold_no_code():
    # the packages' __init__.py are left out of the deps: they must stay docstring-only
    for pkg in PACKAGES:
        body = ast.parse((ROOT / pkg / "__init__.py").read_text()).body
        assert all(isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant) for n in body), pkg


def test_every_stage_runs_as_a_module_of_its_checkout():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for name, st in stages.items():
        assert re.match(r"python -m stages\.\w+( |$)", st.get("do", st)["cmd"]), name


def test_stage_code_deps_are_exactly_the_modules_each_stage_imports():
    for name, (listed, real) in stage_code(ROOT).items():
        assert listed == real, f"{name}: missing {sorted(real - listed)}, not imported {sorted(listed - real)}"


def test_import_graph_sees_function_level_and_relative_imports(tmp_path):
    (tmp_path / "lottery").mkdir()
    (tmp_path / "stages").mkdir()
    (tmp_path / "stages" / "s.py").write_text("from lottery import a\n")
    (tmp_path / "lottery" / "a.py").write_text("from .b import f\ndef g():\n    from . import c\n")
    (tmp_path / "lottery" / "b.py").write_text("import os\n")
    (tmp_path / "lottery" / "c.py").write_text("from lottery.d import x\n")
    (tmp_path / "lottery" / "d.py").write_text("")
    (tmp_path / "lottery" / "e.py").write_text("")
    assert closure(tmp_path, tmp_path / "stages" / "s.py") == {
        "stages/s.py", "lottery/a.py", "lottery/b.py", "lottery/c.py", "lottery/d.py"}


def test_editing_a_module_changes_exactly_the_stages_that_import_it(repo):
    graph = stage_code(repo.path)

    def changed() -> set[str]:  # stages dvc status reports, less `check`, which always runs
        status = repo.dvc("status").stdout
        return {line.split(":")[0].strip() for line in status.splitlines() if line and not line.startswith("\t")} - {"check"}

    assert changed() == set()
    for module in ("lottery/summary.py", "lottery/pruning.py"):
        with open(repo.path / module, "a") as f:
            f.write("\n# edited\n")
        status = changed()
        # (the transfer stages foreach over transfer.stages, {} while transfer.source is '': not in this pipeline)
        expect = {s for s, (_, real) in graph.items() if module in real} - {"transfer", "transfer-source"}
        rounds = {s for s in status if s.startswith("round@")}
        got = (status - rounds) | ({"round"} if rounds else set())
        assert got == expect, (module, status)
        if "round" in expect:
            assert rounds == {"round@r1", "round@r2"}, status  # r0 is the `dense` stage, in `expect` on its own
        repo.run("git", "checkout", module)


def test_a_queued_experiment_runs_its_own_code_not_the_workspace(repo):
    summary = repo.path / "lottery" / "summary.py"
    original = summary.read_text()
    summary.write_text(original + '\nprint("CODE-OF-THE-QUEUED-COMMIT")\n')
    repo.commit("marker A")
    repo.dvc("exp", "run", "--queue", "-n", "queued", "-S", "summary.tolerance=0.4")
    summary.write_text(original + '\nprint("CODE-EDITED-AFTER-QUEUEING")\n')  # uncommitted workspace edit
    status = run_queue(repo)
    logs = repo.dvc("queue", "logs", "queued").stdout
    assert "Success" in status, status + logs
    assert "CODE-OF-THE-QUEUED-COMMIT" in logs and "CODE-EDITED-AFTER-QUEUEING" not in logs, logs
