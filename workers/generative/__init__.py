"""The generative worker: Qwen3Guard-Gen rulings on complete turns, a faust-streaming app."""
