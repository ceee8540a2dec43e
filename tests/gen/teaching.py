"""Make a Gen checkpoint whose plain greedy decode writes chosen rulings (by overfitting a tiny one).

Used to test that constrained decoding equals unconstrained greedy decoding wherever the latter is
already well-formed: a random checkpoint never writes a well-formed ruling on its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from pipeline.gen.checkpoint import GenModel, load_gen_model, write_gen_tokenizer
from pipeline.gen.render import ModerationRequest, render_ids


def teach_rulings(base: Path, lessons: Sequence[tuple[ModerationRequest, str]], out: Path,
                  steps: int = 60, seed: int = 0) -> GenModel:
    """Overfit ``base`` so that greedy decoding of each request writes its ruling text then <|im_end|>."""
    torch.manual_seed(seed)
    gen = load_gen_model(str(base), device="cpu", dtype="fp32")
    model, tokenizer = gen.model, gen.tokenizer
    end = gen.eos_token_ids[0]
    examples = []
    for request, ruling in lessons:
        prompt = render_ids(tokenizer, request.turns)
        target = [*tokenizer(ruling, add_special_tokens=False)["input_ids"], end]
        examples.append((torch.tensor([prompt + target]), len(prompt)))
    model.train()
    # The (tied) embedding stays fixed: the layers learn to steer into it, and the step stays cheap.
    model.get_input_embeddings().weight.requires_grad_(False)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(steps):
        optimizer.zero_grad()
        total = torch.zeros(())
        for ids, start in examples:
            # Only the positions that predict the ruling: the full-vocabulary logits are the cost.
            keep = ids.shape[1] - start + 1
            logits = model(input_ids=ids, logits_to_keep=keep).logits[0, :-1]
            total = total + torch.nn.functional.cross_entropy(logits, ids[0, start:])
        total.backward()
        optimizer.step()
    model.eval()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    for name in ("config.json", "generation_config.json"):
        (out / name).write_bytes((base / name).read_bytes())
    write_gen_tokenizer(out, base)
    return load_gen_model(str(out), device="cpu", dtype="fp32")
