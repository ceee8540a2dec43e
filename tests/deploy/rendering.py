"""Rendering the Kubernetes manifests with kustomize and walking what comes out."""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
K8S_DIR = REPO_ROOT / "deploy" / "k8s"
INSTALL_SCRIPT = REPO_ROOT / "deploy" / "tools" / "install-kustomize.sh"
LOCAL_KUSTOMIZE = REPO_ROOT / ".guardstream" / "bin" / "kustomize"
# Set to 1 (CI does, in .ci/run) to make a missing kustomize fail the deploy tests instead of skipping them.
REQUIRE_ENV = "GUARD_REQUIRE_KUSTOMIZE"
# A kustomize binary to use instead of the project's own install (e.g. a shared one).
KUSTOMIZE_ENV = "KUSTOMIZE"

# Every kustomization a user may build, by the name the tests use.
KUSTOMIZATIONS = {
    "base": K8S_DIR / "base",
    "topics": K8S_DIR / "topics",
    "dev": K8S_DIR / "overlays" / "dev",
    "prod": K8S_DIR / "overlays" / "prod",
    "redis": K8S_DIR / "redis",
}
SETTINGS_CONFIGMAP = "guardstream-settings"
SETTINGS_SECRET = "guardstream-secrets"
POLICIES_CONFIGMAP = "guardstream-policies"

Manifest = dict[str, Any]


class KustomizeMissing(RuntimeError):
    pass


def kustomize_required() -> bool:
    return os.environ.get(REQUIRE_ENV, "") == "1"


def find_kustomize() -> Path:
    """$KUSTOMIZE, else the project's pinned kustomize (deploy/tools/install-kustomize.sh), else one on PATH."""
    explicit = os.environ.get(KUSTOMIZE_ENV)
    if explicit:
        if not Path(explicit).is_file():
            raise KustomizeMissing(f"${KUSTOMIZE_ENV}={explicit} is not a file")
        return Path(explicit)
    if LOCAL_KUSTOMIZE.is_file():
        return LOCAL_KUSTOMIZE
    found = shutil.which("kustomize")
    if found:
        return Path(found)
    raise KustomizeMissing(
        f"kustomize is not installed; run {INSTALL_SCRIPT.relative_to(REPO_ROOT)} (or `make setup`), "
        f"which builds it from the Go module proxy into {LOCAL_KUSTOMIZE.parent.relative_to(REPO_ROOT)} "
        "(it needs Go >= 1.21, or fetches the Go toolchain itself)"
    )


def kustomize_build(kustomize: Path, directory: Path) -> list[Manifest]:
    done = subprocess.run(
        [str(kustomize), "build", str(directory)], capture_output=True, text=True, timeout=120, check=False
    )
    if done.returncode != 0:
        raise AssertionError(f"kustomize build {directory} failed:\n{done.stderr}")
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc is not None]


@dataclass(frozen=True)
class Rendered:
    """One kustomization's output, with lookups by kind and by base name (generators add hash suffixes)."""

    name: str
    manifests: list[Manifest]

    def of_kind(self, kind: str) -> list[Manifest]:
        return [m for m in self.manifests if m["kind"] == kind]

    def named(self, kind: str, base_name: str) -> Manifest | None:
        for m in self.of_kind(kind):
            name = m["metadata"]["name"]
            if name == base_name or name.rsplit("-", 1)[0] == base_name:
                return m
        return None

    def settings_environ(self) -> dict[str, str]:
        """The environment the worker containers get from the settings ConfigMap and Secret."""
        environ: dict[str, str] = {}
        configmap = self.named("ConfigMap", SETTINGS_CONFIGMAP)
        if configmap is not None:
            environ.update(configmap.get("data", {}))
        secret = self.named("Secret", SETTINGS_SECRET)
        if secret is not None:
            environ.update(secret_values(secret))
        return environ


def secret_values(secret: Manifest) -> dict[str, str]:
    values = {k: base64.b64decode(v).decode() for k, v in secret.get("data", {}).items()}
    values.update(secret.get("stringData", {}))
    return values


def pod_spec(workload: Manifest) -> dict[str, Any]:
    spec: dict[str, Any] = workload["spec"]["template"]["spec"]
    return spec


def pod_labels(workload: Manifest) -> dict[str, str]:
    labels: dict[str, str] = workload["spec"]["template"]["metadata"].get("labels", {})
    return labels


def containers(workload: Manifest, include_init: bool = True) -> Iterator[dict[str, Any]]:
    spec = pod_spec(workload)
    if include_init:
        yield from spec.get("initContainers", [])
    yield from spec["containers"]


def worker_container(deployment: Manifest) -> dict[str, Any]:
    (worker,) = [c for c in pod_spec(deployment)["containers"] if c["name"] == "worker"]
    return worker


def workloads(rendered: Rendered) -> list[Manifest]:
    return rendered.of_kind("Deployment") + rendered.of_kind("Job")


def selector_matches(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    wanted: dict[str, str] = selector.get("matchLabels", {})
    return bool(wanted) and all(labels.get(k) == v for k, v in wanted.items())
