"""``scriptforge run --cdrs FILE.csv``: the CDRs of a CSV file recorded in the local host, so that a
script's ``api.lookup.asrplus`` answers from them as the worker's would from the ASR job's figures.

The file is parsed as ``scriptforge cdr load`` parses it (pipeline/asr/cdr_csv.py): the pipeline
parses and the sandbox only records calls, since the sandbox may not import the pipeline.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TextIO

from pipeline.asr.cdr_csv import Rejected, read_cdrs
from sandbox.local import LocalHost

#: rejected rows described on stderr (all are counted)
MAX_REJECTED_SHOWN = 10


def record_cdrs(host: LocalHost, path: str | Path, warnings: TextIO | None = None) -> int:
    """Records the good rows of ``path`` in ``host``; says on ``warnings`` (stderr) which rows were
    rejected and why, since the run's own output is its Outcome alone. Returns the CDRs recorded;
    UsageError when the file cannot be read."""
    out = sys.stderr if warnings is None else warnings
    recorded, rejected = 0, 0
    for _, row in read_cdrs(path):
        if isinstance(row, Rejected):
            rejected += 1
            if rejected <= MAX_REJECTED_SHOWN:
                print(f"scriptforge: --cdrs {path}: line {row.line} rejected: {row.reason}", file=out)
            continue
        host.record_call(
            row.dest_number,
            row.answered,
            sip_code=row.sip_code,
            duration_s=row.duration_s,
            time_ms=row.time_ms,
        )
        recorded += 1
    if rejected > MAX_REJECTED_SHOWN:
        print(f"scriptforge: --cdrs {path}: {rejected} rows rejected in all", file=out)
    return recorded
