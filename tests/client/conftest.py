"""The stream worker fixtures, shared with tests/worker."""

from tests.worker.conftest import start_worker

__all__ = ["start_worker"]
