"""Text-to-image generation on the embedded `shapes` dataset: the decoder writes the VQ-VAE
codes of an image after its caption.

  python -m gpt4v_jax.main --config=configs/shapes_caption.py --workdir=workdirs/shapes_caption
  python -m gpt4v_jax.main --config=configs/shapes_vqvae.py --workdir=workdirs/shapes_vqvae
  python -m gpt4v_jax.main --config=configs/shapes_t2i.py --workdir=workdirs/shapes_t2i
  python -m gpt4v_jax.main --config=configs/shapes_t2i.py:tiny --workdir=/tmp/t \
      --config.objective.image_tokenizer=/tmp/vq_tiny

The tokenizer and caption runs come first: `objective.image_tokenizer` names the tokenizer's
workdir, `init.workdir` the caption run's (the default takes its encoder and projector), and
a missing or unfinished one is an error before anything compiles. The argument picks a
variant, as in shapes_caption: "" (the default CPU run) or "tiny" (a seconds-long smoke run,
used by the tests, with the tiny VQ-VAE of `shapes_vqvae.py:tiny`). Data, model, mesh and
optimizer are shapes_caption's, imported from there; the vocabulary grows by the 1024 image
codes.
"""
import ml_collections

from configs import shapes_caption


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = shapes_caption.get_config(arg)
  # Rows: [BOS][t2i] caption (<= 23 tokens, every caption fits) [BOI] 64 codes [EOI].
  # caption_dropout: the share of rows without their caption, for classifier-free guidance.
  # code_order "columns": the decoder writes the 8x8 code grid column by column, left to
  # right, the order in which captions list the objects (better than row order).
  # Evaluation samples with temperature/top_k/top_p at each of eval_cfg_scales; cfg_scale
  # is the one whose metrics are reported unprefixed. Temperature 0.5 at scale 1.75 was the
  # best pair on validation captions.
  # code_embedding_init "codebook": code embeddings start from the VQ-VAE's codebook, so
  # codes that draw alike start alike. Measurements behind each: docs/text_to_image.md.
  c.objective = dict(kind="text_to_image", image_tokenizer="workdirs/shapes_vqvae",
                     max_caption_len=23, caption_dropout=0.1, cfg_scale=1.75,
                     eval_cfg_scales=(1.0, 1.5, 1.75, 2.0, 3.0), temperature=0.5, top_k=0,
                     top_p=1.0, code_order="columns", code_positions=True,
                     code_embedding_init="codebook")
  # A text-to-image row never shows its image, so the model runs without the encoder and
  # projector; frozen, they get no optimizer state or update either.
  c.optimizer.frozen = ("vit", "projector")
  # 75 tokenizer ids + 1024 codes = 1099, padded to a multiple of 128.
  c.model.vocab_size = 1152
  c.evals.update(final_splits=("test",), num_samples_to_print=2)
  if not arg:
    # 3 decoder layers: a third layer did better than 2 at equal training time. Without the
    # encoder and image tokens a step stays cheap: 12,500 steps (200k captions) fit about
    # half an hour of 2 CPU cores (timings and results: docs/text_to_image.md).
    c.model.depth = 3
    c.train.update(steps=12500, checkpoint_every=2500)
    # The frozen encoder and projector are the caption run's: unused here (no row shows its
    # image), they make this run's checkpoint a model that can also see, which
    # shapes_multitask starts from. The decoder trains exactly as from a fresh encoder.
    c.init = dict(workdir="workdirs/shapes_caption", params=("vit", "projector"))
    c.evals.every = 2500
  if arg == "tiny":
    c.objective.image_tokenizer = "workdirs/shapes_vqvae_tiny"
    c.model.vocab_size = 256  # The tiny VQ-VAE has 64 codes: 75 + 64 fit.
  return c
