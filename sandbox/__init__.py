"""Runs one invocation of a customer's script under limits, in supervised sandbox processes.

Knows nothing of Kafka. Public surface: ``SandboxPool``, the value types, ``LocalHost`` for local
runs, and ``check_syntax`` for deploy-time checks.
"""

from sandbox.host import Host, HostCallError, HostSession
from sandbox.local import LocalHost
from sandbox.pool import PoolConfig, SandboxPool
from sandbox.syntax import SyntaxProblem, check_syntax
from sandbox.types import Invocation, Outcome, Reason, Script, ScriptType

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
