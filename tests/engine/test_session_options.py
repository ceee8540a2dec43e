"""ONNX Runtime session options: intra-op threads chosen per device and model size, no spinning by default."""

from __future__ import annotations

from pipeline.onnx.session import CPU, CUDA, PARALLEL_KV_WIDTH, intra_op_threads, session_options, usable_cores


def test_a_small_model_on_the_cpu_gets_one_intra_op_thread() -> None:
    assert intra_op_threads(None, [CPU], kv_width=32) == 1


def test_a_large_model_on_the_cpu_gets_every_usable_core() -> None:
    assert intra_op_threads(None, [CPU], kv_width=PARALLEL_KV_WIDTH * 4) == usable_cores()
    assert intra_op_threads(0, [CPU], kv_width=None) == usable_cores()


def test_on_cuda_host_threads_only_wait_so_there_is_one() -> None:
    assert intra_op_threads(None, [CUDA, CPU], kv_width=PARALLEL_KV_WIDTH * 4) == 1


def test_an_explicit_thread_count_wins() -> None:
    assert intra_op_threads(3, [CPU], kv_width=32) == 3
    assert intra_op_threads(3, [CUDA, CPU], kv_width=32) == 3


def test_pool_threads_sleep_between_ops_unless_spinning_is_asked_for() -> None:
    quiet = session_options(2)
    assert quiet.intra_op_num_threads == 2
    assert quiet.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert quiet.get_session_config_entry("session.inter_op.allow_spinning") == "0"
    spinning = session_options(2, spin_wait=True)
    assert spinning.get_session_config_entry("session.intra_op.allow_spinning") == "1"
