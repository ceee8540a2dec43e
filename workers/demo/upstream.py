"""The demo's stand-in LLM: the scripted OpenAI-compatible upstream serving the sample conversations'
assistant replies, as its own process (``python -m workers.demo.upstream --listen HOST:PORT``), so
that it can outlive ``guardstream demo --keep-stack``."""

from __future__ import annotations

import argparse

from pipeline.gateway.scripted import ScriptedUpstream
from workers.demo.samples import SAMPLES

DEFAULT_REPLY = "I am a scripted stand-in for an LLM: I only know the demo's sample conversations."


def demo_upstream(delay_s: float) -> ScriptedUpstream:
    """Each sample's user message answered with its assistant message; anything else a fixed line."""
    replies = {conv.messages[0].content: conv.messages[1].content for _, conv in SAMPLES}
    return ScriptedUpstream.from_texts(replies, DEFAULT_REPLY, delay_s)


def main(argv: list[str] | None = None) -> int:
    import uvicorn

    from workers.commands.gateway import parse_listen

    parser = argparse.ArgumentParser(prog="python -m workers.demo.upstream", description=__doc__)
    parser.add_argument("--listen", default="127.0.0.1:8000", help="HOST:PORT to serve on")
    parser.add_argument("--token-delay-ms", type=int, default=30, help="pause between streamed pieces")
    args = parser.parse_args(argv)
    host, port = parse_listen(args.listen)
    uvicorn.run(demo_upstream(max(0, args.token_delay_ms) / 1000).app(), host=host, port=port,
                log_level="warning", access_log=False, timeout_graceful_shutdown=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
