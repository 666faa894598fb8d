"""gpt4v_jax: one JAX/Flax model for captioning, VQA and text-to-image."""
import setuptools

# Exact pins: these versions were installed and tested together on Python 3.11.
CORE = [
    "jax==0.10.2",
    "jaxlib==0.10.2",
    "flax==0.12.8",
    "optax==0.2.8",
    "orbax-checkpoint==0.12.8",
    "tensorflow-datasets==4.9.10",
    "array_record==0.8.6",
    "grain==0.2.18",
    "ml-collections==1.1.0",
    "absl-py==2.5.1",
    "numpy==2.4.6",
    "pillow==13.0.0",
    "tensorboardX==2.6.5",
    "matplotlib==3.11.2",  # experiments/sweep.py's plots.
    # Text tokenizers: config.tokenizer="sentencepiece:..." (trained with
    # gpt4v_jax.data.train_tokenizer) and "hf:.../tokenizer.json".
    "sentencepiece==0.2.3",
    "tokenizers==0.22.2",  # transformers 4.57 (the tests' oracle) takes <= 0.23.0.
    "rouge-score==0.1.2",  # Summaries' ROUGE-1/2/L (objectives/prompt.py).
    # Captions' official PTB tokenization (needs Java; the built-in tokenizer otherwise).
    "pycocoevalcap==1.2",
    "safetensors==0.8.0",  # Exported model directories' params (gpt4v_jax/model_dir.py).
]
TEST = ["pytest==9.2.0",
        # Two workers (make test): the suite's end-to-end runs are single-threaded compiles
        # and process starts, which a second core overlaps (13.0 min on 2 cores, docs/tests.md).
        "pytest-xdist==3.8.0",
        # tests/test_colabs.py runs the notebooks headless.
        "nbclient==0.11.0", "nbformat==5.11.1", "ipykernel==7.4.0",
        "faiss-cpu==1.15.1",  # similarity.Index's optional backend="faiss"; never imported eagerly.
        # The oracle of tests/test_pretrained_*.py: random checkpoints built and run by
        # transformers (PyTorch, CPU). Never imported by the package.
        "torch==2.13.0", "transformers==4.57.6"]

setuptools.setup(
    name="gpt4v_jax",
    version="0.1.0",
    python_requires=">=3.11,<3.12",
    packages=setuptools.find_packages(include=["gpt4v_jax", "gpt4v_jax.*"]),
    install_requires=CORE,
    extras_require={"test": TEST},
)
