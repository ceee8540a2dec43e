"""The import contracts in pyproject.toml ([tool.importlinter]) hold: schemas <- pipeline <- workers."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _lint_imports() -> subprocess.CompletedProcess[str]:
    exe = shutil.which("lint-imports") or str(Path(sys.executable).with_name("lint-imports"))
    return subprocess.run([exe], cwd=REPO, capture_output=True, text=True, timeout=300)


def test_every_import_contract_is_kept() -> None:
    result = _lint_imports()
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout


def test_a_pipeline_module_importing_workers_breaks_the_layers_contract(tmp_path: Path) -> None:
    # The contract must be able to fail: a throwaway module in pipeline/ that imports workers.
    probe = REPO / "pipeline" / "_layering_probe.py"
    probe.write_text("import workers.cli  # noqa: F401\n")
    try:
        result = _lint_imports()
    finally:
        probe.unlink()
    assert result.returncode != 0
    assert "pipeline._layering_probe -> workers.cli" in result.stdout
