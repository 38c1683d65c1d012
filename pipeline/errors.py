"""The errors ScriptForge raises, as one small hierarchy.

Every error says what was wrong and what to do in its message, and whether trying again may help
(``retriable``), in the manner of aiokafka. Boundaries (the CLI, the HTTP API, the invocation agent)
translate them: the CLI prints the message on one line and exits non-zero.
"""

from __future__ import annotations


class ScriptForgeError(Exception):
    """Base of every error ScriptForge raises on purpose."""

    retriable: bool = False
    #: process exit status the CLI uses for this error
    exit_status: int = 1

    def __init__(self, message: str, *, retriable: bool | None = None) -> None:
        super().__init__(message)
        self.message = message
        if retriable is not None:
            self.retriable = retriable

    def __str__(self) -> str:
        return self.message


class UsageError(ScriptForgeError):
    """The command line or a request was malformed: fix the input, do not retry."""

    exit_status = 2


class ConfigError(ScriptForgeError):
    """Settings or the environment are wrong (a port taken, Java missing, a bad data directory)."""


class BrokerError(ScriptForgeError):
    """The Kafka broker could not be started, reached or used."""

    retriable = True


class NotAvailableError(ScriptForgeError):
    """A command or capability that is not built yet."""
