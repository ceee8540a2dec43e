"""``python -m tests.worker.hung_kafka_worker CALL``: a stream worker (settings from GUARD_* variables)
whose real producer never returns from its first ``CALL``, as librdkafka has done after a broker
restart. The process's exit code is what a supervisor would see."""

from __future__ import annotations

import sys
import threading

from pipeline.config import load_settings
from pipeline.logging import configure_logging
from tests.worker.faulty_kafka import Fault, FaultyKafka
from workers.stream.app import build_worker
from workers.stream.metrics import StreamMetrics


def main(call: str) -> int:
    settings = load_settings()
    configure_logging(settings.log_level)
    worker = build_worker(settings, StreamMetrics(), producer_factory=FaultyKafka(Fault(call, "hang")))
    return worker.run(threading.Event())


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
