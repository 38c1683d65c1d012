"""ScriptForge's Kafka side, one package per concept: the wire format, the worker, the script registry,
the routing engine's client, observability, the local broker, benchmarks and the CLI (README, Layout)."""
