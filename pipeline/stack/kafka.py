"""A single-node Apache Kafka (KRaft, broker + controller in one JVM) under the state directory.

Layout under ``{state_dir}/kafka/``: ``lib/`` (jars resolved by Maven from deploy/kafka/pom.xml),
``server.properties``, ``log4j2.properties``, ``data/`` (the log dirs and KRaft metadata),
``kafka.log`` (stdout and stderr of the JVM) and ``kafka.pid``.
"""

from __future__ import annotations

import base64
import re
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import UserError
from pipeline.stack.probes import kafka_answers
from pipeline.stack.process import PidFile, start_detached, stop_recorded, tail, wait_until_answers
from pipeline.stack.tools import require_java, require_program

POM = Path(__file__).resolve().parents[2] / "deploy" / "kafka" / "pom.xml"
NODE_ID = 1
# Modest heap: the local broker shares a small machine with the workers and the model.
JVM_OPTIONS = (
    "-Xms256m",
    "-Xmx512m",
    "-XX:+UseG1GC",
    "-XX:MaxGCPauseMillis=20",
    "-XX:+ExitOnOutOfMemoryError",
    "-Djava.awt.headless=true",
)
LOG4J2 = """\
status = warn
appender.out.type = Console
appender.out.name = STDOUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.out.ref = STDOUT
# Per-partition state changes would drown the useful lines.
logger.state.name = state.change.logger
logger.state.level = WARN
logger.cleaner.name = kafka.log.LogCleaner
logger.cleaner.level = WARN
# Every client and server config object dumps all its values at INFO: hundreds of lines per start.
logger.configs.name = org.apache.kafka.common.config.AbstractConfig
logger.configs.level = WARN
"""


def pom_kafka_version(pom: Path = POM) -> str:
    match = re.search(r"<kafka\.version>([^<]+)</kafka\.version>", pom.read_text(encoding="utf-8"))
    if match is None:
        raise UserError(f"{pom} does not pin <kafka.version>")
    return match.group(1).strip()


def new_cluster_id() -> str:
    """A KRaft cluster id: 16 random bytes, URL-safe base64 without padding (as kafka-storage makes).

    Never one that starts with "-" (one in 64 would): the storage tool's argument parser takes it
    for an option and refuses to format, as Kafka's own id generator avoids too.
    """
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode("ascii")
        if not cluster_id.startswith("-"):
            return cluster_id


@dataclass(frozen=True)
class LocalKafka:
    state_dir: Path
    port: int
    controller_port: int
    host: str = "127.0.0.1"

    @property
    def home(self) -> Path:
        return self.state_dir / "kafka"

    @property
    def lib_dir(self) -> Path:
        return self.home / "lib"

    @property
    def data_dir(self) -> Path:
        return self.home / "data"

    @property
    def log_file(self) -> Path:
        return self.home / "kafka.log"

    @property
    def pid_file(self) -> PidFile:
        return PidFile(self.home / "kafka.pid")

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    # --- lifecycle ------------------------------------------------------------------------
    def pid(self) -> int | None:
        return self.pid_file.read()

    def answers(self, timeout_s: float = 2.0) -> bool:
        return kafka_answers({"bootstrap.servers": self.bootstrap}, timeout_s)

    def start(self, wait_s: float = 120.0) -> int:
        """Start the broker (resolving jars and formatting storage first when needed); return its PID."""
        running = self.pid()
        if running is not None:
            return running
        if self.answers(1.0):
            raise UserError(
                f"something else already serves Kafka on {self.bootstrap}; stop it or choose another "
                "port with --kafka-port (and --kafka-bootstrap to match)"
            )
        java = require_java()
        self.ensure_jars()
        self._write_configs()
        self._format_storage(java)
        pid = start_detached(
            [str(java), *JVM_OPTIONS, f"-Dlog4j2.configurationFile={self.home / 'log4j2.properties'}",
             f"-Dkafka.logs.dir={self.home}", "-cp", f"{self.lib_dir}/*", "kafka.Kafka",
             str(self.home / "server.properties")],
            self.log_file, self.pid_file, cwd=self.home,
        )
        self._wait_until_answers(pid, wait_s)
        return pid

    def stop(self, timeout_s: float = 30.0, *, hard: bool = False) -> bool:
        """Stop the broker this state directory started; False when none was running."""
        return stop_recorded(self.pid_file, timeout_s, hard=hard)

    # --- preparation ----------------------------------------------------------------------
    def ensure_jars(self) -> None:
        """Copy the pinned broker jars from Maven (its local repository, else Maven Central) into lib/."""
        version = pom_kafka_version()
        marker = self.lib_dir / ".kafka-version"
        if marker.is_file() and marker.read_text().strip() == version:
            return
        mvn = require_program("mvn")
        if self.lib_dir.exists():
            for jar in self.lib_dir.glob("*.jar"):
                jar.unlink()
        self.lib_dir.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run(
            [str(mvn), "-q", "-B", "-f", str(POM), "dependency:copy-dependencies",
             f"-DoutputDirectory={self.lib_dir}"],
            capture_output=True, text=True, check=False,
        )
        if proc.returncode != 0:
            raise UserError(
                f"Maven could not resolve Kafka {version} from {POM} (is Maven Central reachable?):\n"
                + (proc.stdout + proc.stderr)[-2000:]
            )
        marker.write_text(version + "\n")

    def _write_configs(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        (self.home / "log4j2.properties").write_text(LOG4J2)
        (self.home / "server.properties").write_text(self.server_properties())

    def server_properties(self) -> str:
        props = {
            "process.roles": "broker,controller",
            "node.id": str(NODE_ID),
            "controller.quorum.voters": f"{NODE_ID}@{self.host}:{self.controller_port}",
            "listeners": f"PLAINTEXT://{self.host}:{self.port},CONTROLLER://{self.host}:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://{self.host}:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            "log.dirs": str(self.data_dir),
            # Topics come from `guardstream topics`; a typo in a topic name must fail, not create one.
            "auto.create.topics.enable": "false",
            "num.partitions": "1",
            # One node: every internal topic must live with a single replica, or transactions,
            # consumer groups and share groups never become available.
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "8",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "8",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            # Tests and demos start consumers right away; the default 3 s delay only slows them.
            "group.initial.rebalance.delay.ms": "0",
            "log.retention.check.interval.ms": "60000",
        }
        return "".join(f"{key}={value}\n" for key, value in props.items())

    def _format_storage(self, java: Path) -> None:
        if (self.data_dir / "meta.properties").is_file():
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run(
            [str(java), "-Xmx256m", f"-Dlog4j2.configurationFile={self.home / 'log4j2.properties'}",
             "-cp", f"{self.lib_dir}/*", "kafka.tools.StorageTool", "format",
             "-t", new_cluster_id(), "-c", str(self.home / "server.properties"), "--ignore-formatted"],
            capture_output=True, text=True, check=False,
        )
        if proc.returncode != 0:
            output = (proc.stdout + proc.stderr)[-2000:]
            raise UserError(f"formatting Kafka storage in {self.data_dir} failed:\n{output}")

    def _wait_until_answers(self, pid: int, wait_s: float) -> None:
        if wait_until_answers("Kafka", pid, self.pid_file, self.log_file, lambda: self.answers(2.0), wait_s,
                              poll_s=0.3):
            return
        raise UserError(
            f"Kafka did not answer on {self.bootstrap} within {wait_s:.0f} s (still running as PID {pid}); "
            f"see {self.log_file}:\n{tail(self.log_file)}"
        )
