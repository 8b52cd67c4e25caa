"""Install pyro_causalvae: ``pip install .`` (add ``[test]`` for the test suite and the notebooks,
``[docs]`` for the documentation).

Python 3.11, 3.12 and 3.13 are tested in CI (``.ci/run``): Python 3.11 gets ArviZ 0.23 (``InferenceData``),
Python >= 3.12 ArviZ >= 1.0 (``xarray.DataTree``); ``pyro_causalvae.analysis`` works with both."""

from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
version = {}
exec((HERE / "pyro_causalvae" / "_version.py").read_text(), version)

setup(
    name="pyro_causalvae",
    version=version["__version__"],
    description="CausalVAE as a first-class Pyro program: structural-equation latent sites, "
    "interventions with poutine.do, counterfactuals, ground-truth causal image simulators.",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.11",
    packages=find_packages(include=["pyro_causalvae", "pyro_causalvae.*"]),
    install_requires=[
        "torch>=2.1",
        "torchvision>=0.16",
        "pyro-ppl>=1.9",
        "arviz>=0.23",  # 0.23 (Python 3.11) and >= 1.0 (Python >= 3.12) are tested
        "xarray>=2024.10",  # xarray.DataTree (imported by pyro_causalvae._arviz)
        "networkx>=3.0",
        "matplotlib>=3.7",
        "tqdm>=4.60",
        "numpy>=1.24",
    ],
    extras_require={
        "chirho": ["chirho>=0.2"],
        "test": ["pytest>=7", "hypothesis>=6.80", "graphviz>=0.20", "chirho>=0.2", "nbmake>=1.5"],
        "docs": ["sphinx>=7", "myst-nb>=1.0", "furo>=2024.1"],
        # benchmarks/scale.py's comparison only; never imported by the library
        "bench": ["dagma>=1.1", "causal-learn>=0.1.3", "lingam>=1.8", "scikit-learn>=1.0"],
    },
    entry_points={"console_scripts": ["pyro-causalvae=pyro_causalvae.cli:main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Programming Language :: Python :: 3 :: Only",
        "Programming Language :: Python :: 3.11",
        "Programming Language :: Python :: 3.12",
        "Programming Language :: Python :: 3.13",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
