"""``scriptforge worker`` whose process dies like an OOM-killed one on one request: test-only.

Usage: ``python tests/integration/crashing_worker.py CALL_ID worker [worker options]``.

test_worker_crash.py needs a request that kills its *worker* process (not just a sandbox process,
which the pool replaces in place), and the shipped worker must not contain a switch for that. So this
module patches ``SandboxPool.run_batch`` in its own process only, then runs the normal CLI entry
point: when the request with ``CALL_ID`` is about to run, the process exits with status 137 at once
(``os._exit``: no cleanup, no commit, no reply, as after a SIGKILL). The requests before it in the same
batch run first, so their replies are not held back behind the poison.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence

from pipeline.cli import main
from sandbox.pool import SandboxPool
from sandbox.types import Invocation, Outcome, Script

#: the status of a process killed by SIGKILL as a shell reports it (128 + 9), e.g. by the OOM killer
OOM_KILLED = 137


def poison(call_id: str) -> None:
    """Make this process exit ``OOM_KILLED`` when the run of ``call_id`` is about to start."""
    run_batch = SandboxPool.run_batch

    async def run_batch_or_die(
        self: SandboxPool,
        script: Script,
        invocations: Sequence[Invocation],
        on_outcome: Callable[[int, Outcome], None],
    ) -> int:
        for index, invocation in enumerate(invocations):
            if invocation.call_id == call_id:
                if index == 0:
                    os._exit(OOM_KILLED)
                # fewer ended than submitted: the handler submits the rest (the poison first) again
                return await run_batch(self, script, invocations[:index], on_outcome)
        return await run_batch(self, script, invocations, on_outcome)

    SandboxPool.run_batch = run_batch_or_die  # type: ignore[method-assign]


if __name__ == "__main__":
    poison(sys.argv[1])
    sys.exit(main(sys.argv[2:]))
