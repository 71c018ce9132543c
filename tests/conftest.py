"""Shared test setup: quiet TensorFlow, the repo root importable, the `slow` marker."""
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import pytest  # noqa: E402


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: takes more than a few seconds (deselect with -m 'not slow')")


@pytest.fixture
def data_dir(tmp_path):
    """An empty TFDS data dir of the test's own."""
    path = tmp_path / "tfds"
    path.mkdir()
    return path
