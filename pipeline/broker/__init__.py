"""A local Apache Kafka broker for development and tests: fetched from Maven, run as a JVM process."""
