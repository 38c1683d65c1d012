"""``python -m tests.chaos --profile long [--only EXPERIMENT] [--json FILE]``: the chaos suite in one
command, printing the report as a table (and writing it as JSON). Exit status 1 when any experiment
has a violation or failed to run, else 0 (faults alone do not fail it: they are figures)."""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from .experiments import EXPERIMENTS
from .profiles import PROFILES
from .report import render, write_json
from .suite import run_suite


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tests.chaos", description=__doc__)
    p.add_argument("--profile", choices=sorted(PROFILES), default="short")
    p.add_argument(
        "--only", action="append", choices=list(EXPERIMENTS), help="run only this experiment (repeatable)"
    )
    p.add_argument("--json", type=Path, help="also write the report as JSON to this file")
    p.add_argument("--rate", type=float, help="requests/s of the normal load (default: the profile's)")
    p.add_argument("--workdir", type=Path, help="where the broker, worker logs and report go (kept)")
    p.add_argument("--list", action="store_true", help="describe the experiments and exit")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.list:
        for experiment in EXPERIMENTS.values():
            print(f"{experiment.name}\n    " + experiment.doc.replace("\n", "\n    ") + "\n")
        return 0
    profile = PROFILES[args.profile].with_rate(args.rate)
    names = args.only or list(EXPERIMENTS)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="scriptforge-chaos-"))
    workdir.mkdir(parents=True, exist_ok=True)
    collected = run_suite(names, profile, workdir)
    print(render(collected.results))
    if args.json:
        write_json(collected.results, args.json)
    print(f"report: {collected.path}; worker logs under {workdir}", file=sys.stderr)
    if collected.ok and args.workdir is None:
        shutil.rmtree(workdir / "broker", ignore_errors=True)
    return 0 if collected.ok else 1


if __name__ == "__main__":
    sys.exit(main())
