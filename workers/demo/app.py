"""``guardstream demo``: local stack, a model, a stream worker, a scripted LLM behind the gateway, and
an application sending the sample conversations through the gateway with the ``openai`` client."""

from __future__ import annotations

import json
import socket
import subprocess
from pathlib import Path

from rich import box
from rich.console import Console
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from pipeline.config import Settings, state_path
from pipeline.ops.ports import free_port
from workers.demo.chat import OUTCOME_STYLE, TENANT_HEADER, ChatOutcome, describe_verdict, play
from workers.demo.model import DemoModel, prepare_model
from workers.demo.processes import (
    DemoProcess,
    record,
    settings_env,
    start,
    stop_pid,
    stop_recorded,
    wait_answering,
)
from workers.demo.samples import SAMPLES

# Every third conversation asks for one whole response instead of a stream.
WHOLE_EVERY = 3


def gateway_listen(listen: str, say: Console) -> str:
    """``listen`` when its port is free, else the same host on a free port (said so)."""
    from workers.commands.gateway import parse_listen

    host, port = parse_listen(listen)
    try:
        with socket.socket() as s:
            s.bind((host, port))
        return listen
    except OSError:
        other = f"{host}:{free_port(host)}"
        say.print(f"    {listen} is taken; the gateway listens on {other} instead (choose with --listen)")
        return other


def client_address(listen: str) -> str:
    """Where a client on this machine reaches a server listening on ``listen``."""
    host, _, port = listen.rpartition(":")
    return f"127.0.0.1:{port}" if host in ("0.0.0.0", "::", "[::]", "") else listen


def summary_table(outcomes: list[ChatOutcome]) -> Table:
    table = Table(title="guardstream demo: what the client received", box=box.SIMPLE_HEAD)
    table.add_column("conversation", no_wrap=True)
    table.add_column("request", no_wrap=True)
    table.add_column("outcome", no_wrap=True)
    table.add_column("finish_reason", no_wrap=True)
    table.add_column("guardstream verdict", overflow="fold")
    for o in outcomes:
        table.add_row(o.conversation.removeprefix("demo-"), "stream" if o.streamed else "whole",
                      Text(o.outcome, style=OUTCOME_STYLE[o.outcome]), o.finish_reason or "-",
                      describe_verdict(o.verdict))
    return table


def run_demo(settings: Settings, *, keep_stack: bool, conversations: int, token_delay_ms: int) -> int:
    console = Console()
    from pipeline.kafka.topics import ensure_topics
    from pipeline.stack.local import LocalStack

    state = state_path(settings)
    state.mkdir(parents=True, exist_ok=True)
    leftovers = stop_recorded(state)
    if leftovers:
        console.print(f"stopped an earlier demo's {', '.join(p.name for p in leftovers)}")
    stack = LocalStack.from_settings(settings)
    console.print("[bold]1/5[/] starting the local stack (Kafka KRaft + Redis on loopback)")
    events = stack.up()
    started_here = {e.service for e in events if e.action == "started"}
    for e in events:
        console.print(f"    {e.service}: {e.action} {e.detail}")
    settings = settings.replace(kafka_bootstrap=stack.kafka_bootstrap, redis_url=stack.redis_url)
    running: list[tuple[DemoProcess, subprocess.Popen[bytes]]] = []
    finished = False
    try:
        ensure_topics(settings)
        console.print("[bold]2/5[/] preparing the model")
        model = prepare_model(state, lambda line: console.print(f"    {line}", markup=False))
        _announce_model(console, model)

        console.print(f"[bold]3/5[/] starting the stream worker (default policy {settings.default_policy})")
        port = free_port()
        worker_settings = settings.replace(model=str(model.export_dir), metrics_port=port, max_batch_wait_ms=5,
                                           progress_every_tokens=4)
        running.append(_start(state, "worker", ["-m", "workers.stream"], settings_env(worker_settings),
                              f"http://127.0.0.1:{port}/readyz"))
        console.print(f"    ready; metrics at http://127.0.0.1:{port}/metrics, log {running[-1][0].log}")

        console.print("[bold]4/5[/] starting a scripted LLM (no model generates text here) and the gateway in "
                      "front of it")
        upstream = f"127.0.0.1:{free_port()}"
        running.append(_start(state, "upstream", ["-m", "workers.demo.upstream", "--listen", upstream,
                                                  "--token-delay-ms", str(token_delay_ms)],
                              settings_env(settings), f"http://{upstream}/v1/models"))
        listen = gateway_listen(settings.listen, console)
        # The dashboard at /ui/ shows the text too: the demo's conversations are its own samples.
        gateway_settings = settings.replace(upstream=f"http://{upstream}/v1", listen=listen,
                                            gateway_tenant_header=settings.gateway_tenant_header or TENANT_HEADER,
                                            gateway_ui=True, dashboard_show_text=True)
        address = client_address(listen)
        running.append(_start(state, "gateway", ["-m", "workers.cli", "gateway"], settings_env(gateway_settings),
                              f"http://{address}/v1/models"))
        record(state, [p for p, _ in running])
        console.print(f"    upstream http://{upstream}/v1 (scripted replies), gateway http://{address}/v1")

        console.print("[bold]5/5[/] an application sends the conversations through the gateway "
                      "(openai client, guarded mode)")
        outcomes = _play_all(gateway_settings, console, f"http://{address}/v1", conversations)
        console.print(summary_table(outcomes))
        counts = {k: sum(o.outcome == k for o in outcomes) for k in OUTCOME_STYLE}
        console.print("    " + ", ".join(f"{n} {k}" for k, n in counts.items() if n))
        console.print(f"[bold]dashboard:[/] http://{address}/ui/   (the live view of these conversations, served by "
                      "the gateway)")
        console.print(f"[bold]gateway:[/]   http://{address}/v1   metrics http://{address}/metrics")
        if not model.trained:
            console.print("[bold yellow]The model is UNTRAINED (random weights, biased toward Safe): its verdicts "
                          "are random, whatever the text says.[/]")
        finished = True
        return 0
    finally:
        if keep_stack and finished:
            _explain_kept(console, running, address, state, bool(started_here))
        else:
            for proc, popen in reversed(running):
                if popen.poll() is None:
                    stop_pid(proc.pid)
                popen.poll()
            (state / "demo-processes.json").unlink(missing_ok=True)
            if running:
                console.print("stopped the demo's gateway, upstream and worker")
        if not keep_stack:
            for service in sorted(started_here):
                getattr(stack, service).stop()
            if started_here:
                console.print("stopped the local stack (use --keep-stack to leave it running)")


