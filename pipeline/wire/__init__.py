"""The wire format: Avro schemas and their single-object codec, the records built on them, and the
topics they travel on. Everything that reads or writes a Kafka record of ScriptForge's goes through here."""
