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
  # code_order "columns": the decoder writes the 8x8 code grid column by column, left to
  # right, the order in which captions list the objects (validation overall after 4,000
  # steps, 200 captions: 0.33 against 0.28 row by row, at temperature 0.7 and scale 2).
  # Evaluation samples with temperature/top_k/top_p at each of eval_cfg_scales; cfg_scale
  # is the one whose metrics are reported unprefixed. Temperature 0.7 at scale 2 scored
  # 0.33 where temperature 1 at scale 3 scored 0.15 (same checkpoint and captions).
  c.objective = dict(kind="text_to_image", image_tokenizer="workdirs/shapes_vqvae",
                     max_caption_len=23, caption_dropout=0.1, cfg_scale=2.0,
                     eval_cfg_scales=(1.0, 1.5, 2.0, 3.0), temperature=0.7, top_k=0,
                     top_p=1.0, code_order="columns", code_positions=True)
  # A text-to-image row never shows its image, so the model runs without the encoder and
  # projector; frozen, they get no optimizer state or update either.
  c.optimizer.frozen = ("vit", "projector")
  # 75 tokenizer ids + 1024 codes = 1099, padded to a multiple of 128.
  c.model.vocab_size = 1152
  c.evals.update(final_splits=("test",), num_samples_to_print=2)
  if not arg:
    # Without the encoder and image tokens a step is ~30% cheaper than captioning's (4.9
    # against 6.9 GFLOP; median ~100 ms on 2 idle cores), and validation accuracy still
    # rose from 9,000 to 12,000 steps: 15,000 steps (240k captions), ~30 min with evals.
    c.train.update(steps=15000, checkpoint_every=3000)
    c.evals.every = 3000
  if arg == "tiny":
    c.objective.image_tokenizer = "workdirs/shapes_vqvae_tiny"
    c.model.vocab_size = 256  # The tiny VQ-VAE has 64 codes: 75 + 64 fit.
  return c
