"""`guardstream demo`, the README's main command: the sample conversations go through the gateway with
the openai client against the scripted LLM, over the real local Kafka and Redis and a stream worker."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from pipeline.config import Settings
from pipeline.ops.ports import free_port
from tests.fixtures.stack import consume_verdicts


@pytest.fixture(scope="module")
def demo_state(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One state dir for the module, so the second run reuses the first one's model export."""
    return tmp_path_factory.mktemp("demo-state")


def demo(settings: Settings, state: Path, port: int, *extra: str) -> subprocess.CompletedProcess[str]:
    # The shared test stack is already up: the demo must find it ("already answering") and leave it
    # running (it stops only what it started). Its own topics and group keep it apart from other tests.
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}
    env.pop("GUARD_DEFAULT_POLICY", None)
    args = [sys.executable, "-m", "workers.cli", "demo", "--token-delay-ms", "0", "--state-dir", str(state),
            "--listen", f"127.0.0.1:{port}", "--topic-in", settings.topic_in,
            "--topic-verdicts", settings.topic_verdicts, "--topic-dlq", settings.topic_dlq,
            "--stream-group", settings.stream_group, *extra]
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=900)


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as reply:
            return bool(reply.status == 200)
    except OSError:
        return False


def test_demo_sends_conversations_through_the_gateway_and_shows_the_contrast(
    settings: Settings, demo_state: Path
) -> None:
    port = free_port()
    result = demo(settings, demo_state, port, "--conversations", "5")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert "UNTRAINED" in output, "a random model must be labelled as such"
    # Every conversation ends one of three ways, each line in its format. Seed 0 with the demo's
    # Safe prior gives 2 released, 2 flagged (controversial, allowed by the demo's loose default)
    # and 1 stopped (tests/model/test_safe_prior.py pins the labels); here the contrast is what counts.
    released = re.findall(r"RELEASED  finish_reason stop  guardstream: -\n", output)
    flagged = re.findall(r"FLAGGED  finish_reason stop  guardstream: assistant controversial / .+ at token \d+ "
                         r"-> allow\n", output)
    stopped = re.findall(r"STOPPED  finish_reason content_filter  guardstream: assistant unsafe / .+ "
                         r"at token \d+ -> block\n", output)
    refused = re.findall(r"REFUSED  finish_reason content_filter  guardstream: user unsafe / .+ "
                         r"at token 0 -> block\n", output)
    assert len(released) + len(flagged) + len(stopped) + len(refused) == 5, output[-6000:]
    assert released and (flagged or stopped or refused), f"the demo must show a contrast: {output[-6000:]}"
    assert f"{len(released)} released" in output
    assert f"dashboard: http://127.0.0.1:{port}/ui/" in output
    assert "stopped the demo's gateway, upstream and worker" in output
    assert not answers(f"http://127.0.0.1:{port}/v1/models"), "without --keep-stack the gateway is stopped"
    assert not (demo_state / "demo-processes.json").exists()

    finals = [v for v in consume_verdicts(settings) if v.kind == "final" and v.source == "stream"]
    assert len({v.conversation_id for v in finals if v.role == "user"}) == 5, "every prompt is judged"
    assert all(v.conversation_id.startswith("gw-") for v in finals), "the conversations came through the gateway"


def test_demo_keep_stack_leaves_the_gateway_up_until_demo_stop(settings: Settings, demo_state: Path) -> None:
    port = free_port()
    result = demo(settings, demo_state, port, "--conversations", "1", "--keep-stack")
    output = result.stdout + result.stderr
    try:
        assert result.returncode == 0, output[-4000:]
        assert "guardstream demo --stop" in output
        assert answers(f"http://127.0.0.1:{port}/v1/models"), "--keep-stack leaves the gateway answering"
        assert answers(f"http://127.0.0.1:{port}/ui/"), "and its dashboard"
    finally:
        stop = demo(settings, demo_state, port, "--stop")
    assert stop.returncode == 0, stop.stdout + stop.stderr
    assert "stopped the demo's gateway, upstream, worker" in stop.stdout
    assert not answers(f"http://127.0.0.1:{port}/v1/models")
