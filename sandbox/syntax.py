"""Compile-time checks of a script, used by ``deploy`` (refuse what cannot run) and by runs."""

from __future__ import annotations

from dataclasses import dataclass

from sandbox.engine import compile_error


@dataclass(frozen=True)
class SyntaxProblem:
    line: int | None
    column: int | None
    message: str

    def __str__(self) -> str:
        where = f"line {self.line}" if self.line is not None else "unknown line"
        if self.column is not None:
            where += f", column {self.column}"
        return f"SyntaxError at {where}: {self.message}"


def check_syntax(source: str) -> SyntaxProblem | None:
    """The first syntax error of ``source`` with its location, or None when it compiles."""
    problem = compile_error(source)
    if problem is None:
        return None
    return SyntaxProblem(*problem)
