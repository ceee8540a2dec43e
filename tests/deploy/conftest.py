"""Fixtures of the deploy tests: kustomize and the rendered kustomizations (built once per session)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.deploy.rendering import (
    KUSTOMIZATIONS,
    REQUIRE_ENV,
    KustomizeMissing,
    Rendered,
    find_kustomize,
    kustomize_build,
    kustomize_required,
)

SKIP_NOTICE = "NOTICE: manifest-rendering tests skipped"


@pytest.fixture(scope="session")
def kustomize() -> Path:
    """kustomize, or a skip with a notice where it cannot be had (no Go); CI sets GUARD_REQUIRE_KUSTOMIZE=1."""
    try:
        return find_kustomize()
    except KustomizeMissing as exc:
        if kustomize_required():
            pytest.fail(f"{exc} ({REQUIRE_ENV}=1)")
        pytest.skip(f"{SKIP_NOTICE}: {exc}")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The skip is said at the end of the run, not only as an 's' among the dots."""
    skipped = [r for r in terminalreporter.stats.get("skipped", []) if SKIP_NOTICE in str(r.longrepr)]
    if skipped:
        terminalreporter.write_sep("=", f"{SKIP_NOTICE} ({len(skipped)}): kustomize is not installed", yellow=True)
        terminalreporter.write_line("run deploy/tools/install-kustomize.sh (or `make tools`) to render and check "
                                    f"the Kubernetes manifests; {REQUIRE_ENV}=1 turns this into a failure")


@pytest.fixture(scope="session")
def rendered_all(kustomize: Path) -> dict[str, Rendered]:
    return {name: Rendered(name, kustomize_build(kustomize, path)) for name, path in KUSTOMIZATIONS.items()}


@pytest.fixture(params=["base", "dev", "prod"])
def workers_rendered(request: pytest.FixtureRequest, rendered_all: dict[str, Rendered]) -> Rendered:
    """Each kustomization that deploys the workers."""
    return rendered_all[request.param]
