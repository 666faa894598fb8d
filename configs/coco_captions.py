"""Image captioning on COCO captions 2017, from files you already have (nothing is
downloaded):

  python -m gpt4v_jax.main --config=configs/coco_captions.py --config.data.path=COCO \
      --workdir=workdirs/coco_captions

COCO/annotations/captions_{train,val}2017.json and COCO/{train,val}2017/*.jpg; converted once
into config.data.data_dir. Splits are COCO's: "train", "val". Images are centre-cropped to
224x224 for a ViT-S/16 (196 image tokens) with CLIP's normalisation, trained with random
resized crops of 50-100% of the image; captions as byte tokens (or a SentencePiece model
trained on them: gpt4v_jax.data.train_tokenizer). A starting point for an accelerator run,
not a tuned recipe: its numbers are not measured here (no COCO on this machine). The
argument: "" (default) or "tiny" (a seconds-long run, as the tests do on a small COCO-layout
fixture).
"""
import ml_collections

from configs import folder_caption


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = folder_caption.get_config(arg)
  c.data.update(name="coco_captions", train_split="train")
  c.evals.update(during_splits=("val",), final_splits=("val",))
  if not arg:
    c.data.update(image_size=224, resize="crop", normalize="clip",
                  random_resized_crop=(0.5, 1.0), global_batch_size=256)
    c.model.update(vit_variant="S/16", width=512, depth=6, mlp_dim=2048, num_heads=8,
                   num_kv_heads=8, mlp_type="gated")
    c.optimizer.update(learning_rate=1e-3, warmup_steps=1000)
    # ~4 epochs of COCO's 118k training images (5 captions each, one drawn per image).
    c.train.update(steps=2000 * 4, checkpoint_every=1000)
    c.evals.update(every=2000, during_num_examples=1000, final_num_examples=5000,
                   batch_size=256)
  return c
