from pathlib import Path

from setuptools import find_packages, setup

setup(
    name="hybridna",
    version="0.1.0",
    description="HybriDNA: a hybrid Mamba2 + attention DNA language model with hand-written Triton kernels",
    long_description=Path(__file__).with_name("README.md").read_text(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["hybridna", "hybridna.*", "hybridna_kernels", "hybridna_kernels.*"]),
    package_data={"hybridna": ["genomes/*.fa.gz"]},
    install_requires=[
        "torch>=2.4",
        "triton>=3.2",
        "einops",
        "numpy",
        "zarr>=3",
        "safetensors",
        "tqdm",
        "matplotlib",
    ],
    extras_require={
        # pytest-xdist: CI has 2 cores and the Triton interpreter is single-threaded numpy.
        "test": ["pytest", "pytest-benchmark", "pytest-xdist"],
        "bench": ["pytest", "pytest-benchmark", "matplotlib"],
    },
    entry_points={"console_scripts": ["hybridna=hybridna.cli:main"]},
)
