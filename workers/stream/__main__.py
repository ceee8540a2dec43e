"""``python -m workers.stream``: the stream worker with settings from the environment (GUARD_*)."""

from __future__ import annotations

import sys

from pipeline.config import load_settings
from workers.stream.app import run_stream_worker

if __name__ == "__main__":
    sys.exit(run_stream_worker(load_settings()))
