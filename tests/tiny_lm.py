"""A tiny random GPT4V and right-padded prompts, shared by the decoding and sampling tests."""
import jax.numpy as jnp
import numpy as np

from configs import shapes_caption
from gpt4v_jax.models import gpt4v

VOCAB = 128
PROMPT_LEN = 5
PROMPT_LENGTHS = (5, 2, 3, 1)  # Valid prompt tokens per row, right-padded.
NEVER = VOCAB  # An eos_id the model cannot emit.


def model(depth: int, num_code_positions: int = 0) -> gpt4v.GPT4V:
  """num_code_positions > 0: ids from VOCAB // 2 up are image codes with position
  embeddings (`Decoder.num_code_positions`)."""
  cfg = shapes_caption.get_config().model
  # Untied unembedding: a random tied model mostly repeats its last input token, which would
  # make token comparisons weak tests.
  cfg.update(vit_variant="nano/16", width=64, depth=depth, mlp_dim=128, num_heads=4,
             num_kv_heads=1, vocab_size=VOCAB, tie_embeddings=False, projector="linear",
             mlp_type="gated")
  return gpt4v.build_model(cfg, code_ids=(VOCAB // 2, VOCAB),
                           num_code_positions=num_code_positions)


def inputs() -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
  """images [b, 64, 64, 3], prompt [b, p], prompt_mask [b, p]."""
  rng = np.random.default_rng(0)
  b = len(PROMPT_LENGTHS)
  images = jnp.asarray(rng.uniform(-1, 1, (b, 64, 64, 3)), jnp.float32)
  mask = np.arange(PROMPT_LEN)[None] < np.array(PROMPT_LENGTHS)[:, None]
  prompt = np.where(mask, rng.integers(1, VOCAB, (b, PROMPT_LEN)), 0)
  return images, jnp.asarray(prompt, jnp.int32), jnp.asarray(mask)
