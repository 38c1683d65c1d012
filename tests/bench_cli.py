"""Running ``scriptforge bench ...`` as its user does, for the benchmarks' smoke tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any


def run_bench(
    argv: list[str], broker: str | None = None, timeout: float = 120.0
) -> tuple[dict[str, Any], str]:
    """``python -m pipeline bench ARGV`` (against ``broker``, when it needs one): its one JSON line,
    parsed, and its stderr (the human-readable report). Fails the test on a non-zero exit or any
    other stdout."""
    env = dict(os.environ) if broker is None else dict(os.environ, SCRIPTFORGE_BROKER=broker)
    done = subprocess.run(
        [sys.executable, "-m", "pipeline", "bench", *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1, done.stdout
    return json.loads(lines[0]), done.stderr
