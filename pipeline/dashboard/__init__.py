"""The live web view of what the guard is doing (docs/dashboard.md).

``state`` aggregates verdicts (and, when text is shown, deltas) into bounded per-conversation views;
``feed`` reads Kafka in a background thread; ``app`` serves the page, JSON and server-sent events.
"""
