"""Qwen3Guard-Stream on ONNX Runtime: export (needs torch) and the incremental engine (does not)."""
