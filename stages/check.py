"""check: validate the whole params.yaml, record the raw data prepare will read -> data/raw.json.

Runs first, on every repro (always_changed), and imports no torch (except for an image folder:
lottery.folder). A bad params.yaml fails here, naming the key, before any stage deletes its outputs; a
raw file replaced or edited changes data/raw.json (path, size, sha256 of each file; mnist1d: generator
version and arguments; an image folder: the digest of every file's relative path and size), so
`prepare` reruns. Your own network's source files (model.name 'package.module:factory') are
digested likewise into data/code.json, on which the stages that build it depend. Resume points of rounds
that have finished since they were saved (trained, or restored from the run-cache) are deleted.
"""
import argparse
import json
from pathlib import Path

from lottery import config, raw, resume
from lottery.cli import run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--out", default="data/raw.json")
    ap.add_argument("--code", default="data/code.json", help="the source files of your own network, digested")
    ap.add_argument("--resume-dir", default=".dvc/tmp/lottery-resume", help="swept of finished rounds' resume points")
    ap.add_argument("--runs", default="runs")
    args = ap.parse_args()
    cfg = config.load(args.params, complete=True)
    record = raw.describe(cfg.data.dataset, cfg.data.root)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    code = raw.describe_code(cfg.model.name)
    Path(args.code).parent.mkdir(parents=True, exist_ok=True)
    Path(args.code).write_text(json.dumps(code, indent=1, sort_keys=True) + "\n")
    if "manifest" in record:
        what = "{train} train / {val} val images".format(**record["manifest"]) + f" in {len(record['classes'])} classes"
    else:
        what = (f"{len(record['files'])} files" if "files" in record else f"loader, {len(record['code'])} source files"
                if "code" in record else "generator " + record["generator"]["version"])
    print(f"[check] {args.params} valid; {cfg.data.dataset}: {what} -> {out}")
    for f in resume.sweep(Path(args.resume_dir), Path(args.runs)):
        print(f"[check] deleted {f}: its round has finished since (or it is a leftover)")


if __name__ == "__main__":
    run(main)
