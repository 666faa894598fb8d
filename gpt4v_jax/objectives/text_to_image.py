"""Text-to-image: the decoder writes an image as VQ-VAE code tokens after its caption.

  [BOS][t2i][caption tokens...][BOI] [code_1 ... code_hw][EOI] [PAD]...
  prefix: full attention             causal; the loss is on the codes and EOI

The image is the answer, so the model does not see it: it runs without images (`GPT4V(None,
...)`), in a mixture too, where text-to-image rows are a sub-batch of their own. The codes
come from a frozen VQ-VAE (`configs/shapes_vqvae.py`, trained first) run inside the jitted
train step, so the data pipeline stays numpy; its variables are part of the train state
(`model_state["image_tokenizer"]`), so a text-to-image checkpoint holds everything needed to
draw. Code k is token `tokenizer.vocab_size + k`.

Caption dropout (the caption is left out of a row with probability `caption_dropout`) teaches
the same model unconditional generation, which classifier-free guidance needs. Evaluation
draws one image per test caption at each guidance scale of `eval_cfg_scales` (the sampling
settings are the config's; only code tokens are allowed), decodes the codes to pixels, parses
them (`scene_parser`) and scores them against the caption's scene (`generation_accuracy`).
"""
import functools
import jax
import jax.numpy as jnp
import numpy as np

from gpt4v_jax import sampling
from gpt4v_jax.data import datasets, images
from gpt4v_jax.data.pipeline import decode_text
from gpt4v_jax.data.tokenizer import Tokenizer
from gpt4v_jax.evals import scene_parser
from gpt4v_jax.models import gpt4v
from gpt4v_jax.objectives import prefix_lm
from gpt4v_jax.objectives.caption import random_caption
from gpt4v_jax.objectives.image_tokenizer import to_uint8


