"""The container images, checked by reading their Dockerfiles (no Docker engine is needed)."""

from __future__ import annotations

import fnmatch
import re
import tomllib
from pathlib import Path

import pytest

from pipeline.config import Settings, env_var, settings_fields
from pipeline.ops.server import HEALTH_PATH
from tests.deploy.dockerfiles import Stage, env_assignments, read_stages
from tests.deploy.rendering import REPO_ROOT
from workers.cli import build_parser

DOCKER_DIR = REPO_ROOT / "deploy" / "docker"
DOCKERFILES = sorted(DOCKER_DIR.glob("*.Dockerfile"))
PYPROJECT = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))
BUILD_TOOLS = ("gcc", "g++", "build-essential", "make", "python3-pip", "python3-venv", "python3-dev", "git")


def final_stage(path: Path) -> Stage:
    return read_stages(path)[-1]


def test_there_is_a_cpu_and_a_cuda_stream_image_and_a_generative_image() -> None:
    assert {p.name for p in DOCKERFILES} == {"stream-cpu.Dockerfile", "stream-cuda.Dockerfile", "generative.Dockerfile"}


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_image_runs_as_a_numeric_non_root_user(dockerfile: Path) -> None:
    users = final_stage(dockerfile).of("USER")
    assert users, "the final stage never switches away from root"
    uid, _, gid = users[-1].value.partition(":")
    assert uid.isdigit() and int(uid) > 0, "Kubernetes' runAsNonRoot can only verify a numeric UID"
    assert not gid or (gid.isdigit() and int(gid) > 0)


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_image_is_multi_stage_with_no_build_tools_in_the_final_stage(dockerfile: Path) -> None:
    stages = read_stages(dockerfile)
    assert len(stages) >= 2
    final = stages[-1]
    assert any("--from=" in c.value and "/opt/venv" in c.value for c in final.of("COPY"))
    for run in final.of("RUN"):
        assert "pip install" not in run.value
        installed = re.findall(r"apt-get install ([^&]*)", run.value)
        packages = {w for group in installed for w in group.split() if not w.startswith("-")}
        assert packages.isdisjoint(BUILD_TOOLS), packages


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_every_pip_install_leaves_no_cache(dockerfile: Path) -> None:
    for stage in read_stages(dockerfile):
        for run in stage.of("RUN"):
            for command in run.value.split("&&"):
                if "pip install" in command:
                    assert "--no-cache-dir" in command, command


def test_cuda_image_ends_with_onnxruntime_gpu_only() -> None:
    (gpu_requirement,) = PYPROJECT["project"]["optional-dependencies"]["gpu"]
    assert gpu_requirement.startswith("onnxruntime-gpu")
    build = read_stages(DOCKER_DIR / "stream-cuda.Dockerfile")[0]
    steps = [c.strip() for run in build.of("RUN") for c in run.value.split("&&")]
    install_all = next(i for i, s in enumerate(steps) if 'pip install --no-cache-dir ".[gpu]"' in s)
    uninstall = next(i for i, s in enumerate(steps) if "pip uninstall" in s)
    reinstall = next(i for i, s in enumerate(steps) if "--no-deps" in s and "pip install" in s)
    assert install_all < uninstall < reinstall
    assert {"onnxruntime", "onnxruntime-gpu"} <= set(steps[uninstall].split())
    # The reinstall reads the requirement from the same pyproject key the test read.
    assert '["optional-dependencies"]["gpu"][0]' in " ".join(steps)


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_image_guard_variables_are_settings(dockerfile: Path) -> None:
    names = {f.name for f in settings_fields()}
    for stage in read_stages(dockerfile):
        for key, value in env_assignments(stage).items():
            if key.startswith("GUARD_"):
                field = key.removeprefix("GUARD_").lower()
                assert field in names and env_var(field) == key, key
                assert value


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_default_command_is_a_valid_guardstream_command(dockerfile: Path) -> None:
    final = final_stage(dockerfile)
    (entrypoint,) = [i.exec_form() for i in final.of("ENTRYPOINT")]
    (cmd,) = [i.exec_form() for i in final.of("CMD")]
    assert entrypoint == ["guardstream"] and cmd is not None
    assert cmd[0] == "worker"
    build_parser().parse_args(cmd)


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_healthcheck_asks_the_health_endpoint_on_the_metrics_port(dockerfile: Path) -> None:
    (check,) = final_stage(dockerfile).of("HEALTHCHECK")
    command = " ".join(check.exec_form() or [])
    assert HEALTH_PATH in command and env_var("metrics_port") in command
    assert f"'{Settings().metrics_port}'" in command
    assert str(Settings().metrics_port) in {i.value for i in final_stage(dockerfile).of("EXPOSE")}


def dockerignore_excludes(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last matching pattern decides; `!` re-includes."""
    excluded = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        body = pattern.lstrip("!").rstrip("/")
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(fnmatch.fnmatchcase(p, body) for p in prefixes) or fnmatch.fnmatchcase(path, body):
            excluded = not negated
    return excluded


def test_dockerignore_sends_the_sources_and_nothing_heavy() -> None:
    patterns = [
        line.strip()
        for line in (REPO_ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    copied = {
        word
        for dockerfile in DOCKERFILES
        for stage in read_stages(dockerfile)
        for copy in stage.of("COPY")
        if "--from=" not in copy.value
        for word in copy.value.split()[:-1]
    }
    assert copied
    for source in copied:
        assert not dockerignore_excludes(source.rstrip("/"), patterns), source
        assert (REPO_ROOT / source).exists(), source
    for heavy in (".venv/bin/python", ".git/HEAD", ".guardstream/bin/kustomize", "models/x", "tests/conftest.py"):
        assert dockerignore_excludes(heavy, patterns), heavy
