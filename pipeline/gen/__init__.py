"""Qwen3Guard-Gen: checkpoints, rendering through the checkpoint's template, constrained rulings."""
