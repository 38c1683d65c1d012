"""What operators see: Prometheus metrics and rate-limited alarms."""
