"""Image captioning on the embedded `shapes` dataset.

  python -m gpt4v_jax.main --config=configs/shapes_caption.py --workdir=workdirs/shapes_caption
  python -m gpt4v_jax.main --config=configs/shapes_caption.py:tiny --workdir=/tmp/t

The argument picks a variant: "" (the default CPU run, ~12 min of training on 2 cores) or "tiny" (a
seconds-long smoke run on the tiny dataset, used by the tests).
"""
import ml_collections

from gpt4v_jax import sharding


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  # The dataset's own 58 words and marks (`words:shapes`): a caption is <= 23 tokens where it
  # is <= 119 bytes, so rows are 4-5x shorter and the decoder never has to spell.
  c.tokenizer = "words:shapes"

  # name: "shapes" (embedded, built under data_dir on first use), or a user's data at `path`:
  # "folder", "coco_captions", "vqav2" (README, "Your own data"), converted once into data_dir.
  # Images: resized to image_size x image_size ("squash", "pad", "crop" or "resize_crop";
  # shapes' 64x64 PNGs are used as they are) with `resample` ("bicubic", "bilinear",
  # "nearest"), normalised ("minus_one_to_one", "imagenet", "clip"); files
  # over max_pixels are bad examples (decompression bombs). Train-time augmentation:
  # random_resized_crop=(min_area, max_area) of the image, () for none; hflip stays off
  # because captions and questions say left and right.
  # on_bad_example: "skip" (counted in train/skipped_examples) or "error"; captions longer
  # than the text row are cut and counted in train/truncated_texts.
  c.data = dict(name="shapes", path="", data_dir="data_dir", builder_config="default",
                train_split="train", image_size=64, resize="squash", resample="bicubic",
                normalize="minus_one_to_one", max_pixels=64_000_000, random_resized_crop=(),
                hflip=False, global_batch_size=16, num_threads=2, on_bad_example="skip")
  # Text row: BOS, task token, caption (<= 23 words and marks, over all splits), EOS.
  c.objective = dict(kind="caption", prompt="", max_text_len=26)

  c.model = dict(
      # 16x16 patches: 16 image tokens keep the decoder's sequence short on a CPU.
      # encoder: "vit", or "cnn" (the ResNet stem alone, `vit_stem_blocks` residual blocks
      # per stage, down to the variant's width and patch grid: a plain ResNet-style encoder).
      encoder="vit", vit_variant="mu/16", vit_stem="patch", vit_stem_blocks=1,
      projector="linear",
      projector_merge=1,
      # image_positions: "sincos2d" adds a fixed 2D sin-cos embedding of each image token's
      # place on the patch grid after the projector, so the values the decoder reads say
      # where (relation questions need it: docs/vqa.md); "none": only the encoder's own.
      image_positions="sincos2d",
      # fusion: "prefix" (image tokens lead the decoder's sequence) or "cross_attention"
      # (Flamingo: gated cross-attention blocks before every cross_attention_every-th block).
      fusion="prefix", cross_attention_every=1,
      # resampler_latents > 0: a Perceiver resampler of resampler_depth layers turns the
      # image tokens into that many learned latents (Flamingo); 0: none.
      resampler_latents=0, resampler_depth=1,
      # Local Hugging Face directories (README, "Pretrained models"), "" for none: the ViT or
      # the decoder is then built from that config.json (the keys describing it here go
      # unused) and a fresh run starts from its weights; the projector always starts fresh.
      vision_checkpoint="", language_checkpoint="",
      vocab_size=128,  # 75 tokenizer ids, padded to a multiple of 128 for sharding.
      # Two decoder layers learn as much per example as four at 57% of the step FLOPs, so the
      # time buys more examples (measured: docs/experiments.md, docs/caption.md).
      width=128, depth=2, mlp_dim=512, num_heads=4, num_kv_heads=2, mlp_type="gelu",
      tie_embeddings=True, rope_base=10000.0, remat="none", scan_layers=False,
      dtype="float32", dropout=0.0)

  # Initialisation of a fresh run: "" trains from scratch; a workdir's newest checkpoint
  # gives the named top-level param trees ("vit", "projector", "decoder"): pretrain, then
  # finetune (e.g. VQA from the caption run's encoder).
  c.init = dict(workdir="", params=("vit",))

  # Mesh sizes per axis (-1 = all remaining devices) and the logical-axis rule table.
  c.mesh = dict(data=-1, fsdp=1, tensor=1)
  c.sharding_rules = sharding.DEFAULT_RULES

  # frozen: top-level param trees left as initialised, e.g. ("vit",) for a frozen encoder
  # (no gradients, no optimizer state).
  c.optimizer = dict(learning_rate=2e-3, warmup_steps=200, end_learning_rate_fraction=0.02,
                     b1=0.9, b2=0.98, weight_decay=0.01, grad_clip_norm=1.0, frozen=())
  # skip_nonfinite_updates: False stops the run at a NaN/Inf step; True skips its update
  # (counted in train/nonfinite_steps). microbatches: gradient accumulation over that many
  # slices of the batch per update.
  # Word-token rows make a step ~4x cheaper than byte rows and learn as much per step, so
  # the ~12-minute CPU run affords 10,000 steps (timings and results: docs/caption.md).
  c.train = dict(steps=10000, log_every=100, checkpoint_every=2000, keep_checkpoints=2,
                 skip_nonfinite_updates=False, microbatches=1)
  c.evals = dict(every=2000, during_splits=("validation",), during_num_examples=200,
                 final_splits=("test", "compositional"), final_num_examples=1000,
                 batch_size=200, num_samples_to_print=4)

  if arg == "tiny":
    c.data.builder_config = "tiny"
    c.data.global_batch_size = 16
    c.model.update(vit_variant="nano/16", width=64, depth=2, mlp_dim=128, num_heads=4,
                   num_kv_heads=2)
    c.optimizer.warmup_steps = 2
    c.train.update(steps=6, log_every=2, checkpoint_every=3)
    c.evals.update(every=3, during_num_examples=16, final_splits=("test",),
                   final_num_examples=16, batch_size=16, num_samples_to_print=1)
  elif arg:
    raise ValueError(f"Unknown config variant {arg!r}; expected '' or 'tiny'.")
  return c
