"""One module per ``scriptforge`` subcommand; each exposes ``register(subparsers)``."""
