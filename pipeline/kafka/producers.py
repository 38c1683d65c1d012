"""A Kafka producer for a latency path: a lone message goes out at once, a burst goes out batched.

One ``linger.ms`` cannot serve both loads. With 1 ms a lone message waits 1 ms for company that does
not come: at 1,000 requests/s the worker's reply leg had a p50 of 2.2-2.3 ms, against 1.3-1.4 ms with
0. With 0 a backlog goes out as a stream of tiny produce requests: one worker draining a backlog fell
from 4,800-5,500/s to 3,600-3,800/s, and the broker's CPU per request tripled (bench pipeline, same
machine, same hour). :class:`SplitProducer` holds one librdkafka producer of each kind and sends a
message on the prompt one (linger 0) while fewer than ``PROMPT_BELOW`` are on their way, and on the
batching one otherwise.

Messages may then overtake each other between the two. Use it only where nothing depends on their
order: the replies (each call has its own, keyed by its call id) and the requests of different calls.
"""

from __future__ import annotations

from typing import Any

from confluent_kafka import Producer

#: fewer messages than this on their way (queued, in flight, or with a delivery report not yet served;
#: the count is librdkafka's out-queue length, which also holds its few other pending events):
#: the next goes out on the prompt producer
PROMPT_BELOW = 8
#: the longest ``poll`` waits on the prompt producer while the batching one has messages out
BATCHING_REPORT_WAIT = 0.005


class SplitProducer:
    """``produce``/``poll``/``flush``/``len`` like a confluent-kafka Producer, over two of them."""

    def __init__(self, config: dict[str, Any], *, batching_linger_ms: float = 1.0) -> None:
        self.prompt = Producer({**config, "linger.ms": 0})
        self.batching = Producer({**config, "linger.ms": batching_linger_ms})

    def __len__(self) -> int:
        return len(self.prompt) + len(self.batching)

    def produce(self, topic: str, value: bytes | None, key: bytes | None = None, **kwargs: Any) -> None:
        """Raises BufferError, as Producer.produce does, when the chosen producer's queue is full."""
        producer = self.prompt if len(self) < PROMPT_BELOW else self.batching
        producer.produce(topic, value, key, **kwargs)

    def poll(self, timeout: float = 0.0) -> int:
        """Serve both producers' delivery reports; the wait is on the prompt one, whose reports come
        one by one at low rates (the batching one's come under load, when nothing waits long)."""
        if timeout > BATCHING_REPORT_WAIT and len(self.batching):
            timeout = BATCHING_REPORT_WAIT
        return int(self.prompt.poll(timeout)) + int(self.batching.poll(0))

    def flush(self, timeout: float) -> int:
        """Wait (up to ``timeout`` for each) until both have delivered everything; returns how many
        messages are still on their way."""
        return int(self.prompt.flush(timeout)) + int(self.batching.flush(timeout))
