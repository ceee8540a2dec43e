"""Real transactional producers with scripted faults: the errors and hangs librdkafka has shown.

Only the injection is fake: every call that is not scripted to fail goes to a real producer on the
real broker, so aborts, fencing by a fresh producer and committed offsets are Kafka's own.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Literal

from confluent_kafka import KafkaError, KafkaException

from pipeline.config import Settings
from pipeline.kafka.clients import make_producer

# raise_before: the call fails without reaching the broker (nothing of it happened);
# raise_after: the call went through, then the client reports a failure (e.g. a lost response);
# hang: the call never returns (librdkafka blocking past the timeout it was given).
FaultKind = Literal["raise_before", "raise_after", "hang"]


@dataclass
class Fault:
    call: str                       # the Producer method, e.g. "commit_transaction"
    kind: FaultKind
    error: KafkaError | None = None
    times: int = 1                  # how many calls it hits
    skip: int = 0                   # matching calls let through first


class FaultyKafka:
    """A producer factory (StreamWorker's ``producer_factory``): each producer it opens is real; the
    scripted faults hit the next matching calls, whichever producer makes them."""

    def __init__(self, *faults: Fault) -> None:
        self._faults = list(faults)
        self._lock = threading.Lock()
        self.opened = 0
        self.injected: list[str] = []   # "call:kind" per injected fault, in order

    def __call__(self, settings: Settings, **config: Any) -> Any:
        self.opened += 1
        return _FaultyProducer(make_producer(settings, **config), self)

    def take(self, call: str) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.call != call or fault.times <= 0:
                    continue
                if fault.skip > 0:
                    fault.skip -= 1
                    return None
                fault.times -= 1
                self.injected.append(f"{call}:{fault.kind}")
                return fault
        return None


class _FaultyProducer:
    def __init__(self, inner: Any, faults: FaultyKafka) -> None:
        self._inner = inner
        self._faults = faults

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def _call(self, name: str, *args: Any) -> Any:
        fault = self._faults.take(name)
        if fault is None:
            return getattr(self._inner, name)(*args)
        if fault.kind == "hang":
            threading.Event().wait()
        if fault.kind == "raise_after":
            getattr(self._inner, name)(*args)
        raise KafkaException(fault.error)

    def init_transactions(self, *args: Any) -> Any:
        return self._call("init_transactions", *args)

    def send_offsets_to_transaction(self, *args: Any) -> Any:
        return self._call("send_offsets_to_transaction", *args)

    def commit_transaction(self, *args: Any) -> Any:
        return self._call("commit_transaction", *args)

    def abort_transaction(self, *args: Any) -> Any:
        return self._call("abort_transaction", *args)
