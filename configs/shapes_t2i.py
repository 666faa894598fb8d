"""Text-to-image generation on the embedded `shapes` dataset: the decoder writes the VQ-VAE
codes of an image after its caption.

  python -m gpt4v_jax.main --config=configs/shapes_vqvae.py --workdir=workdirs/shapes_vqvae
  python -m gpt4v_jax.main --config=configs/shapes_t2i.py --workdir=workdirs/shapes_t2i
  python -m gpt4v_jax.main --config=configs/shapes_t2i.py:tiny --workdir=/tmp/t \
      --config.objective.image_tokenizer=/tmp/vq_tiny

The tokenizer run comes first: `objective.image_tokenizer` names its workdir, and a missing
or unfinished one is an error before anything compiles. The argument picks a variant, as in
shapes_caption: "" (the default CPU run) or "tiny" (a seconds-long smoke run, used by the
tests, with the tiny VQ-VAE of `shapes_vqvae.py:tiny`). Data, model, mesh and optimizer are
shapes_caption's, imported from there; the vocabulary grows by the 1024 image codes.
"""
import ml_collections

from configs import shapes_caption


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = shapes_caption.get_config(arg)
  # Rows: [BOS][t2i] caption (<= 23 tokens, every caption fits) [BOI] 64 codes [EOI].
  # caption_dropout: the share of rows without their caption, for classifier-free guidance.
  # Evaluation samples with temperature/top_k/top_p at each of eval_cfg_scales; cfg_scale
  # is the one whose metrics are reported unprefixed.
  c.objective = dict(kind="text_to_image", image_tokenizer="workdirs/shapes_vqvae",
                     max_caption_len=23, caption_dropout=0.1, cfg_scale=3.0,
                     eval_cfg_scales=(1.0, 3.0, 5.0), temperature=1.0, top_k=0, top_p=1.0)
  # 75 tokenizer ids + 1024 codes = 1099, padded to a multiple of 128.
  c.model.vocab_size = 1152
  c.evals.update(final_splits=("test",), num_samples_to_print=2)
  if arg == "tiny":
    c.objective.image_tokenizer = "workdirs/shapes_vqvae_tiny"
    c.model.vocab_size = 256  # The tiny VQ-VAE has 64 codes: 75 + 64 fit.
  return c
