"""Live data for a replay: the user-space lists and ASR+ tables as they are now, read from Kafka.

A changed script may look up something its original never did; that look-up has no recorded answer,
so it is answered from the live tables (and flagged in the report). The tables are read on the first
such look-up only: a replay whose runs all stay within their recordings never touches Kafka.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from pathlib import Path
from typing import Any

from pipeline.errors import ScriptForgeError
from pipeline.settings import Settings
from pipeline.state.asr import AsrView
from pipeline.state.global_table import GlobalTable
from pipeline.state.userspace import UserspaceView
from pipeline.wire.topics import Topics
from sandbox.host import HostCallError
from sandbox.session import MISSING

log = logging.getLogger(__name__)

#: how long the tables may take to be read whole
CATCH_UP_S = 30.0


class KafkaLiveData:
    """The live user-space and ASR+ tables, read into temporary tables on first use; ``close()`` them."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._stack = contextlib.ExitStack()
        self._views: tuple[UserspaceView, AsrView] | None = None
        self._failed: str | None = None

    def _open(self) -> tuple[UserspaceView, AsrView]:
        if self._views is not None:
            return self._views
        if self._failed is not None:
            raise HostCallError(503, self._failed)
        try:
            folder = Path(
                self._stack.enter_context(tempfile.TemporaryDirectory(prefix="scriptforge-replay-"))
            )
            topics = Topics(self._settings)
            tables = []
            for name, topic in (("userspace", topics.userspace), ("asrplus", topics.asrplus)):
                table = GlobalTable(self._settings, topic, folder / name)
                table.start()
                self._stack.callback(table.close)
                table.wait_caught_up(CATCH_UP_S)
                tables.append(table)
        except ScriptForgeError as exc:
            self._failed = f"no live data: {exc}"
            log.warning("replay: look-ups the recording lacks are refused: %s", self._failed)
            raise HostCallError(503, self._failed) from None
        self._views = (UserspaceView(tables[0]), AsrView(tables[1]))
        return self._views

    def userspace(self, account: str, area: str, key: str) -> Any:
        return self._open()[0].get(account, area, key, MISSING)

    def asrplus(self, number: str, now_ms: int) -> dict[str, Any]:
        return self._open()[1].lookup(number, now_ms)

    def close(self) -> None:
        self._stack.close()
