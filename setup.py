"""Install dwi_ml and one console command per script of scripts_python/."""
import glob
import os

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))


def _console_scripts():
    # Each scripts_python/NAME.py runs dwi_ml.cli.NAME:main through
    # dwi_ml.launcher (a stop signal while it imports is one line); the
    # installed command keeps the .py name that users know.
    names = sorted(os.path.splitext(os.path.basename(path))[0] for path in
                   glob.glob(os.path.join(HERE, "scripts_python", "*.py")))
    return [f"{name}.py = dwi_ml.launcher:{name}" for name in names]


setup(
    name="dwi_ml",
    version="0.1.0",
    description="Train PyTorch models on diffusion-MRI tractography.",
    long_description=open(os.path.join(HERE, "README.md")).read(),
    long_description_content_type="text/markdown",
    # 3.10: sys.orig_argv, with which `python -m dwi_ml.cli.NAME` records
    # stop signals while it imports (3.9 ended in October 2025, and
    # comet_ml's last releases for it need setuptools < 82).
    python_requires=">=3.10",
    packages=find_packages(include=["dwi_ml", "dwi_ml.*"]),
    install_requires=[
        # 2.6: torch.nn.utils.get_total_norm (the gradient norm after clipping).
        "torch>=2.6",
        "numpy>=1.23",
        # 3.10: wheels with HDF5 >= 1.12.3, whose chunk_iter the lazy
        # reads use to read raw chunks (else a slower path).
        "h5py>=3.10",
        "scipy>=1.8",
        "nibabel>=5.0",
        "dipy>=1.9",
        "trx-python>=0.3",
        "tqdm>=4.60",
        # 3.35 - 3.38 import pkg_resources, gone from setuptools 82; the
        # tests use a debug flag of 3.47.1.
        "comet_ml>=3.47.1",
        "matplotlib>=3.6",
    ],
    extras_require={
        # The tests build the docs too, so that they never break unseen.
        "test": ["pytest>=7", "pytest-xdist>=3", "ruff", "sphinx>=7",
                 "myst-parser>=2"],
        "docs": ["sphinx>=7", "myst-parser>=2"],
    },
    entry_points={"console_scripts": _console_scripts()},
)