class TextToImageObjective(prefix_lm.PrefixLMObjective):
  """How an example becomes a caption -> code-tokens row, a drawing prompt, and (for shapes,
  whose scenes the scene parser reads back from pixels) a score."""
  name = "text_to_image"
  runs_images = False

  def __init__(self, tokenizer: Tokenizer, *, vq_model, vq_variables: dict,
               max_caption_len: int, caption_dropout: float, cfg_scale: float,
               eval_cfg_scales: tuple[float, ...], temperature: float, top_k: int,
               top_p: float, seed: int, code_order: str, code_positions: bool,
               code_embedding_init: str, preprocess: images.Preprocess,
               max_text_len: int | None = None):
    """code_order: "rows" writes the code grid row by row (raster order), "columns" column
    by column, left to right: the order in which captions list the objects.
    code_positions: the model adds a learned embedding of each code's grid cell to its
    token (see `Decoder.num_code_positions`).
    code_embedding_init: "random" (like every token's) or "codebook": code k's embedding
    starts as the VQ-VAE's codebook vector k, centred, scaled and mapped to the decoder's
    width by a fixed random projection, so that codes that draw alike start alike.
    max_text_len: the row length; by default the longest row's (at least that if given)."""
    if code_order not in ("rows", "columns"):
      raise ValueError(f"code_order={code_order!r}: expected 'rows' or 'columns'.")
    if code_embedding_init not in ("random", "codebook"):
      raise ValueError(f"code_embedding_init={code_embedding_init!r}: expected 'random' or "
                       "'codebook'.")
    self.code_order = code_order
    self.code_embedding_init = code_embedding_init
    self.code_positions = code_positions
    self.tokenizer = tokenizer
    self.preprocess = preprocess
    self.vq_model, self.vq_variables = vq_model, vq_variables
    self.grid_side = preprocess.size // vq_model.downsample
    self.num_codes, self.num_image_codes = vq_model.num_codes, self.grid_side**2
    self.code_offset = tokenizer.vocab_size
    self.max_caption_len = max_caption_len
    self.caption_dropout = caption_dropout
    # The main scale first: its metrics are reported unprefixed.
    self.cfg_scales = (cfg_scale,) + tuple(s for s in eval_cfg_scales if s != cfg_scale)
    self.sampling = dict(temperature=temperature, top_k=top_k, top_p=top_p)
    self.seed = seed
    # [BOS][t2i] caption [BOI] | codes [EOI]
    self.prompt_len = 3 + max_caption_len
    self.max_new_tokens = self.num_image_codes
    needed = self.prompt_len + self.num_image_codes + 1
    if max_text_len is not None and max_text_len < needed:
      raise ValueError(f"max_text_len={max_text_len} is too short for text-to-image rows: "
                       f"{needed} = 3 + max_caption_len={max_caption_len} + "
                       f"{self.num_image_codes} codes + EOI.")
    self.max_text_len = needed if max_text_len is None else max_text_len

  def prompt_ids(self, caption: str) -> list[int]:
    """`[t2i] caption [BOI]` ids (after BOS), the caption cut to max_caption_len tokens."""
    return self._caption_prompt(caption)[0]

  def _caption_prompt(self, caption: str) -> tuple[list[int], bool]:
    """(`[t2i] caption [BOI]` ids, whether the caption had to be cut to max_caption_len)."""
    ids = self.tokenizer.encode(caption)
    t = self.tokenizer
    return [t.task_ids["text_to_image"]] + ids[:self.max_caption_len] + [t.boi_id], (
        len(ids) > self.max_caption_len)

  def build_model(self, model_config):
    """`GPT4V` whose decoder knows the code tokens' ids, for code position embeddings."""
    return gpt4v.build_model(
        model_config, code_ids=(self.code_offset, self.code_offset + self.num_codes),
        num_code_positions=self.num_image_codes if self.code_positions else 0,
        image_size=self.preprocess.size)

  def batch_spec(self, batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
    """prefix_lm's rows plus `code_start` [batch] int32: where the codes go in `text`."""
    return dict(super().batch_spec(batch_size),
                code_start=jax.ShapeDtypeStruct((batch_size,), jnp.int32))

  def train_example(self, example: dict, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Standard example -> a row whose code slots hold placeholders (filled in the train
    step, from the image): {image, text/ar_mask/... [max_text_len], code_start, truncated}.

    Raises BadExample for a missing image or one that does not decode, and for a missing,
    empty or non-UTF-8 caption.
    """
    image = datasets.example_image(example, self.preprocess, rng)
    caption = random_caption(example, rng)
    if rng.random() < self.caption_dropout:
      caption = ""
    prompt, truncated = self._caption_prompt(caption)
    t = self.tokenizer
    row, _ = prefix_lm.make_row(prompt, [0] * self.num_image_codes, bos_id=t.bos_id,
                                eos_id=t.eoi_id, pad_id=t.pad_id, max_len=self.max_text_len)
    return dict(image=image, truncated=np.int32(truncated),
                code_start=np.int32(1 + len(prompt)), **row)

  def init_variables(self, model, rng: jax.Array) -> dict:
    """The decoder's fresh variables (code embeddings per `code_embedding_init`), plus the
    frozen tokenizer's as `image_tokenizer`."""
    variables = super().init_variables(model, rng)
    if self.code_embedding_init == "codebook":
      boxed = variables["params"]["decoder"]["embedding"]
      rows = codebook_embeddings(self.vq_variables["vq_stats"]["quantizer"]["codebook"],
                                 boxed.value.shape[1], jax.random.fold_in(rng, 1))
      variables["params"]["decoder"]["embedding"] = boxed.replace_boxed(
          boxed.value.at[self.code_offset:self.code_offset + self.num_codes].set(rows))
    return dict(variables, image_tokenizer=self.vq_variables)

  def train_flops_per_example(self, model, frozen: tuple[str, ...] = ()) -> float:
    """The row's (without images, the decoder's alone), plus the frozen tokenizer's
    encoding of its image (forward only)."""
    return (super().train_flops_per_example(model, frozen)
            + self.vq_model.forward_flops(self.preprocess.size, decode=False))

  def loss(self, model, params, model_state: dict, batch: dict, rng: jax.Array,
           deterministic: bool) -> tuple[jax.Array, dict, dict]:
    """Encodes the images to codes, writes them into the rows, next-token loss of the model
    run without images."""
    codes = self.vq_model.apply(model_state["image_tokenizer"], batch["image"],
                                method="encode")
    tokens = self._flatten(codes) + self.code_offset
    start = batch["code_start"]
    splice = jax.vmap(lambda row, new, at: jax.lax.dynamic_update_slice(row, new, (at,)))
    text = splice(batch["text"], tokens, start)
    targets = splice(batch["targets"], tokens, start - 1)
    logits = model.apply({"params": params}, None, text, batch["ar_mask"],
                         batch["input_mask"], deterministic=deterministic,
                         rngs={"dropout": rng})
    loss, aux = prefix_lm.next_token_loss(logits, targets, batch["loss_mask"])
    return loss, aux, model_state

  def eval_items(self, example: dict) -> list[tuple[dict[str, np.ndarray], dict]]:
    """Standard example -> its one item: ({prompt from the first caption, its mask,
    uncond_prompt, uncond_mask, seed}, {id, caption, objects: the scene, left to right})."""
    caption = decode_text(example["captions"][0], "caption")
    t = self.tokenizer
    prompt = prefix_lm.make_prompt(self.prompt_ids(caption), bos_id=t.bos_id,
                                   pad_id=t.pad_id, max_len=self.prompt_len)
    uncond = prefix_lm.make_prompt(self.prompt_ids(""), bos_id=t.bos_id,
                                   pad_id=t.pad_id, max_len=3)
    objects = sorted(example["scene"], key=lambda o: o["x"])
    return [(dict(**prompt, uncond_prompt=uncond["prompt"],
                  uncond_mask=uncond["prompt_mask"], seed=np.int32(example["id"])),
             dict(id=str(example["id"]), caption=caption, objects=objects))]

  def predict(self, model, params, model_state: dict, inputs: dict) -> jax.Array:
    """One image per prompt and guidance scale: [batch, len(cfg_scales), H, W, 3] uint8."""
    allowed = self.allowed_tokens(model.decoder.vocab_size)
    # Each batch draws with its own key, from its first example's id: reproducible, and
    # independent of how the eval set is batched only up to that.
    rng = jax.random.fold_in(jax.random.PRNGKey(self.seed), inputs["seed"][0])
    images = []
    for scale in self.cfg_scales:
      tokens = sampling.sample(
          model, params, rng, None, inputs["prompt"], inputs["prompt_mask"],
          self.num_image_codes, eos_id=self.tokenizer.eoi_id, pad_id=self.tokenizer.pad_id,
          allowed_tokens=allowed,
          uncond_prompt=inputs["uncond_prompt"], uncond_prompt_mask=inputs["uncond_mask"],
          cfg_scale=scale, **self.sampling)
      images.append(self.draw(model_state, tokens))
    return jnp.stack(images, axis=1)

  def draw(self, model_state: dict, tokens: jax.Array) -> jax.Array:
    """Generated code tokens [batch, num_image_codes] -> images [batch, H, W, 3] uint8."""
    return _draw(self.vq_model, model_state["image_tokenizer"],
                 self._unflatten(tokens - self.code_offset))

  def allowed_tokens(self, vocab_size: int) -> jax.Array:
    """[vocab_size] bool: the image-code tokens, the only ones drawing may choose."""
    ids = jnp.arange(vocab_size)
    return (ids >= self.code_offset) & (ids < self.code_offset + self.num_codes)

  def _flatten(self, codes: jax.Array) -> jax.Array:
    """Code grid [batch, h, w] -> the sequence the decoder writes [batch, h * w]."""
    if self.code_order == "columns":
      codes = codes.transpose(0, 2, 1)
    return codes.reshape(codes.shape[0], -1)

  def _unflatten(self, tokens: jax.Array) -> jax.Array:
    """`_flatten` inverted: [batch, h * w] -> [batch, h, w]."""
    grid = tokens.reshape(-1, self.grid_side, self.grid_side)
    return grid.transpose(0, 2, 1) if self.code_order == "columns" else grid

  def to_predictions(self, outputs: np.ndarray) -> list[np.ndarray]:
    return list(outputs)

  def score(self, infos: list[dict], predictions: list[np.ndarray]) -> tuple[dict, list[dict]]:
    """generation_accuracy per category at the main scale (`overall`, `presence`, ...), and
    overall and presence at every scale (`cfg3/overall`, ...); one record per prompt with
    the objects parsed from its main-scale image."""
    targets = [info["objects"] for info in infos]
    metrics, parsed_by_scale = {}, []
    for k, scale in enumerate(self.cfg_scales):
      parsed = [scene_parser.parse_scene(images[k]) for images in predictions]
      parsed_by_scale.append(parsed)
      accuracy = scene_parser.generation_accuracy(parsed, targets)
      if k == 0:
        metrics.update(accuracy)
      metrics.update({f"cfg{scale:g}/{name}": accuracy[name] for name in ("overall",
                                                                          "presence")})
    records = []
    for i, info in enumerate(infos):
      parsed = parsed_by_scale[0][i]
      records.append(dict(
          id=info["id"], caption=info["caption"],
          parsed=[" ".join((o["size"], o["color"], o["shape"])) for o in parsed],
          **scene_parser.generation_scores(parsed, info["objects"])))
    return metrics, records

  def sample_grid(self, infos: list[dict], predictions: list[np.ndarray],
                  columns: int = 8) -> np.ndarray:
    """One row per guidance scale (main scale first), one column per prompt (the first
    `columns`), upscaled 2x: [scales * 128, columns * 128, 3] uint8."""
    n = min(columns, len(predictions))
    rows = [np.concatenate([predictions[i][k] for i in range(n)], axis=1)
            for k in range(len(self.cfg_scales))]
    return np.concatenate(rows, axis=0).repeat(2, axis=0).repeat(2, axis=1)


def codebook_embeddings(codebook: jax.Array, width: int, rng: jax.Array) -> jax.Array:
  """[K, D] VQ codebook -> [K, width] token embeddings, distributed as the decoder's
  initial embeddings (zero mean, variance 1 / width per entry): the codebook is centred,
  scaled to unit RMS and multiplied by a [D, width] Gaussian of variance 1 / (D * width)."""
  centred = codebook - jnp.mean(codebook, axis=0)
  unit = centred / jnp.sqrt(jnp.mean(centred**2))
  projection = jax.random.normal(rng, (codebook.shape[1], width)) / jnp.sqrt(
      codebook.shape[1] * width)
  return unit @ projection


@functools.partial(jax.jit, static_argnums=0)
def _draw(vq_model, vq_variables: dict, codes: jax.Array) -> jax.Array:
  """Codes [batch, h, w] (clipped into the codebook) -> images [batch, H, W, 3] uint8."""
  codes = jnp.clip(codes, 0, vq_model.num_codes - 1)
  return to_uint8(vq_model.apply(vq_variables, codes, method="decode_codes"))

