"""The fusion x encoder ablation: prefix-LM vs gated cross-attention fusion, ViT vs CNN
encoder, each variant one multitask run (caption, VQA and text-to-image together).

  python -m gpt4v_jax.main --config=configs/shapes_vqvae.py --workdir=workdirs/shapes_vqvae
  python -m experiments.sweep --config=configs/shapes_ablation.py --workdir=workdirs/shapes_ablation

The argument picks the variant of shapes_multitask ("" or "tiny"); `get_sweep` lists the
four runs, `sweep_metrics` the table's columns (experiments/sweep.py adds params and step
time). Each full variant trains 5,000 steps from scratch (~11 min with its evaluation on 2
cores: 43 min for the four, docs/experiments.md); the table compares the variants with each
other, not with the multitask default (which starts from the text-to-image run).
"""
import ml_collections

from configs import shapes_multitask


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = shapes_multitask.get_config(arg)
  # From scratch: a pretrained start would need a caption run of every variant.
  c.init = dict(workdir="", params=("vit",))
  # Equal weights (6, 5 and 5 rows of each batch of 16): the sweep compares fusions and
  # encoders, not mixtures (the multitask default's 2:2:1.5 was tuned from the t2i run).
  for task in ("caption", "vqa", "text_to_image"):
    c.objective.mixture[task].weight = 1.0
  if arg != "tiny":
    # A 2-layer decoder, the caption default's (the multitask default has text-to-image's 3).
    c.model.depth = 2
    c.train.update(steps=5000, checkpoint_every=2000)
    # The table reports test metrics only: the compositional split would add ~100 s a run.
    c.evals.update(every=2500, final_splits=("test",))
  return c


def get_sweep(arg: str | None = None) -> dict[str, dict]:
  del arg
  return {f"{fusion}_{encoder}": {"model.fusion": fusion, "model.encoder": encoder}
          for fusion in ("prefix", "cross_attention") for encoder in ("vit", "cnn")}


def sweep_metrics(arg: str | None = None) -> list[str]:
  del arg
  return ["test/caption/object_f1", "test/vqa/accuracy", "test/text_to_image/overall"]
