"""Avro schemas (.avsc) of everything ScriptForge puts on a topic."""
