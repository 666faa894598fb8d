"""Training the VQ-VAE image tokenizer (`models/vqvae.py`) in the shared train loop.

The loss is reconstruction MSE + beta * commitment loss (+ the codebook loss with a learned
codebook); the EMA codebook statistics are `model_state["vq_stats"]`, updated by every step.
Evaluation reconstructs images and reports what text-to-image generation needs from a
tokenizer: PSNR, and whether the scene parser reads the same scene from a reconstruction as
from its original ("parser agreement"), besides codebook usage and perplexity.
"""
import collections
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gpt4v_jax.data import datasets, images
from gpt4v_jax.evals import scene_parser
from gpt4v_jax.models import vqvae
from gpt4v_jax.objectives.base import SingleObjective


def build_vqvae(model_config) -> vqvae.VQVAE:
  """`config.model` of a VQ-VAE run (configs/shapes_vqvae.py) -> VQVAE."""
  fields = dict(model_config)
  fields["dtype"] = jnp.dtype(fields.get("dtype", "float32"))
  return vqvae.VQVAE(**fields)


def to_uint8(images: jax.Array) -> jax.Array:
  """[..., 3] float about [-1, 1] -> uint8 [0, 255], as images.normalize("minus_one_to_one")
  inverted."""
  return jnp.clip(jnp.round((images + 1.0) * 127.5), 0, 255).astype(jnp.uint8)


def same_scene(a: list[dict], b: list[dict], tolerance: float = 1.0) -> bool:
  """Whether two parses hold the same objects (shape, colour, size), each at the same centre
  within `tolerance` pixels."""
  key = lambda o: (o["shape"], o["color"], o["size"], o["x"], o["y"])
  a, b = sorted(a, key=key), sorted(b, key=key)
  return len(a) == len(b) and all(
      key(p)[:3] == key(q)[:3] and abs(p["x"] - q["x"]) <= tolerance
      and abs(p["y"] - q["y"]) <= tolerance for p, q in zip(a, b))


