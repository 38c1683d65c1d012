"""The ASR job as a child process (``scriptforge asr``), for ``scriptforge dev``, tests and benchmarks.

A process of its own keeps Faust's event loop, its aiokafka clients and its signal handlers away from
the caller's (the worker runs its own loop, on uvloop), and stopping it is a SIGTERM, after which Faust
commits what it processed.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable

from pipeline.errors import ConfigError
from pipeline.settings import Settings

#: the line ``scriptforge asr`` prints once it owns its partitions and has restored its table
READY_PREFIX = "ready: ASR job"


class AsrJobProcess:
    """A running ``scriptforge asr``. Its output lines go to ``output`` (default: this process's
    stdout), each as it comes."""

    def __init__(
        self,
        settings: Settings,
        *,
        log_level: str = "warning",
        output: Callable[[str], None] | None = None,
    ) -> None:
        env = {**os.environ, **settings.to_env()}
        self._output = output if output is not None else _print
        self._ready = threading.Event()
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "pipeline", "asr", "--log-level", log_level],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
        )
        self._reader = threading.Thread(target=self._read, name="scriptforge-asr-output", daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int:
        return self._proc.pid

    def running(self) -> bool:
        return self._proc.poll() is None

    def wait_ready(self, timeout: float) -> None:
        """Returns once the job has said it is ready; ConfigError when it exited first or is not ready
        within ``timeout`` seconds (its output says why)."""
        step = 0.1
        waited = 0.0
        while not self._ready.wait(step):
            waited += step
            if not self.running():
                status = self._proc.returncode
                raise ConfigError(f"the ASR job exited with status {status} before it was ready")
            if waited >= timeout:
                raise ConfigError(f"the ASR job was not ready within {timeout:.0f} s")

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM, then SIGKILL after ``timeout`` seconds; the exit status."""
        if self.running():
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._reader.join(5)
        return self._proc.returncode

    def __enter__(self) -> AsrJobProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _read(self) -> None:
        assert self._proc.stdout is not None
        with contextlib.suppress(ValueError):  # the pipe closed under us at exit
            for line in self._proc.stdout:
                if line.startswith(READY_PREFIX):
                    self._ready.set()
                self._output(line.rstrip("\n"))


def _print(line: str) -> None:
    print(line, flush=True)


def start_asr_job(
    settings: Settings, *, log_level: str = "warning", output: Callable[[str], None] | None = None
) -> AsrJobProcess:
    """Starts ``scriptforge asr`` on ``settings`` (passed as SCRIPTFORGE_* variables); returns at once.
    ``.wait_ready(timeout)`` waits for it, ``.stop()`` stops it."""
    return AsrJobProcess(settings, log_level=log_level, output=output)
