"""The VQ-VAE image tokenizer of text-to-image generation, on the embedded `shapes` dataset.

  python -m gpt4v_jax.main --config=configs/shapes_vqvae.py --workdir=workdirs/shapes_vqvae
  python -m gpt4v_jax.main --config=configs/shapes_vqvae.py:tiny --workdir=/tmp/t

The argument picks a variant, as in shapes_caption: "" (the default CPU run) or "tiny" (a
seconds-long smoke run, used by the tests). configs/shapes_t2i.py names the workdir of this
run as its tokenizer.
"""
import ml_collections

from configs import shapes_caption


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  base = shapes_caption.get_config(arg)  # Same data, mesh and sharding rules.
  c.data = base.data
  c.data.global_batch_size = 32
  c.objective = dict(kind="vqvae", beta=0.25)

  # 8x8 codes of a 1024-entry codebook: a 64-token image for the decoder (fewer codes
  # reconstructed worse, a 16x16 grid costs 256 tokens per image).
  # Dead codes (EMA count < 0.1 assignments per batch) restart at poorly served latents.
  # local_encoder: a code depends on its own 8x8 patch alone (models/vqvae.py, Encoder.local),
  # so equal patches get equal codes and the text-to-image decoder models the scene, not the
  # encoder's context noise. Probes and runs behind both: docs/text_to_image.md.
  c.model = dict(channels=64, min_channels=16, num_res_blocks=2, downsample=8, num_codes=1024,
                 code_dim=64, codebook_update="ema", decay=0.99, epsilon=1e-5,
                 dead_code_threshold=0.1, dtype="float32", local_encoder=True)
  c.init = base.init
  c.mesh = base.mesh
  c.sharding_rules = base.sharding_rules
  # A constant learning rate after warmup, as in the probes; no weight decay (the encoder's
  # outputs are matched to the codebook, whose scale weight decay would fight); clipping only
  # catches blow-ups.
  c.optimizer = dict(learning_rate=1e-3, warmup_steps=100, end_learning_rate_fraction=1.0,
                     b1=0.9, b2=0.999, weight_decay=0.0, grad_clip_norm=100.0, frozen=())
  # Logging, checkpointing and evals as in shapes_caption (its tiny variant for "tiny"),
  # except for the run length, the schedule and the splits below.
  c.train = base.train
  c.evals = base.evals
  c.evals.update(final_splits=("test",), num_samples_to_print=2)
  if not arg:
    # 8,000 steps (256k images): about 25 min on 2 CPU cores, and twice the steps
    # reconstruct better than 4,000 (results: docs/text_to_image.md).
    c.train.update(steps=8000, checkpoint_every=2000)
    c.evals.every = 2000

  if arg == "tiny":
    c.data.global_batch_size = 16
    c.model.update(channels=16, min_channels=8, num_res_blocks=1, num_codes=64, code_dim=16)
    c.optimizer.warmup_steps = 2
  return c
