"""The worker: consumes invocation requests, runs them in the sandbox in per-script lanes, replies, and
recovers from crashes. ``worker.Worker`` is the process; ``handler``, ``lanes``, ``output`` and
``recovery`` are its parts (docs/pipeline.md)."""
