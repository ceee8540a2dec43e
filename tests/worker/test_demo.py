"""`guardstream demo`, the README's main command, runs end to end on the local stack."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from pipeline.config import Settings
from tests.fixtures.stack import consume_verdicts


def test_demo_streams_conversations_through_a_worker_and_exits_cleanly(settings: Settings, tmp_path: Path) -> None:
    # The shared test stack is already up: the demo must find it ("already answering") and, with
    # --keep-stack, leave it running. Its own topics and group keep it apart from other tests.
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    args = [
        sys.executable, "-m", "workers.cli", "demo", "--keep-stack", "--conversations", "2",
        "--token-delay-ms", "0", "--state-dir", str(tmp_path / "state"),
        "--topic-in", settings.topic_in, "--topic-verdicts", settings.topic_verdicts,
        "--topic-dlq", settings.topic_dlq, "--stream-group", settings.stream_group,
    ]
    result = subprocess.run(args, env=env, capture_output=True, text=True, timeout=900)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert "UNTRAINED" in output, "a random model must be labelled as such"
    assert "summary" in output

    finals = [v for v in consume_verdicts(settings) if v.kind == "final" and v.source == "stream"]
    user_finals = {v.conversation_id for v in finals if v.role == "user"}
    assert len(user_finals) == 2, f"every demo conversation's prompt gets a final verdict: {sorted(user_finals)}"
