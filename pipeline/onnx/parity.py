"""The exporter's acceptance check: the ONNX engine, run incrementally, against torch's full forward.

It imports the engine (and torch); the exporter imports it, the engine imports neither.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import UserError

# |ORT - torch| allowed in the post-export parity run, relative to max(1, |torch logits|).
PARITY_TOLERANCE = {"fp32": 1e-3, "fp16": 5e-2}


class ExportError(UserError):
    """The export or its validation failed; the message says what differed or what to fix."""


@dataclass(frozen=True)
class ParityReport:
    max_abs_diff: float
    tolerance: float
    argmax_equal: bool
    skipped: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"max_abs_diff": self.max_abs_diff, "tolerance": self.tolerance,
                "argmax_equal": self.argmax_equal, "skipped": self.skipped}


def check_parity(export_dir: Path, stream: Any, precision: str) -> ParityReport:
    """Two batched incremental steps of the ORT engine vs one torch forward per sequence.

    Sequences of different lengths in one batch exercise padding of new tokens and of the past;
    the second step continues from the cache. Raises ExportError with the max diff on mismatch.
    """
    import torch

    from pipeline.engine.types import FeedRequest
    from pipeline.onnx.engine import OnnxStreamEngine

    tolerance = PARITY_TOLERANCE[precision]
    vocab = int(stream.model.config.vocab_size)
    rng = np.random.default_rng(7)
    full = [rng.integers(0, vocab, size=n).tolist() for n in (9, 6)]
    steps = [[seq[: len(seq) - 3] for seq in full], full]
    try:
        engine = OnnxStreamEngine.from_dir(export_dir, device="cpu", warmup=False)
        got: list[list[np.ndarray]] = [[], []]
        for step in steps:
            starts = [len(got[i][0]) if got[i] else 0 for i in range(2)]
            results = engine.run([FeedRequest(f"parity-{i}", ids, starts[i]) for i, ids in enumerate(step)])
            for i, result in enumerate(results):
                rows = list(_as_tuple(result))
                got[i] = rows if not got[i] else [np.concatenate([a, b]) for a, b in zip(got[i], rows, strict=True)]
    except Exception as exc:
        if precision == "fp16" and "NOT_IMPLEMENTED" in str(exc):
            return ParityReport(float("nan"), tolerance, False, skipped=f"ORT CPU lacks an fp16 kernel: {exc}")
        raise ExportError(f"the exported graph failed to run in onnxruntime: {exc}") from exc
    worst, argmax_equal = 0.0, True
    with torch.no_grad():
        for i, seq in enumerate(full):
            reference = stream(torch.tensor([seq]))
            expected = [t[0].float().numpy() for t in (reference.risk_level_logits, reference.category_logits,
                                                       reference.query_risk_level_logits,
                                                       reference.query_category_logits)]
            for want, have in zip(expected, got[i], strict=True):
                scale = max(1.0, float(np.abs(want).max()))
                worst = max(worst, float(np.abs(want - have).max()) / scale)
                argmax_equal &= bool((want.argmax(-1) == have.argmax(-1)).all())
    if not worst <= tolerance:
        raise ExportError(
            f"parity failed: ONNX {precision} differs from torch by max |diff| {worst:.3e} "
            f"(tolerance {tolerance:.0e}); the export is not usable"
        )
    return ParityReport(worst, tolerance, argmax_equal)


def _as_tuple(result: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    return (result.risk_logits, result.category_logits, result.query_risk_logits, result.query_category_logits)
