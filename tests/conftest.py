"""Shared test setup: quiet TensorFlow on run.py's kernels, the repo root importable, a built demo dataset."""
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from simclr_med import tf_env  # noqa: E402

tf_env.configure()  # the kernels run.py uses

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def demo_data_dir(tmp_path_factory):
    """A TFDS data dir with the `demo` dataset built once per session (~3 s):
    `datasets.load("demo", split, data_dir=demo_data_dir)`."""
    from simclr_med.data import datasets

    path = tmp_path_factory.mktemp("demo_data")
    datasets.builder_for("demo", path)
    return path
