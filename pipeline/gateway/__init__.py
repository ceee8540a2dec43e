"""An OpenAI-compatible gateway that puts the guard in front of any LLM server (docs/gateway.md)."""
