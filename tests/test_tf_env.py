"""tf_env: the process settings TensorFlow reads at import."""
import os
import sys

import pytest

from simclr_med import tf_env

ALLOCATOR_VARS = ("TF_MKL_ALLOC_MAX_BYTES", "TF_CPU_ALLOCATOR_USE_BFC", "TF_CPU_BFC_MEM_LIMIT_IN_MB")


@pytest.fixture
def fresh_process(monkeypatch):
    """As if TensorFlow were not imported yet, in a copy of the environment without allocator variables
    (what the tests set must not reach the run.py processes other tests start)."""
    monkeypatch.delitem(sys.modules, "tensorflow")
    monkeypatch.setattr(os, "environ", {k: v for k, v in os.environ.items() if k not in ALLOCATOR_VARS})


@pytest.mark.parametrize("onednn, expected", [
    ("1", {"TF_MKL_ALLOC_MAX_BYTES": str(3 * 2**29), "TF_CPU_BFC_MEM_LIMIT_IN_MB": "1536"}),
    ("0", {"TF_MKL_ALLOC_MAX_BYTES": str(3 * 2**29), "TF_CPU_BFC_MEM_LIMIT_IN_MB": "1536",
           "TF_CPU_ALLOCATOR_USE_BFC": "1"}),
])
def test_host_memory_limit_caps_the_allocator_of_the_chosen_kernels(fresh_process, onednn, expected):
    os.environ["TF_ENABLE_ONEDNN_OPTS"] = onednn
    tf_env.limit_host_memory(1.5)
    assert {name: os.environ[name] for name in ALLOCATOR_VARS if name in os.environ} == expected


def test_no_limit_sets_nothing(fresh_process):
    tf_env.limit_host_memory(0)
    assert not any(name in os.environ for name in ALLOCATOR_VARS)


def test_a_limit_after_tensorflow_is_imported_is_refused():
    import tensorflow  # noqa: F401

    with pytest.raises(RuntimeError, match="before TensorFlow is imported"):
        tf_env.limit_host_memory(1.0)
