"""gpt4v_jax: `Model` (load a trained model, generate, run its tasks) and `pipeline` (Hugging
Face-style task pipelines over it).

Both are imported on first use (module `__getattr__`), so `import gpt4v_jax.data...` stays
light: it does not pull in jax and the model code.
"""

__all__ = ["Model", "pipeline"]


def __getattr__(name: str):
  if name == "Model":
    from gpt4v_jax.model import Model
    return Model
  if name == "pipeline":
    from gpt4v_jax.pipelines import pipeline
    return pipeline
  raise AttributeError(f"module 'gpt4v_jax' has no attribute {name!r}")


def __dir__() -> list[str]:
  return sorted(list(globals()) + __all__)
