"""simclr-med: SimCLR / MICLe self-supervised pretraining for medical images (Keras 3)."""
from setuptools import find_packages, setup

setup(
    name="simclr-med",
    version="0.1.0",
    description="Keras 3 reference implementation of SimCLR/MICLe pretraining for medical image "
                "classification",
    packages=find_packages(include=["simclr_med", "simclr_med.*", "tfds_builders", "tfds_builders.*"]),
    python_requires=">=3.10,<3.13",
    install_requires=[
        # tensorflow-cpu keeps the install small on laptops/CI; on GPU hosts
        # `pip install tensorflow[and-cuda]==2.21.*` replaces it.
        "tensorflow-cpu==2.21.*; platform_machine=='x86_64'",
        "tensorflow==2.21.*; platform_machine!='x86_64'",
        "keras>=3.10,<4",
        "tensorflow-datasets>=4.9.9",
        "importlib_resources",  # imported by tensorflow-datasets but not declared by it
        "absl-py>=2.1",
        "numpy>=1.26",
        "pandas>=2.1",
        "scikit-learn>=1.4",
        "scipy>=1.11",
        "pillow>=10",
        "matplotlib>=3.8",
        "psutil>=5.9",
        "tensorboard>=2.20",  # tf.summary needs it; tensorflow-cpu 2.21 does not depend on it
    ],
    extras_require={"test": ["pytest>=8", "ruff>=0.6"]},
)
