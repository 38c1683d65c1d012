"""A ``scriptforge worker`` subprocess that a test can SIGKILL and start again from the same data
directory (so it takes the same state slot and transactional id): the tests of crashes mid-traffic."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.settings import Settings

REPO = Path(__file__).resolve().parents[2]


@dataclass
class WorkerProcess:
    """One ``scriptforge worker`` subprocess, started again (same data directory) after a kill."""

    label: str
    settings: Settings
    data_dir: Path
    log: Path
    process: subprocess.Popen[bytes] | None = None
    #: the worker id (host:pid) of each process started, in order
    ids: list[str] = field(default_factory=list)

    def start(self) -> None:
        env = {
            **os.environ,
            **self.settings.to_env(),
            "SCRIPTFORGE_DATA_DIR": str(self.data_dir),
            "SCRIPTFORGE_METRICS_PORT": "0",
            "SCRIPTFORGE_SANDBOX_PROCESSES": "2",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        }
        cmd = [sys.executable, "-m", "pipeline", "worker", "--log-level", "WARNING"]
        with self.log.open("ab") as out:
            out.write(f"---- {self.label}: start {len(self.ids) + 1}\n".encode())
            out.flush()
            self.process = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
        self.ids.append(f"{socket.gethostname()}:{self.process.pid}")

    def kill(self) -> None:
        assert self.process is not None and self.process.poll() is None, self.tail()
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)
        assert self.process.returncode == -signal.SIGKILL

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)

    def ready(self) -> bool:
        """Whether the current process said it owns partitions (``ready:`` since its last start)."""
        text = self.log.read_text(errors="replace")
        return "ready: worker" in text[text.rfind(f"---- {self.label}: start") :]

    def slot_pid(self) -> str:
        """The pid in the lock of slot 0 of its data directory: the process that holds the slot."""
        return (self.data_dir / "state" / "slot-0.lock").read_text().strip()

    def tail(self, chars: int = 3000) -> str:
        return f"\n--- {self.label} log ---\n" + self.log.read_text(errors="replace")[-chars:]
