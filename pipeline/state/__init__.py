"""Durable per-conversation state in Redis, fenced by the input offsets it reflects."""
