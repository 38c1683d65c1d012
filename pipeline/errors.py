"""The errors ScriptForge raises, as one small hierarchy.

Every error says what was wrong and what to do in its message, and whether trying again may help
(``retriable``), in the manner of aiokafka. Boundaries (the CLI, the worker's invocation handler)
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


class BrokerUnreachableError(BrokerError):
    """No broker answered (at a client's start, or a request could not be sent): try again once Kafka
    serves."""


class TopicsMissingError(BrokerError):
    """Topics a client needs do not exist: a client creates none (docs/client.md); a worker does
    (``scriptforge worker`` or ``scriptforge dev``). Retriable: they exist once a worker has started."""


class DeliveryError(BrokerError):
    """A record was not delivered. ``code`` is librdkafka's error name (``MSG_SIZE_TOO_LARGE``,
    ``UNKNOWN_TOPIC_OR_PART``, ``_MSG_TIMED_OUT``, ...). Not ``retriable`` when the same record to the
    same topic would fail the same way (too large, no such topic, not allowed): the caller must send
    something else, or elsewhere, instead of trying again."""

    def __init__(self, message: str, *, code: str, retriable: bool) -> None:
        super().__init__(message, retriable=retriable)
        self.code = code


class NotAvailableError(ScriptForgeError):
    """A command or capability that is not built yet."""


class CodecError(ScriptForgeError):
    """A message could not be encoded or decoded with the Avro schemas (pipeline.wire.codec).

    ``dead_letter_reason`` is the DeadLetter.reason a consumer records for it. Not retriable: the same
    bytes fail the same way.
    """

    dead_letter_reason: str = "malformed"


class UnknownSchemaError(CodecError):
    """The message names (by fingerprint) a schema this process does not know, or one of another record
    type: deploy the schema file (schemas/history/) to the readers first, or check the topic."""

    dead_letter_reason = "unknown_schema"


class MalformedMessageError(CodecError):
    """The bytes are not a valid message: no single-object marker, truncated, undecodable body, or a
    required field missing."""

    dead_letter_reason = "malformed"
