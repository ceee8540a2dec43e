"""``python -m workers.stream``: the stream worker with settings from the environment (GUARD_*)."""

from __future__ import annotations

import sys

from pipeline.config import ConfigError, load_settings
from pipeline.errors import UserError
from workers.stream.app import run_stream_worker

if __name__ == "__main__":
    try:
        sys.exit(run_stream_worker(load_settings()))
    except (UserError, ConfigError) as exc:
        # One line, as `guardstream worker stream` prints it: the fault and its fix, no traceback.
        print(f"stream worker: error: {exc}", file=sys.stderr)
        sys.exit(2)
