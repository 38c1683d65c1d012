"""Errors of the sandbox itself (not of the scripts it runs, which become Outcomes)."""

from __future__ import annotations


class SandboxError(Exception):
    """Base of the sandbox's own failures. ``retriable``: running the same request again may work."""

    retriable = False


class EngineError(SandboxError):
    """The JavaScript engine misbehaved in a way that is not the script's fault."""


class PoolClosedError(SandboxError):
    """The pool was closed while a run waited for a sandbox process."""

    retriable = True