def _start(state: Path, name: str, argv: list[str], env: dict[str, str], url: str
           ) -> tuple[DemoProcess, subprocess.Popen[bytes]]:
    log_path = state / f"demo-{name}.log"
    proc, popen = start(name, argv, env, url, log_path)
    try:
        wait_answering(popen, name, url, log_path)
    except BaseException:
        stop_pid(proc.pid)
        raise
    return proc, popen


def _play_all(settings: Settings, console: Console, base_url: str, conversations: int) -> list[ChatOutcome]:
    from openai import OpenAI

    # The gateway's verdict timeout bounds each request; a little more for the HTTP round trips.
    timeout_s = settings.gateway_verdict_timeout_ms / 1000 * 2 + 30
    client = OpenAI(base_url=base_url, api_key="demo-key", max_retries=0, timeout=timeout_s)
    outcomes = []
    for n in range(conversations):
        language, conv = SAMPLES[n % len(SAMPLES)]
        outcomes.append(play(client, console, language, conv, streamed=(n % WHOLE_EVERY) != WHOLE_EVERY - 1))
    return outcomes


def _explain_kept(console: Console, running: list[tuple[DemoProcess, subprocess.Popen[bytes]]], address: str,
                  state: Path, stack_started: bool) -> None:
    for proc, _ in running:
        console.print(f"    still running: {proc.name} (pid {proc.pid}) {proc.url}  log {proc.log}")
    console.print("[bold]Left running (--keep-stack).[/] Try it:")
    body = json.dumps({"model": "scripted", "stream": True,
                       "messages": [{"role": "user", "content": SAMPLES[0][1].messages[0].content}]})
    console.print(f"  curl -sN http://{address}/v1/chat/completions -H 'Content-Type: application/json' -d '{body}'",
                  markup=False, soft_wrap=True)
    console.print(f"Stop the gateway, upstream and worker:  guardstream demo --stop --state-dir {state}",
                  markup=False, soft_wrap=True)
    if stack_started:
        console.print(f"Stop Kafka and Redis too:               guardstream down --state-dir {state}",
                      markup=False, soft_wrap=True)


def _announce_model(console: Console, model: DemoModel) -> None:
    if model.trained:
        console.print(f"    model: {model.source} ({model.export_dir})")
        return
    console.print(Panel(
        "The Hugging Face hub is unreachable, so this demo runs a RANDOM tiny Qwen3Guard-Stream "
        "checkpoint, biased toward Safe (as a deployed model mostly judges). It is UNTRAINED: every "
        "verdict below is random, whatever the text says. The pipeline (gateway, Kafka, Redis, "
        "incremental KV cache, verdicts, blocking) is the real one.",
        title="UNTRAINED MODEL", style="bold yellow"))
