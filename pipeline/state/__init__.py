"""State on Kafka: the scripts' datastores (a RocksDB store per invocations partition with a compacted
changelog), and the tables every worker materializes whole (user-space lists, ASR+). docs/state.md."""
