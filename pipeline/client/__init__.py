"""The routing engine's side (docs/client.md): ``InvocationClient`` (asyncio) invokes scripts, routes
calls and reports their outcomes through Kafka; ``BlockingClient`` offers the same to blocking code."""

from pipeline.client.blocking import BlockingClient
from pipeline.client.client import InvocationClient

__all__ = ["BlockingClient", "InvocationClient"]
