"""``guardstream bench soak``: a short run writes its JSON, plot and table, and the worker survives
the hostile records mixed into the load."""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.config import Settings
from workers.cli import main


def test_a_short_soak_writes_samples_and_a_plot_and_the_worker_lives(
    settings: Settings, tiny_onnx_dir: Path, tmp_path: Path, capsys: object
) -> None:
    out = tmp_path / "soak"
    code = main(["bench", "soak", "--minutes", "0.4", "--sample-s", "4", "--rate", "40", "--hostile", "0.2",
                 "--model", str(tiny_onnx_dir), "--kafka-bootstrap", settings.kafka_bootstrap,
                 "--redis-url", settings.redis_url, "--partitions", "2", "--out", str(out)])
    assert code == 0
    payload = json.loads((out / "soak.json").read_text())
    assert payload["worker_exit_code"] is None
    assert len(payload["samples"]) >= 3
    assert payload["summary"]["hostile_records"] > 0
    assert all(s["worker_rss_mb"] > 0 for s in payload["samples"])
    assert (out / "soak.png").stat().st_size > 0
    assert "worker RSS" in capsys.readouterr().out  # type: ignore[attr-defined]
