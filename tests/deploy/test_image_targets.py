"""`make images` / `make push` build and push exactly the images, with the tags, the overlays deploy."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
import yaml

from tests.deploy.rendering import K8S_DIR, REPO_ROOT


def _overlay_images() -> set[str]:
    images = set()
    for kustomization in K8S_DIR.glob("overlays/**/kustomization.yaml"):
        for image in yaml.safe_load(kustomization.read_text()).get("images", []):
            images.add(f"{image['newName']}:{image['newTag']}")
    return images


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
@pytest.mark.parametrize("target", ["images", "push"])
def test_make_targets_use_the_overlays_image_names_and_tags(target: str) -> None:
    done = subprocess.run(["make", "-s", "-n", target, "DOCKER=echo-docker"], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=60, check=True)
    # `make -n` prints the loop; run it with the echo stand-in to get the real command lines.
    script = subprocess.run(["bash", "-c", done.stdout.replace("echo-docker", "echo docker")], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=60, check=True).stdout
    verb = "build" if target == "images" else "push"
    tagged = set(re.findall(rf"docker {verb} .*?(\S+/guardstream-[\w-]+:\S+)", script))
    assert tagged == _overlay_images()
    for image in tagged:
        name = image.rsplit(":", 1)[0].rsplit("/", 1)[1].removeprefix("guardstream-")
        assert (REPO_ROOT / "deploy" / "docker" / f"{name}.Dockerfile").is_file()
