"""The ``scriptforge`` command: parses flags, builds Settings once, dispatches to a command module.

Each subcommand lives in ``pipeline/cli/<name>.py`` and exposes ``register(subparsers)``, which
adds its parser and sets ``handler(args, settings) -> int`` as the parser's default. Errors of the
ScriptForgeError hierarchy are printed here as one line on stderr, with their exit status.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence

from pipeline.errors import NotAvailableError, ScriptForgeError, UsageError
from pipeline.settings import Settings

#: subcommands in the order ``--help`` lists them; each is a module under pipeline.cli
COMMANDS = (
    "run",
    "deploy",
    "invoke",
    "worker",
    "dev",
    "broker",
    "route",
    "userspace",
    "cdr",
    "asr",
    "logs",
    "recording",
    "record",
    "replay",
    "bench",
)


class _Parser(argparse.ArgumentParser):
    """argparse that raises UsageError instead of exiting, so every usage error exits 2 the same way."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{self.prog}: {message}")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="scriptforge",
        description="Run customers' JavaScript in line with call routing, fed by Kafka.",
        epilog="Environment:\n" + Settings.describe(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--broker", help="Kafka bootstrap servers (env SCRIPTFORGE_BROKER)")
    parser.add_argument("--data-dir", help="data directory (env SCRIPTFORGE_DATA_DIR)")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in COMMANDS:
        try:
            module = _command_module(name)
        except Exception as exc:  # one broken command must not take the others down with it
            sub = subparsers.add_parser(name, help="(cannot load: see the error when run)")
            sub.set_defaults(handler=_unavailable(f"scriptforge {name} cannot load: {exc!r}"))
            continue
        if module is not None and hasattr(module, "register"):
            module.register(subparsers)
        else:
            sub = subparsers.add_parser(name, help="(not yet available)")
            sub.set_defaults(handler=_unavailable(f"scriptforge {name} is not available yet in this version"))
    return parser


def _command_module(name: str) -> object | None:
    try:
        return importlib.import_module(f"pipeline.cli.{name}")
    except ModuleNotFoundError as exc:
        if exc.name == f"pipeline.cli.{name}":
            return None
        raise


def _unavailable(message: str) -> Callable[[argparse.Namespace, Settings], int]:
    def handler(args: argparse.Namespace, settings: Settings) -> int:
        raise NotAvailableError(message)

    return handler


def main(argv: Sequence[str] | None = None) -> int:
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if not getattr(args, "handler", None):
            parser.print_help(sys.stderr)
            return 2
        settings = Settings.from_env(broker=args.broker, data_dir=args.data_dir)
        return int(args.handler(args, settings))
    except ScriptForgeError as exc:
        print(f"scriptforge: error: {exc.message}", file=sys.stderr)
        return exc.exit_status
    except KeyboardInterrupt:
        return 130
