"""Captioning on `shapes` from a pretrained vision tower and language model, in LLaVA's two
stages (README, "Pretrained models").

  python -m gpt4v_jax.main --config=configs/pretrained_caption.py:stage1 \
      --workdir=workdirs/pretrained_stage1
  python -m gpt4v_jax.main --config=configs/pretrained_caption.py:stage2 \
      --workdir=workdirs/pretrained_stage2

The checkpoints are local Hugging Face directories; nothing is downloaded at run time. The
defaults are SigLIP-B/16 at 224 px and SmolLM2-135M (nanoVLM's pair), fetched once with
  huggingface-cli download google/siglip-base-patch16-224 \
      --local-dir checkpoints/siglip-base-patch16-224
  huggingface-cli download HuggingFaceTB/SmolLM2-135M --local-dir checkpoints/SmolLM2-135M
Any supported pair works: --config.model.vision_checkpoint=DIR
--config.model.language_checkpoint=DIR --config.tokenizer=hf:DIR (the decoder's own tokenizer)
--config.data.image_size=N (the tower's resolution) --config.model.vocab_size=M (>= the
decoder's vocabulary plus our 16 special ids; the first run says the minimum).

Arguments: "stage1" or "stage2", optionally ",tiny" (seconds-long runs on the tiny dataset; the
tests give them two small random checkpoints). These runs are for an accelerator: SigLIP-B plus
a 135M decoder over 196 image tokens is ~100x the default caption model's step.
"""
import ml_collections

from configs import shapes_caption

CHECKPOINTS = dict(vision="checkpoints/siglip-base-patch16-224",
                   language="checkpoints/SmolLM2-135M")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  stage, _, size = (arg or "").partition(",")
  if stage not in ("stage1", "stage2") or size not in ("", "tiny"):
    raise ValueError(f"Unknown config variant {arg!r}; expected 'stage1' or 'stage2', "
                     "optionally followed by ',tiny'.")
  c = shapes_caption.get_config(size)
  c.tokenizer = "hf:" + CHECKPOINTS["language"]
  # SigLIP's processor: the whole image squashed to 224x224, bicubic, scaled to [-1, 1].
  c.data.update(image_size=224, resize="squash", normalize="minus_one_to_one")
  # A shapes caption is <= 119 bytes: <= 40 BPE tokens with BOS, task token and EOS.
  c.objective.max_text_len = 40
  c.model.update(
      vision_checkpoint=CHECKPOINTS["vision"], language_checkpoint=CHECKPOINTS["language"],
      # LLaVA-1.5's projector: Linear-GELU-Linear from the tower's width to the decoder's.
      projector="mlp",
      # SmolLM2's 49,152 ids + our 16, rounded up to a multiple of 128.
      vocab_size=49280)
  c.init = dict(workdir="", params=())
  if stage == "stage1":
    # Only the projector learns: image tokens move into the decoder's embedding space while
    # the pretrained language model stays as it was (LLaVA's feature alignment stage).
    c.optimizer.update(frozen=("vit", "decoder"), learning_rate=1e-3, warmup_steps=100)
    c.train.update(steps=1000, checkpoint_every=500)
  else:
    # Everything from stage 1's run; the decoder now learns too, at a finetuning rate, and
    # the vision tower stays frozen as in LLaVA-1.5 (--config.optimizer.frozen='()' trains
    # it as well).
    c.init = dict(workdir="workdirs/pretrained_stage1", params=("vit", "projector", "decoder"))
    c.optimizer.update(frozen=("vit",), learning_rate=2e-5, warmup_steps=50)
    c.train.update(steps=2000, checkpoint_every=1000)
  c.evals.every = c.train.checkpoint_every
  if size == "tiny":
    c.train.update(steps=4, log_every=2, checkpoint_every=4)
    c.evals.update(every=4)
  return c
