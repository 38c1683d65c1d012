"""ScriptForge's Kafka side: topics, codecs, the invocation agent, registry, client, CLI."""
