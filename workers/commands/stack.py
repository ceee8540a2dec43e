"""``guardstream up`` / ``down`` / ``topics``: the local Kafka + Redis and the topic layout."""

from __future__ import annotations

import argparse
import shutil
from typing import Any

from pipeline.config import add_settings_arguments, settings_from_args, settings_in_group

STACK_SETTINGS = ["state_dir", "kafka_port", "kafka_controller_port", "redis_port"]
TOPIC_SETTINGS = [
    *settings_in_group("kafka"), "topic_in", "topic_verdicts", "topic_dlq", "partitions", "replication_factor",
    "max_text_bytes",
]

UP_EPILOG = """\
Starts a single-node Apache Kafka (KRaft, broker and controller in one JVM) and a Redis
(append-only file, fsync every second) bound to 127.0.0.1, as background processes whose data,
logs and PID files live under the state directory. Waits until both answer. Running it again
while they run changes nothing. The first run resolves the Kafka jars with Maven.

examples:
  guardstream up
  guardstream up --state-dir /tmp/gs --kafka-port 19092 --kafka-controller-port 19093 --redis-port 16379
"""

DOWN_EPILOG = """\
Stops exactly the processes recorded in the state directory's PID files (SIGTERM, then SIGKILL
after a timeout); never anything else listening on those ports.

examples:
  guardstream down
  guardstream down --wipe      # also delete the broker's and Redis's data (jars are kept)
"""

TOPICS_EPILOG = """\
Creates the input, verdict and dead-letter topics if missing and brings their configuration
(retention, cleanup policy, message size) to the spec; existing partition counts are reported,
never changed. Works against any Kafka, including secured ones (see the --kafka-* flags).

examples:
  guardstream topics
  guardstream topics --partitions 32 --replication-factor 3 --kafka-bootstrap kafka-0:9092
"""


def register(sub: Any) -> None:
    up = sub.add_parser("up", help="start the local Kafka (KRaft) and Redis", epilog=UP_EPILOG,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    add_settings_arguments(up, STACK_SETTINGS)
    up.add_argument("--jars-only", action="store_true",
                    help="only resolve the Kafka jars into the state directory (what 'make setup' does); start nothing")
    up.set_defaults(func=run_up)

    down = sub.add_parser("down", help="stop the local Kafka and Redis started by 'up'", epilog=DOWN_EPILOG,
                          formatter_class=argparse.RawDescriptionHelpFormatter)
    add_settings_arguments(down, STACK_SETTINGS)
    down.add_argument("--wipe", action="store_true", help="also delete Kafka's and Redis's data")
    down.set_defaults(func=run_down)

    topics = sub.add_parser("topics", help="create the topics (idempotent)", epilog=TOPICS_EPILOG,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    add_settings_arguments(topics, TOPIC_SETTINGS)
    topics.set_defaults(func=run_topics)


def run_up(args: argparse.Namespace) -> int:
    from pipeline.stack import LocalStack

    stack = LocalStack.from_settings(settings_from_args(args))
    print(f"state directory: {stack.state_dir}")
    if args.jars_only:
        stack.kafka.ensure_jars()
        print(f"kafka jars in {stack.kafka.lib_dir}")
        return 0
    for event in stack.up():
        print(f"{event.service:6} {event.action:16} {event.detail}")
    return 0


def run_down(args: argparse.Namespace) -> int:
    from pipeline.stack import LocalStack

    stack = LocalStack.from_settings(settings_from_args(args))
    for event in stack.down():
        print(f"{event.service:6} {event.action:16} {event.detail}")
    if args.wipe:
        for data in (stack.kafka.data_dir, stack.redis.data_dir):
            shutil.rmtree(data, ignore_errors=True)
            print(f"wiped  {data}")
    return 0


def run_topics(args: argparse.Namespace) -> int:
    from pipeline.kafka import ensure_topics

    settings = settings_from_args(args)
    for status in ensure_topics(settings):
        line = f"{status.name:32} {status.action:8} partitions={status.partitions}"
        print(line + (f"  note: {status.note}" if status.note else ""))
    return 0
