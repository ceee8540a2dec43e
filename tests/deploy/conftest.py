"""Fixtures of the deploy tests: kustomize and the rendered kustomizations (built once per session)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.deploy.rendering import KUSTOMIZATIONS, KustomizeMissing, Rendered, find_kustomize, kustomize_build


@pytest.fixture(scope="session")
def kustomize() -> Path:
    try:
        return find_kustomize()
    except KustomizeMissing as exc:
        pytest.fail(str(exc))


@pytest.fixture(scope="session")
def rendered_all(kustomize: Path) -> dict[str, Rendered]:
    return {name: Rendered(name, kustomize_build(kustomize, path)) for name, path in KUSTOMIZATIONS.items()}


@pytest.fixture(params=["base", "dev", "prod"])
def workers_rendered(request: pytest.FixtureRequest, rendered_all: dict[str, Rendered]) -> Rendered:
    """Each kustomization that deploys the workers."""
    return rendered_all[request.param]
