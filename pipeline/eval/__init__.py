"""``guardstream eval``: the Qwen3Guard report's streaming metrics on a labelled set (docs/eval.md)."""
