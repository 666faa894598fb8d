"""The activation functions a config or a pretrained checkpoint may name, by one set of names.

  "gelu_tanh"   GELU, tanh approximation (flax's nn.gelu default, what our own models use;
                GPT-2's gelu_new, Gemma's and SigLIP's gelu_pytorch_tanh)
  "gelu"        GELU, exact (erf; ViT, LLaVA's projector)
  "quick_gelu"  x * sigmoid(1.702 x) (CLIP)
  "silu"        x * sigmoid(x) (Llama's SwiGLU gate)
  "relu"
"""
import functools

import flax.linen as nn

ACTIVATIONS = {
    "gelu_tanh": nn.gelu,
    "gelu": functools.partial(nn.gelu, approximate=False),
    "quick_gelu": lambda x: x * nn.sigmoid(1.702 * x),
    "silu": nn.silu,
    "relu": nn.relu,
}

# transformers' hidden_act names -> ours (gelu_new and gelu_pytorch_tanh are one formula).
HF_NAMES = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh",
            "quick_gelu": "quick_gelu", "silu": "silu", "swish": "silu", "relu": "relu"}


def get(name: str):
  """The function named `name`; ValueError naming the known ones otherwise."""
  if name not in ACTIVATIONS:
    raise ValueError(f"Unknown activation {name!r}; expected one of {sorted(ACTIVATIONS)}.")
  return ACTIVATIONS[name]
