"""An experiment or git revision of this repository and the files it holds, for every command that takes
one (`compare`, `pool`, `instability`, `ticket`): `Revision(name)` resolves it once, `read` and `get` its files
(git, else the DVC cache, else the default remote), and every failure is a RevisionError naming the
revision or the file.

Resolution is git's own first (HEAD, a branch, a tag, a sha or its prefix, HEAD~2), then a DVC experiment
name. Not DVC's `resolve_rev`: while a `dvc exp run` that was killed has left its refs behind (HEAD
detached, refs/exps/exec/EXEC_BASELINE), DVC reads HEAD as that baseline, not the commit checked out.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable

from dvc.exceptions import DvcException

from .config import ROUND_NAME, LotteryError

HINT = "dvc exp show lists the experiments, git log the commits"


class RevisionError(LotteryError, ValueError):
    """A revision that does not exist here, or a file it does not hold."""


def head(repo: str | Path = ".") -> str | None:
    """The sha of the commit checked out in `repo`, None in a repository with no commit yet (`git init`, then
    `dvc repro`); a RevisionError outside a git repository."""
    from scmrepo.exceptions import SCMError
    from scmrepo.git import Git

    try:
        scm = Git(str(repo))
        with scm:
            return None if scm.no_commits else scm.get_rev()
    except SCMError as e:
        raise RevisionError(f"{Path(repo).resolve()}: {e}") from None


def resolve(name: str, repo: str | Path = ".") -> str:
    """The commit sha of experiment or git revision `name` in `repo`; a RevisionError naming it otherwise."""
    from scmrepo.exceptions import SCMError
    from scmrepo.git import Git

    try:
        scm = Git(str(repo))
        scm.get_rev()
    except SCMError as e:
        raise RevisionError(f"{Path(repo).resolve()}: {e} (an experiment or revision needs a git repository with a "
                            "commit)") from None
    with scm:
        if not name.strip():
            raise RevisionError(f"{name!r} is not a revision name ({HINT})")
        try:
            return scm.resolve_commit(name).hexsha
        except SCMError:
            pass
        except Exception:  # pygit2 resolves `HEAD^{tree}`, `HEAD:params.yaml` to objects that are not commits
            raise RevisionError(f"'{name}' is not a commit ({HINT})") from None
        if not name.startswith("refs/"):
            from dvc.repo.experiments.utils import AmbiguousExpRefInfo, resolve_name

            try:
                ref = resolve_name(scm, name).get(name)
            except AmbiguousExpRefInfo:
                raise RevisionError(f"experiment name '{name}' is ambiguous: several baselines have one; "
                                    "give the experiment's commit (dvc exp show --sha)") from None
            if ref:
                return scm.get_ref(str(ref))
    raise RevisionError(f"'{name}' is neither an experiment nor a git revision of this repository ({HINT})")


def parse(data: bytes | str, path: str, rev: str, parser: Callable[[Any], Any], kind: type | None = None) -> Any:
    """`parser(data)` of a file `path` of revision `rev` (yaml.safe_load, json.loads, a CSV reader), checked to be
    a `kind` if given: a file of another commit is not trusted, so a malformed one is a RevisionError naming it."""
    try:
        out = parser(data)
    except Exception as e:  # each parser fails its own way (YAMLError, JSONDecodeError, ParserError, UnicodeError)
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise RevisionError(f"{path} of '{rev}' is malformed ({type(e).__name__}{': ' + first if first else ''})") from None
    if kind is not None and not isinstance(out, kind):
        raise RevisionError(f"{path} of '{rev}' is malformed (a {type(out).__name__}, expected a {kind.__name__})")
    return out


def check_round(round_name: str, rev: str) -> str:
    """`round_name` if it is a round name (r<digits>), else a RevisionError naming it: no other string reaches a path."""
    if not re.fullmatch(ROUND_NAME, round_name):
        raise RevisionError(f"--round {round_name!r} is not a round name of '{rev}' (r<digits>: r0 is dense, "
                            "r1 the first pruned round)")
    return round_name


def _unreadable(rev: str, e: Exception) -> RevisionError:
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return RevisionError(f"DVC cannot read the pipeline of '{rev}': {first}")


class Revision:
    """One experiment or git revision, resolved once (`sha`); its files through DVC's file system."""

    def __init__(self, name: str, repo: str | Path = "."):
        from dvc.api import DVCFileSystem

        self.name, self.sha = name, resolve(name, repo)
        self.fs = DVCFileSystem(str(repo), rev=self.sha)

    def _missing(self, path: str, why: str) -> RevisionError:
        if not self.fs.exists(path):
            return RevisionError(f"{path} does not exist in '{self.name}'" + (f" ({why})" if why else ""))
        if not getattr(self.fs.info(path).get("dvc_info", {}).get("entry"), "hash_info", None):
            return RevisionError(f"{path} was never computed in '{self.name}' (no dvc.lock entry: was it reproduced "
                                 "and committed?)")
        return RevisionError(f"{path} of '{self.name}' is tracked, but its data is in neither the DVC cache nor "
                             "the default remote (dvc pull, or dvc exp pull <remote> <experiment>)")

    def read(self, path: str, why: str = "") -> bytes:
        """The bytes of the file `path`; `why` says what its absence means (in the error)."""
        try:
            return self.fs.read_bytes(path)
        except IsADirectoryError:
            raise RevisionError(f"{path} is a folder in '{self.name}', not a file") from None
        except FileNotFoundError:
            raise self._missing(path, why) from None
        except DvcException as e:  # DVC cannot read the pipeline of that commit (a malformed dvc.yaml or params.yaml)
            raise _unreadable(self.name, e) from None

    def round_file(self, round_name: str, file: str) -> bytes:
        """runs/<round_name>/<file>, naming a malformed round or one this revision did not run."""
        return self.read(f"runs/{check_round(round_name, self.name)}/{file}", f"round {round_name} is not in "
                         f"'{self.name}': its prune.rounds is smaller, or it never ran that round")

    def get(self, path: str, dst: Path, why: str = "") -> None:
        """Copy the file or folder `path` to `dst`."""
        try:
            self.fs.get(path, str(dst), recursive=self.fs.isdir(path))
        except FileNotFoundError:
            raise self._missing(path, why) from None
        except DvcException as e:
            raise _unreadable(self.name, e) from None
