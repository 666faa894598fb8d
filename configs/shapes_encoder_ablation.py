"""Where the encoder comes from: VQA trained with the ViT from the contrastive run, from the
caption run, or from scratch, for the same steps (the decoder and projector always fresh).

  python -m gpt4v_jax.main --config=configs/shapes_caption.py --workdir=workdirs/shapes_caption
  python -m gpt4v_jax.main --config=configs/shapes_contrastive.py \
      --workdir=workdirs/shapes_contrastive
  python -m experiments.sweep --config=configs/shapes_encoder_ablation.py \
      --workdir=workdirs/shapes_encoder_ablation

The two pretraining runs come first (their default workdirs). Each variant is shapes_vqa
shortened to 3,000 steps (~7 min on 2 idle cores) and evaluated on the test split; the table
(docs/contrastive.md) compares the variants with each other, not with the VQA default, which
starts every tree from the caption run and trains four times longer.
"""
import ml_collections

from configs import shapes_vqa

PRETRAINED = {"contrastive": "workdirs/shapes_contrastive", "caption": "workdirs/shapes_caption",
              "scratch": ""}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = shapes_vqa.get_config(arg)
  # Only the encoder transfers, so the three rows differ in it alone.
  c.init = dict(workdir="", params=("vit",))
  if not arg:
    c.train.update(steps=3000, checkpoint_every=1000)
    c.evals.update(every=1500, final_splits=("test",))
  return c


def get_sweep(arg: str | None = None) -> dict[str, dict]:
  del arg
  return {name: {"init.workdir": workdir} for name, workdir in PRETRAINED.items()}


def sweep_metrics(arg: str | None = None) -> list[str]:
  del arg
  return ["test/accuracy", "test/accuracy_color", "test/accuracy_shape", "test/accuracy_count",
          "test/accuracy_relation"]
