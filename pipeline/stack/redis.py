"""A Redis server under the state directory, with append-only persistence.

Layout under ``{state_dir}/redis/``: ``redis.conf``, ``data/`` (the AOF and any RDB),
``redis.log`` and ``redis.pid``. AOF with fsync every second: a crash of Redis loses at most
about a second of conversation state, which workers rebuild from Kafka offsets.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import UserError
from pipeline.stack.probes import redis_answers
from pipeline.stack.process import PidFile, start_detached, stop_recorded, wait_until_answers
from pipeline.stack.tools import require_program


@dataclass(frozen=True)
class LocalRedis:
    state_dir: Path
    port: int
    host: str = "127.0.0.1"

    @property
    def home(self) -> Path:
        return self.state_dir / "redis"

    @property
    def data_dir(self) -> Path:
        return self.home / "data"

    @property
    def log_file(self) -> Path:
        return self.home / "redis.log"

    @property
    def pid_file(self) -> PidFile:
        return PidFile(self.home / "redis.pid")

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def pid(self) -> int | None:
        return self.pid_file.read()

    def answers(self, timeout_s: float = 1.0) -> bool:
        return redis_answers(self.url, timeout_s)

    def config(self) -> str:
        settings = {
            "bind": self.host,
            "port": str(self.port),
            "protected-mode": "yes",
            "daemonize": "no",
            "dir": str(self.data_dir),
            "appendonly": "yes",
            "appendfsync": "everysec",
            "logfile": '""',
            "save": "3600 1 300 100 60 10000",
        }
        return "".join(f"{key} {value}\n" for key, value in settings.items())

    def start(self, wait_s: float = 30.0) -> int:
        running = self.pid()
        if running is not None:
            return running
        if self.answers(0.5):
            raise UserError(
                f"something else already serves Redis on {self.host}:{self.port}; stop it or choose another "
                "port with --redis-port (and --redis-url to match)"
            )
        server = require_program("redis-server")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        conf = self.home / "redis.conf"
        conf.write_text(self.config())
        pid = start_detached([str(server), str(conf)], self.log_file, self.pid_file, cwd=self.home)
        if wait_until_answers("redis-server", pid, self.pid_file, self.log_file, lambda: self.answers(0.5),
                              wait_s, poll_s=0.1):
            return pid
        raise UserError(f"Redis did not answer on {self.url} within {wait_s:.0f} s; see {self.log_file}")

    def stop(self, timeout_s: float = 20.0, *, hard: bool = False) -> bool:
        return stop_recorded(self.pid_file, timeout_s, hard=hard)
