"""The routing engine's side: publish an invocation request, wait for its Outcome."""