class VQVAEObjective(SingleObjective):
  """Image reconstruction through a discrete bottleneck; see the module docstring."""
  name = "vqvae"
  log_keys = ("psnr", "perplexity")

  def __init__(self, *, beta: float, num_codes: int, preprocess: images.Preprocess):
    self.beta = beta
    self.preprocess = preprocess
    self.num_codes = num_codes

  def build_model(self, model_config) -> vqvae.VQVAE:
    return build_vqvae(model_config)

  def train_flops_per_example(self, model: vqvae.VQVAE, frozen: tuple[str, ...] = ()) -> float:
    """Model FLOPs of one image's forward and backward pass (3x the forward's; frozen parts
    are counted as trained: freezing is for GPT4V's encoder)."""
    del frozen
    return 3 * model.forward_flops(self.preprocess.size)

  def batch_spec(self, batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
    s = self.preprocess.size
    return dict(image=jax.ShapeDtypeStruct((batch_size, s, s, 3), jnp.float32),
                truncated=jax.ShapeDtypeStruct((batch_size,), jnp.int32),
                skipped=jax.ShapeDtypeStruct((batch_size,), jnp.int32))

  def train_example(self, example: dict, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Standard example -> {image [S, S, 3] float32, truncated [] int32 (always 0)}.
    Raises BadExample for a missing image or one that does not decode."""
    return dict(image=datasets.example_image(example, self.preprocess, rng),
                truncated=np.int32(0))

  def init_variables(self, model: vqvae.VQVAE, rng: jax.Array) -> dict:
    s = self.preprocess.size
    return model.init({"params": rng}, jnp.zeros((1, s, s, 3)))

  def loss(self, model, params, model_state: dict, batch: dict, rng: jax.Array,
           deterministic: bool) -> tuple[jax.Array, dict, dict]:
    """(reconstruction + commitment (+ codebook) loss, metrics, model_state with the EMA
    codebook updated by this batch)."""
    del rng, deterministic  # No dropout.
    loss, metrics, stats = vqvae.vqvae_loss(model, params, model_state.get("vq_stats", {}),
                                            batch["image"], beta=self.beta, train=True)
    return loss, metrics, dict(model_state, vq_stats=stats) if stats else model_state

  def eval_items(self, example: dict) -> list[tuple[dict[str, np.ndarray], dict]]:
    """Standard example -> its one item: ({image}, {id, image (uint8), scene objects})."""
    image = datasets.example_image(example, self.preprocess)
    return [(dict(image=image), dict(id=str(example["id"]), image=images.to_uint8(image, self.preprocess.normalize),
                                     objects=example["scene"]))]

  def predict(self, model, params, model_state: dict, inputs: dict) -> dict[str, jax.Array]:
    """{image: reconstructions [batch, H, W, 3] uint8, codes: [batch, h, w] int32}."""
    return _reconstruct(model, {"params": params, **model_state}, inputs["image"])

  def to_predictions(self, outputs: dict[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
    return [dict(image=i, codes=c) for i, c in zip(outputs["image"], outputs["codes"])]

  def score(self, infos: list[dict], predictions: list[dict]) -> tuple[dict, list[dict]]:
    """psnr (dB, mean over images, uint8), parser_agreement (`same_scene` of the parses of
    original and reconstruction), reconstruction_scene_accuracy (the parse of the
    reconstruction equals the true scene), codebook_usage (codes used / K) and perplexity
    over all eval images; one record per image (agreement, PSNR, objects lost or gained)."""
    records, psnrs, agree = [], [], []
    for info, pred in zip(infos, predictions):
      original, recon = info["image"].astype(np.float32), pred["image"].astype(np.float32)
      mse = np.mean((original - recon) ** 2)
      psnrs.append(10 * np.log10(255.0 ** 2 / max(mse, 1e-10)))
      parsed_original = scene_parser.parse_scene(info["image"])
      parsed_recon = scene_parser.parse_scene(pred["image"])
      agree.append(same_scene(parsed_original, parsed_recon))
      kinds = lambda objs: collections.Counter(
          " ".join((o["size"], o["color"], o["shape"])) for o in objs)
      records.append(dict(id=info["id"], agree=bool(agree[-1]), psnr=round(float(psnrs[-1]), 2),
                          lost=sorted((kinds(parsed_original) - kinds(parsed_recon)).elements()),
                          gained=sorted((kinds(parsed_recon) - kinds(parsed_original))
                                        .elements())))
    codes = np.concatenate([p["codes"].reshape(-1) for p in predictions])
    counts = np.bincount(codes, minlength=self.num_codes)
    probs = counts[counts > 0] / codes.size
    accuracy = scene_parser.parser_accuracy([p["image"] for p in predictions],
                                            [i["objects"] for i in infos])
    metrics = dict(psnr=float(np.mean(psnrs)), parser_agreement=float(np.mean(agree)),
                   reconstruction_scene_accuracy=accuracy["scene"],
                   codebook_usage=float(np.mean(counts > 0)),
                   perplexity=float(np.exp(-np.sum(probs * np.log(probs)))))
    return metrics, records

  def sample_grid(self, infos: list[dict], predictions: list[dict],
                  columns: int = 8) -> np.ndarray:
    """Originals (top row) over their reconstructions (bottom row), the first `columns`
    images, upscaled 2x: [2 * 128, columns * 128, 3] uint8."""
    n = min(columns, len(infos))
    rows = [np.concatenate([i["image"] for i in infos[:n]], axis=1),
            np.concatenate([p["image"] for p in predictions[:n]], axis=1)]
    return np.concatenate(rows, axis=0).repeat(2, axis=0).repeat(2, axis=1)


@functools.partial(jax.jit, static_argnums=0)
def _reconstruct(model: vqvae.VQVAE, variables: dict, images: jax.Array) -> dict[str, Any]:
  reconstruction, aux = model.apply(variables, images)
  return dict(image=to_uint8(reconstruction), codes=aux["codes"])
