"""The stream worker: guard.in -> Qwen3Guard-Stream (ONNX, incremental KV) -> guard.verdicts."""
