"""Evals only the embedded `shapes` dataset allows: its captions are written in a language
that `shapes.parse_caption` inverts exactly, so a predicted caption can be scored object by
object against the scene the image shows."""
import numpy as np

from gpt4v_jax.data import shapes
from gpt4v_jax.evals import caption_metrics


def caption_object_metrics(examples: list[dict], predictions: list[str]) -> dict[str, float]:
  """Object precision/recall/F1 (`object_precision`, ...: each predicted caption parsed into
  (size, color, shape) objects, matched as multisets against the example's scene) and
  `scene_accuracy` (the parsed objects are exactly the scene's)."""
  pred_objs = [shapes.parse_caption(p) for p in predictions]
  true_objs = [shapes.scene_objects(ex["scene"]) for ex in examples]
  prf = caption_metrics.object_prf(pred_objs, true_objs)
  scene_acc = np.mean([sorted(p) == sorted(g) for p, g in zip(pred_objs, true_objs)])
  return {"scene_accuracy": float(scene_acc), **{f"object_{k}": v for k, v in prf.items()}}
