"""Runs one invocation of a customer's script under limits, in supervised sandbox processes.

Knows nothing of Kafka. Public surface: ``SandboxPool``, the value types, ``LocalHost`` for local
runs, and ``check_syntax`` for deploy-time checks. docs/sandbox.md holds the threat model.
"""

from typing import Any

from sandbox.host import Host, HostCallError, HostSession
from sandbox.local import LocalHost
from sandbox.pool import PoolConfig, SandboxPool
from sandbox.types import Invocation, Outcome, Reason, Script, ScriptType


def __getattr__(name: str) -> Any:
    # The syntax check loads the JavaScript engines: only code that checks syntax pays for them,
    # not a routing engine importing the client library (which uses sandbox.types).
    if name in ("SyntaxProblem", "check_syntax"):
        from sandbox import syntax

        return getattr(syntax, name)
    raise AttributeError(f"module 'sandbox' has no attribute {name!r}")


__all__ = [
    "Host",
    "HostCallError",
    "HostSession",
    "Invocation",
    "LocalHost",
    "Outcome",
    "PoolConfig",
    "Reason",
    "SandboxPool",
    "Script",
    "ScriptType",
    "SyntaxProblem",
    "check_syntax",
]
