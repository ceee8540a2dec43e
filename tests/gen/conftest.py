"""Gen fixtures: a random tiny Gen checkpoint (session), its loaded model and a moderator."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.config import Settings
from pipeline.gen.checkpoint import GenModel, init_random_gen, load_gen_model
from pipeline.gen.moderator import GenModerator
from pipeline.kafka import delete_topics
from workers.generative.app import TABLE_NAME


@pytest.fixture(scope="package", autouse=True)
def one_torch_thread() -> Iterator[None]:
    """Tiny models on a shared host: one intra-op thread is many times faster than spinning several."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def gen_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return init_random_gen(tmp_path_factory.mktemp("gen") / "gen-tiny", size="tiny", seed=0)


@pytest.fixture(scope="session")
def gen_model(gen_checkpoint: Path) -> GenModel:
    return load_gen_model(str(gen_checkpoint), device="cpu", dtype="fp32")


@pytest.fixture(scope="session")
def gen_moderator(gen_model: GenModel) -> Iterator[GenModerator]:
    yield GenModerator(gen_model, context_tokens=8192)


@pytest.fixture
def gen_settings(settings: Settings, gen_checkpoint: Path) -> Iterator[Settings]:
    """Settings of a generative worker on this test's topics; its changelog and assignor topics go afterwards."""
    gen = settings.replace(model=str(gen_checkpoint), max_context_tokens=1024, gen_max_batch=4)
    yield gen
    group = gen.generative_group
    delete_topics(gen, [f"{group}-{TABLE_NAME}-changelog", f"{group}-__assignor-__leader"])
