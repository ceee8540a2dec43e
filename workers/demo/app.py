"""``guardstream demo``: local stack, a model, a stream worker, and a frontend playing conversations."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from rich import box
from rich.console import Console
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from pipeline.config import Settings, env_var, state_path
from pipeline.errors import UserError
from workers.demo.frontend import RISK_STYLE, ConversationOutcome, DemoFrontend
from workers.demo.model import DemoModel, prepare_model
from workers.demo.samples import SAMPLES


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_worker(settings: Settings, log_path: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    for name, value in vars(settings).items():
        env[env_var(name)] = ("1" if value else "0") if isinstance(value, bool) else str(value)
    with log_path.open("ab") as log:
        return subprocess.Popen([sys.executable, "-m", "workers.stream"], env=env, stdout=log,
                                stderr=subprocess.STDOUT)


def wait_ready(proc: subprocess.Popen[bytes], port: int, log_path: Path, timeout_s: float = 300.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise UserError(f"the stream worker exited with code {proc.returncode}; see its log {log_path}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as reply:
                if reply.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.3)
    raise UserError(f"the stream worker was not ready after {timeout_s:.0f}s; see its log {log_path}")


def summary_table(outcomes: list[ConversationOutcome]) -> Table:
    table = Table(title="guardstream demo: summary", box=box.SIMPLE_HEAD)
    for column in ("conversation", "language", "prompt", "response", "flags", "tokens", "outcome"):
        table.add_column(column, no_wrap=True)
    for conv in outcomes:
        cells: list[Text | str] = [conv.conversation_id.removeprefix("demo-").rsplit("-", 2)[0], conv.language]
        for role in ("user", "assistant"):
            m = next((m for m in conv.messages if m.role == role), None)
            if m is None or m.final is None:
                cells.append(Text("-" if m is None else "no verdict", style="dim"))
            else:
                cells.append(Text(m.final.risk, style=RISK_STYLE.get(m.final.risk, "white")))
        flags = sum(len(m.flags) for m in conv.messages)
        sent = sum(m.tokens_sent for m in conv.messages)
        total = sum(m.tokens_total for m in conv.messages)
        blocked = [m for m in conv.messages if m.final is not None and m.final.action == "block"]
        stopped = any(m.stopped for m in conv.messages)
        outcome = "stopped" if stopped else ("blocked" if blocked else "allowed")
        cells += [str(flags), f"{sent}/{total}",
                  Text(outcome, style="bold red" if blocked or stopped else "green")]
        table.add_row(*cells)
    return table


def run_demo(settings: Settings, *, keep_stack: bool, conversations: int, token_delay_ms: int) -> int:
    console = Console()
    from pipeline.kafka.topics import ensure_topics
    from pipeline.stack.local import LocalStack

    stack = LocalStack.from_settings(settings)
    console.print("[bold]1/4[/] starting the local stack (Kafka KRaft + Redis on loopback)")
    events = stack.up()
    started_here = {e.service for e in events if e.action == "started"}
    for e in events:
        console.print(f"    {e.service}: {e.action} {e.detail}")
    settings = settings.replace(kafka_bootstrap=stack.kafka_bootstrap, redis_url=stack.redis_url)
    worker: subprocess.Popen[bytes] | None = None
    try:
        ensure_topics(settings)
        console.print("[bold]2/4[/] preparing the model")
        model = prepare_model(state_path(settings), lambda line: console.print(f"    {line}", markup=False))
        _announce_model(console, model)
        console.print("[bold]3/4[/] starting the stream worker")
        port = free_port()
        worker_settings = settings.replace(model=str(model.export_dir), metrics_port=port, max_batch_wait_ms=5,
                                           progress_every_tokens=4)
        log_path = state_path(settings) / "demo-worker.log"
        worker = start_worker(worker_settings, log_path)
        wait_ready(worker, port, log_path)
        console.print(f"    ready; metrics at http://127.0.0.1:{port}/metrics, log {log_path}")
        console.print("[bold]4/4[/] playing an LLM frontend (guarded-release mode)")
        outcomes = asyncio.run(_play(settings, console, model, conversations, token_delay_ms / 1000.0))
        console.print(summary_table(outcomes))
        if not model.trained:
            console.print("[bold yellow]The model is UNTRAINED (random weights): its verdicts are random.[/]")
        return 0
    finally:
        if worker is not None and worker.poll() is None:
            worker.terminate()
            try:
                worker.wait(60)
            except subprocess.TimeoutExpired:
                worker.kill()
        if not keep_stack:
            for service in sorted(started_here):
                getattr(stack, service).stop()
            if started_here:
                console.print("stopped the local stack (use --keep-stack to leave it running)")


def _announce_model(console: Console, model: DemoModel) -> None:
    if model.trained:
        console.print(f"    model: {model.source} ({model.export_dir})")
        return
    console.print(Panel(
        "The Hugging Face hub is unreachable, so this demo runs a RANDOM tiny Qwen3Guard-Stream\n"
        "checkpoint. It is UNTRAINED: every verdict below is random. The pipeline (Kafka, Redis,\n"
        "incremental KV cache, verdicts, blocking) is the real one.",
        title="UNTRAINED MODEL", style="bold yellow"))


async def _play(settings: Settings, console: Console, model: DemoModel, conversations: int,
                token_delay_s: float) -> list[ConversationOutcome]:
    from pipeline.client import GuardClient
    from pipeline.tokens.files import load_model_tokenizer

    tokenizer = load_model_tokenizer(model.export_dir)
    chosen = [SAMPLES[i % len(SAMPLES)] for i in range(conversations)]
    run_id = time.strftime("%H%M%S")
    outcomes = []
    async with GuardClient(settings, mode="guarded") as guard:
        frontend = DemoFrontend(guard, console, tokenizer, token_delay_s, verdict_timeout_s=60.0)
        for n, (language, conv) in enumerate(chosen):
            # Fresh ids per run: an interrupted earlier run may have left state for the same ids.
            conv = type(conv)(f"{conv.conversation_id}-{run_id}-{n}", conv.tenant, conv.messages)
            outcomes.append(await frontend.play(language, conv))
    return outcomes
