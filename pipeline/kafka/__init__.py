"""Kafka client plumbing shared by the worker, the registry and the client: common client settings,
fetcher wake-ups, and the split producer for latency paths."""
