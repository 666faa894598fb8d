"""The front door to a trained model: load it anywhere, generate, and run its tasks.

  model = Model.from_pretrained("exported/shapes_caption")     # or a training workdir
  model.caption(["photo.jpg"])                                  # -> ["a small red circle ..."]
  model.answer(["photo.jpg"], ["what color is the circle?"])   # after a VQA run
  model.generate(images, prompts, max_new_tokens=20, num_beams=4)

`from_pretrained` reads a model directory (`export.export`, `model_dir.py`) or the newest
checkpoint of a training workdir, onto any mesh: params are laid out by the run's own logical
rules. Images go through the run's preprocessing (`images.Preprocess`), texts through its
tokenizer, so a prediction here equals the train loop's evaluation of the same checkpoint.

Generation pads a call's batch to a bucket (a power of two, at least the data-parallel
devices) and its prompts to a length bucket (a power of two, at least 8): it compiles once per
(batch bucket, length bucket, max_new_tokens, decoding mode), and calls with other sizes in
the same buckets reuse that program. Each row decodes as it would alone: prompts are
right-padded and masked, and every example keeps its own RoPE positions.
"""
import dataclasses
import functools
import io
import os
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import PIL.Image

from gpt4v_jax import beam_search, decode, model_dir, runs, sampling, sharding
from gpt4v_jax.data import images as images_lib
from gpt4v_jax.data.pipeline import BadExample
from gpt4v_jax.metric_writer import log
from gpt4v_jax.objectives import contrastive

# What `images`, `caption`, ... accept as one image: a path, the file's bytes, a PIL image or a
# uint8 [H, W, 3] array.
ImageInput = str | os.PathLike | bytes | PIL.Image.Image | np.ndarray
MIN_LENGTH_BUCKET = 8


@dataclasses.dataclass
class Generation:
  """One generated continuation: its text (cut before the first stop token or string), its
  token ids (likewise), and with beam search the hypothesis's length-penalised log-prob."""
  text: str
  tokens: list[int]
  score: float | None = None


class Model:
  """A trained GPT4V (or VQ-VAE) with its tokenizer, image preprocessing and objective.

  Attributes: config (the run's), objective (what it was trained on: `objectives/kinds.py`),
  module (the Linen module), params, model_state (other variable collections), tokenizer,
  preprocess, mesh, rules (logical axis rules), info (where it came from)."""

  def __init__(self, *, config, objective, module, params, model_state, preprocess, mesh,
               rules, info):
    self.config, self.objective, self.module = config, objective, module
    self.params, self.model_state = params, model_state
    self.tokenizer = getattr(objective, "tokenizer", None)
    self.preprocess, self.mesh, self.rules, self.info = preprocess, mesh, rules, info

  # --------------------------------------------------------------------------- Loading.

  @classmethod
  def from_pretrained(cls, path: str, *, mesh: jax.sharding.Mesh | dict | None = None,
                      dtype: str | None = None) -> "Model":
    """Loads the model directory or training workdir `path`.

    mesh: a Mesh, or a config.mesh-style dict (dict(data=-1, fsdp=1, tensor=1); without a -1
    the first data * fsdp * tensor devices); default: all devices, data parallel (params
    replicated). Params are sharded by the run's
    config.sharding_rules. dtype: compute and params dtype ("bfloat16", ...); default the
    run's.
    """
    path = os.path.abspath(os.fspath(path))
    if not os.path.isdir(path):
      raise FileNotFoundError(f"{path}: no such model directory or workdir.")
    if not isinstance(mesh, jax.sharding.Mesh):
      mesh = dict(mesh or dict(data=-1, fsdp=1, tensor=1))
      sizes = [mesh.get(axis, 1) for axis in sharding.MESH_AXES]
      # Explicit sizes may use the first devices only (e.g. one of eight).
      devices = jax.devices() if -1 in sizes else jax.devices()[:int(np.prod(sizes))]
      mesh = sharding.make_mesh(mesh, devices)
    if model_dir.is_model_dir(path):
      config, info = model_dir.read_config(path)
      preprocess = model_dir.read_preprocess(path)
    elif os.path.isfile(os.path.join(path, "config.json")):
      from gpt4v_jax import config_checks  # A workdir: its saved config, keys filled in.
      config = ml_collections.ConfigDict(config_checks.load_saved_config(path))
      info = dict(source_workdir=path)
      preprocess = None
    else:
      raise FileNotFoundError(f"{path} is neither a model directory (model_info.json) nor a "
                              "training workdir (config.json and checkpoints/).")
    if dtype is not None:
      config.model.dtype = str(jnp.dtype(dtype))
    rules = _rules(config.sharding_rules)
    objective = runs.make_objective(config)
    module = objective.build_model(config.model)
    if model_dir.is_model_dir(path):
      variables = _read_sharded(path, objective, module, mesh, rules, dtype)
      params = variables.pop("params")
      model_state = variables
    else:
      _, _, state, step = runs.restore_run(path, "Model", mesh=mesh, rules=rules,
                                           objective=objective)
      params, model_state = _cast(state.params, dtype), state.model_state
      info["step"] = step
    for part in getattr(objective, "parts", {objective.name: objective}).values():
      if hasattr(part, "vq_variables"):  # A model directory stores it as its own directory.
        model_state = dict(model_state, image_tokenizer=part.vq_variables)
    preprocess = preprocess or objective.preprocess
    log(f"Loaded {path} (step {info.get('step')}) onto mesh {dict(mesh.shape)}.")
    return cls(config=config, objective=objective, module=module, params=params,
               model_state=model_state, preprocess=preprocess, mesh=mesh, rules=rules,
               info=info)

  # --------------------------------------------------------------------------- Inputs.

  def part(self, kind: str) -> Any:
    """The objective of `kind` this model was trained on (itself, or a mixture's part);
    ValueError if it was not trained on that task."""
    parts = getattr(self.objective, "parts", {self.objective.name: self.objective})
    if kind not in parts:
      raise ValueError(f"This model was trained on {sorted(parts)}, not {kind!r}: load a "
                       f"model whose config.objective includes {kind!r}.")
    return parts[kind]

  def images(self, inputs: Sequence[ImageInput]) -> np.ndarray:
    """Images -> the model's input, float32 [n, S, S, 3], through the run's preprocessing.
    Raises BadExample naming the input that cannot be used."""
    return np.stack([self.image(x) for x in inputs]) if len(inputs) else np.zeros(
        (0, self.preprocess.size, self.preprocess.size, 3), np.float32)

  def image(self, x: ImageInput) -> np.ndarray:
    """One image -> float32 [S, S, 3]; see `images`."""
    name = "image"
    try:
      if isinstance(x, (str, os.PathLike)):
        name = os.fspath(x)
        with open(name, "rb") as f:
          data = f.read()
      elif isinstance(x, PIL.Image.Image):  # Through the file path: modes, transparency.
        buffer = io.BytesIO()
        x.save(buffer, format="PNG")
        data = buffer.getvalue()
      elif isinstance(x, np.ndarray):
        data = x
      elif isinstance(x, bytes):
        data = x
      else:
        raise BadExample(f"{type(x).__name__} is not an image: pass a path, bytes, a PIL "
                         "image or a uint8 [H, W, 3] array")
      return images_lib.preprocess(data, self.preprocess)
    except OSError as e:
      raise BadExample(f"{name}: {e.strerror or e}") from None
    except BadExample as e:
      raise BadExample(f"{name}: {e}" if name != "image" else str(e)) from None

  def encode_prompt(self, prompt: str | Sequence[int]) -> list[int]:
    """A prompt as generate takes it -> ids after BOS: a str is tokenized as is, a list of
    ids (e.g. `part("vqa").prompt_ids(question)`, with the task token) is used as given."""
    if isinstance(prompt, str):
      return self.tokenizer.encode(prompt)
    return [int(i) for i in prompt]

  # --------------------------------------------------------------------------- Generation.

  def generate(self, images: Sequence[ImageInput | None] | np.ndarray | None = None,
               prompts: Sequence[str | Sequence[int]] | None = None, *,
               max_new_tokens: int = 32, num_beams: int = 1, length_penalty: float = 1.0,
               temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, seed: int = 0,
               stop_tokens: Sequence[int] = (), stop_strings: Sequence[str] = (),
               uncond_prompts: Sequence[str | Sequence[int]] | None = None,
               cfg_scale: float = 1.0, allowed_tokens: np.ndarray | None = None,
               batch_size: int = 64) -> list[Generation]:
    """Continues each (image, prompt) with up to max_new_tokens tokens, batched, with the KV
    cache.

    images: one per prompt (paths, PIL images, arrays, ...: `images`; None entries hide that
      row's image), a preprocessed float32 [n, S, S, 3] array, or None: text only.
    prompts: one per row (`encode_prompt`; BOS is added here); default: empty prompts.
    Decoding: greedy (temperature 0, num_beams 1); sampling (temperature > 0, top_k, top_p,
      seed: the same seed gives the same samples); beam search (num_beams > 1, length_penalty
      as in Hugging Face: score = log-prob / length ** length_penalty).
    stop_tokens: ids that end a row besides EOS; stop_strings: the text is cut before the
      first occurrence of any.
    uncond_prompts, cfg_scale: classifier-free guidance (sampling only): logits =
      uncond + cfg_scale * (cond - uncond).
    allowed_tokens: optional [vocab] bool, the only tokens that may be chosen.
    batch_size: rows per compiled batch (bucketed up to a power of two).
    """
    if prompts is None:
      n = len(images) if images is not None else 0
      prompts = [[]] * n
    n = len(prompts)
    if images is not None and len(images) != n:
      raise ValueError(f"{len(images)} images for {n} prompts: pass one image per prompt.")
    if uncond_prompts is not None and len(uncond_prompts) != n:
      raise ValueError(f"{len(uncond_prompts)} uncond_prompts for {n} prompts.")
    if num_beams > 1 and (temperature > 0 or uncond_prompts is not None):
      raise ValueError("num_beams > 1 is beam search: it takes neither temperature > 0 nor "
                       "classifier-free guidance.")
    if max_new_tokens < 1:
      raise ValueError(f"max_new_tokens={max_new_tokens} must be >= 1.")
    t = self.tokenizer
    ids = [self.encode_prompt(p) for p in prompts]
    uncond = None if uncond_prompts is None else [self.encode_prompt(p) for p in uncond_prompts]
    stop_ids = np.asarray([t.eos_id, *stop_tokens], np.int32)
    out = []
    for start in range(0, n, batch_size):
      rows = slice(start, min(n, start + batch_size))
      pixels, image_mask = self._image_batch(images, rows)
      tokens, scores = self._generate_batch(
          pixels, image_mask, ids[rows], None if uncond is None else uncond[rows],
          max_new_tokens=max_new_tokens, stop_ids=stop_ids, num_beams=num_beams,
          length_penalty=length_penalty, temperature=temperature, top_k=top_k, top_p=top_p,
          seed=seed + start, cfg_scale=cfg_scale, allowed_tokens=allowed_tokens)
      for row, score in zip(tokens, scores):
        out.append(self._finish(row, stop_ids, stop_strings, score))
    return out

  def _image_batch(self, images, rows: slice) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(float32 [b, S, S, 3] or None, [b] bool: which rows show their image, or None)."""
    if images is None:
      return None, None
    if isinstance(images, np.ndarray) and images.dtype == np.float32 and images.ndim == 4:
      return images[rows], None
    chosen = list(images[rows])
    s = self.preprocess.size
    mask = np.array([x is not None for x in chosen])
    pixels = np.stack([self.image(x) if x is not None else np.zeros((s, s, 3), np.float32)
                       for x in chosen])
    return pixels, (None if mask.all() else mask)

  def _generate_batch(self, pixels, image_mask, ids, uncond, *, max_new_tokens, stop_ids,
                      num_beams, length_penalty, temperature, top_k, top_p, seed, cfg_scale,
                      allowed_tokens) -> tuple[np.ndarray, list]:
    """One bucketed batch -> (tokens [b, max_new_tokens], scores or Nones)."""
    b = len(ids)
    bucket = self._batch_bucket(b)
    t = self.tokenizer
    prompt, prompt_mask = _pad_prompts(ids, t.bos_id, t.pad_id, bucket)
    pixels, image_mask = _pad_rows(pixels, bucket), _pad_rows(image_mask, bucket)
    rep = sharding.batch_sharding(self.mesh)
    put = lambda x: None if x is None else jax.device_put(x, rep)
    args = (put(pixels), put(prompt), put(prompt_mask))
    with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
      if num_beams > 1:
        tokens, scores = beam_search.beam_search(
            self.module, self.params, *args, max_new_tokens, stop_ids, t.pad_id,
            num_beams=num_beams, length_penalty=length_penalty, image_mask=put(image_mask),
            allowed_tokens=allowed_tokens)
        return np.asarray(tokens)[:b], [float(s) for s in np.asarray(scores)[:b]]
      if temperature == 0 and uncond is None and allowed_tokens is None:
        tokens = decode.greedy_decode(self.module, self.params, *args, max_new_tokens,
                                      stop_ids, t.pad_id, put(image_mask))
      else:
        extra = {}
        if uncond is not None:
          u, u_mask = _pad_prompts(uncond, t.bos_id, t.pad_id, bucket)
          extra = dict(uncond_prompt=put(u), uncond_prompt_mask=put(u_mask),
                       cfg_scale=cfg_scale)
        tokens = sampling.sample(
            self.module, self.params, jax.random.PRNGKey(seed), *args, max_new_tokens,
            stop_ids, t.pad_id, temperature=temperature, top_k=top_k, top_p=top_p,
            allowed_tokens=None if allowed_tokens is None else jnp.asarray(allowed_tokens),
            image_mask=put(image_mask), **extra)
    return np.asarray(tokens)[:b], [None] * b

  def _batch_bucket(self, b: int) -> int:
    """The smallest power of two >= b, rounded up to whole data-parallel groups."""
    dp = sharding.data_parallel_size(self.mesh)
    bucket = 1 << max(0, (b - 1).bit_length())
    return -(-bucket // dp) * dp

  def _finish(self, row: np.ndarray, stop_ids: np.ndarray, stop_strings, score) -> Generation:
    """Tokens up to the first stop id; text up to the first stop string."""
    row, stops = [int(i) for i in row], {int(i) for i in stop_ids}
    ends = [k for k, i in enumerate(row) if i in stops]
    tokens = row[:ends[0]] if ends else row
    text = self.tokenizer.decode(tokens)
    cuts = [text.find(s) for s in stop_strings if s and s in text]
    return Generation(text=text[:min(cuts)] if cuts else text, tokens=tokens, score=score)

  # --------------------------------------------------------------------------- Tasks.

  def caption(self, images: Sequence[ImageInput], *, prompt: str = "",
              max_new_tokens: int | None = None, **generate_kwargs) -> list[str]:
    """One caption per image (greedy by default; generate's keywords apply)."""
    part = self.part("caption")
    prompts = [part.prompt_ids(prompt)] * len(images)
    return [g.text for g in self.generate(
        images, prompts, max_new_tokens=max_new_tokens or part.max_new_tokens,
        **generate_kwargs)]

  def answer(self, images: Sequence[ImageInput], questions: Sequence[str] | str, *,
             max_new_tokens: int | None = None, **generate_kwargs) -> list[str]:
    """The answer to each image's question (one question for all images if a str)."""
    part = self.part("vqa")
    if isinstance(questions, str):
      questions = [questions] * len(images)
    prompts = [self._task_prompt(part, q) for q in questions]
    return [g.text for g in self.generate(
        images, prompts, max_new_tokens=max_new_tokens or part.max_new_tokens,
        **generate_kwargs)]

  def summarize(self, texts: Sequence[str], *, max_new_tokens: int | None = None,
                **generate_kwargs) -> list[str]:
    """The text-only prompt objective's output (e.g. a summary) for each text."""
    part = self.part("prompt")
    images = None if not part.runs_images else [None] * len(texts)
    prompts = [self._task_prompt(part, x) for x in texts]
    return [g.text for g in self.generate(
        images, prompts, max_new_tokens=max_new_tokens or part.max_new_tokens,
        **generate_kwargs)]

  def text_to_image(self, prompts: Sequence[str], *, cfg_scale: float | None = None,
                    temperature: float | None = None, top_k: int | None = None,
                    top_p: float | None = None, seed: int = 0) -> list[np.ndarray]:
    """One image per caption, uint8 [H, W, 3], sampled with the run's settings (guidance
    scale, temperature, top-k, top-p) unless given."""
    part = self.part("text_to_image")
    s = part.sampling
    generated = self.generate(
        None, [part.prompt_ids(p) for p in prompts],
        uncond_prompts=[part.prompt_ids("")] * len(prompts),
        cfg_scale=part.cfg_scales[0] if cfg_scale is None else cfg_scale,
        temperature=s["temperature"] if temperature is None else temperature,
        top_k=s["top_k"] if top_k is None else top_k,
        top_p=s["top_p"] if top_p is None else top_p, seed=seed,
        stop_tokens=(self.tokenizer.eoi_id,), max_new_tokens=part.num_image_codes,
        allowed_tokens=np.asarray(part.allowed_tokens(self.module.decoder.vocab_size)))
    codes = np.stack([np.pad(g.tokens, (0, part.num_image_codes - len(g.tokens)),
                             constant_values=part.code_offset) for g in generated])
    return list(np.asarray(part.draw(self.model_state, jnp.asarray(codes))))

  def score(self, images: Sequence[ImageInput] | None, prompts: Sequence[str | Sequence[int]],
            targets: Sequence[str]) -> np.ndarray:
    """log p(target, EOS | image, prompt) of each row, float32 [n]: the sum over the
    target's tokens and EOS (multiple-choice evaluation: score every choice, take the
    largest)."""
    n = len(prompts)
    if len(targets) != n or (images is not None and len(images) != n):
      raise ValueError(f"{len(targets)} targets and "
                       f"{'no' if images is None else len(images)} images for {n} prompts.")
    t = self.tokenizer
    rows = [[t.bos_id] + self.encode_prompt(p) for p in prompts]
    answers = [t.encode(x) + [t.eos_id] for x in targets]
    longest = max((len(r) + len(a) for r, a in zip(rows, answers)), default=1)
    length = max(MIN_LENGTH_BUCKET, 1 << (longest - 1).bit_length())
    out = []
    for start in range(0, n, 64):
      chunk = slice(start, min(n, start + 64))
      b = chunk.stop - chunk.start
      bucket = self._batch_bucket(b)
      text = np.full((bucket, length), t.pad_id, np.int32)
      ar = np.zeros((bucket, length), np.int32)
      input_mask = np.zeros((bucket, length), bool)
      for k, (r, a) in enumerate(zip(rows[chunk], answers[chunk])):
        text[k, :len(r) + len(a)] = r + a
        ar[k, len(r):len(r) + len(a)] = 1  # The target: causal, as in training rows.
        input_mask[k, :len(r) + len(a)] = True
      is_target = ar.astype(bool)
      pixels, image_mask = self._image_batch(images, chunk)
      pixels, image_mask = _pad_rows(pixels, bucket), _pad_rows(image_mask, bucket)
      with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
        logp = _target_log_probs(self.module, self.params, pixels, text, ar, input_mask,
                                 is_target, image_mask)
      out.append(np.asarray(logp)[:b])
    return np.concatenate(out) if out else np.zeros(0, np.float32)

  def embed(self, images: Sequence[ImageInput], *, pool: bool = True) -> np.ndarray:
    """One embedding per image. A model trained with the contrastive objective gives its
    joint image-text embedding, L2-normalised float32 [n, embed_dim] (compare with
    `embed_text`'s by inner product); others the vision encoder's output, mean-pooled float32
    [n, width]. pool=False: the encoder's every token [n, tokens, width]."""
    joint = pool and getattr(self.module, "contrastive", None) is not None
    out = []
    for start in range(0, len(images), 64):
      chunk = slice(start, min(len(images), start + 64))
      pixels, _ = self._image_batch(images, chunk)
      b = len(pixels)
      pixels = jax.device_put(_pad_rows(pixels, self._batch_bucket(b)),
                              sharding.batch_sharding(self.mesh))
      with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
        if joint:
          embedded = contrastive.embed_images(self.module, self.params, pixels)
          out.append(np.asarray(embedded)[:b])
          continue
        tokens = np.asarray(_encode(self.module, self.params, pixels), np.float32)[:b]
      out.append(tokens.mean(axis=1) if pool else tokens)
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)

  def embed_text(self, texts: Sequence[str]) -> np.ndarray:
    """The contrastive model's text embeddings, L2-normalised float32 [n, embed_dim], of
    `texts` as its training rows hold them (cut to the row's length, keeping EOS)."""
    if getattr(self.module, "contrastive", None) is None:
      raise ValueError("This model has no text embedding: train it with the contrastive "
                       "objective (configs/shapes_contrastive.py).")
    part = self.part("contrastive")
    out = []
    for start in range(0, len(texts), 64):
      rows = [part.text_row(t) for t in texts[start:start + 64]]
      b = len(rows)
      bucket = self._batch_bucket(b)
      ids, mask = (jax.device_put(_pad_rows(np.stack([r[k] for r in rows]), bucket),
                                  sharding.batch_sharding(self.mesh)) for k in (0, 1))
      with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
        embedded = contrastive.embed_texts(self.module, self.params, ids, mask)
      out.append(np.asarray(embedded)[:b])
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)

  def _task_prompt(self, part, text: str) -> list[int]:
    """part.prompt_ids(text), with a too-long text as a ValueError."""
    try:
      return part.prompt_ids(text)
    except BadExample as e:
      raise ValueError(f"{text[:60]!r}...: {e}") from None


def _pad_rows(x: np.ndarray | None, rows: int) -> np.ndarray | None:
  """`x` [b, ...] with its first row repeated up to `rows` rows (outputs of the extra rows
  are dropped); None stays None."""
  if x is None:
    return None
  return np.concatenate([x, np.repeat(x[:1], rows - len(x), axis=0)])


def _pad_prompts(ids: list[list[int]], bos_id: int, pad_id: int,
                 batch: int) -> tuple[np.ndarray, np.ndarray]:
  """[BOS] + ids of each row, right-padded to the length bucket, rows repeated up to `batch`:
  (int32 [batch, L], bool [batch, L])."""
  longest = 1 + max((len(x) for x in ids), default=0)
  length = max(MIN_LENGTH_BUCKET, 1 << (longest - 1).bit_length())
  prompt = np.full((batch, length), pad_id, np.int32)
  mask = np.zeros((batch, length), bool)
  for k in range(batch):
    row = [bos_id] + list(ids[k if k < len(ids) else 0])
    prompt[k, :len(row)] = row
    mask[k, :len(row)] = True
  return prompt, mask


@functools.partial(jax.jit, static_argnums=0)
def _encode(module, params, pixels):
  """ViT output tokens [b, patches, width]."""
  return module.apply({"params": nn.unbox(params)}, pixels, True,
                      method=lambda m, x, d: m.vit(x, d))


@functools.partial(jax.jit, static_argnums=0)
def _target_log_probs(module, params, pixels, text, ar, input_mask, is_target, image_mask):
  """Sum over target positions of log p(next token): [b]."""
  logits = module.apply({"params": nn.unbox(params)}, pixels, text, ar, input_mask,
                        image_mask=image_mask)
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  nxt = jnp.take_along_axis(logp[:, :-1], text[:, 1:, None], axis=-1)[..., 0]
  return jnp.sum(jnp.where(is_target[:, 1:], nxt, 0.0), axis=1)


def _rules(rules) -> tuple:
  """config.sharding_rules as `nn.logical_axis_rules` takes them (JSON turns tuples into
  lists)."""
  axes = lambda a: tuple(a) if isinstance(a, list) else a
  return tuple((name, axes(a)) for name, a in rules)


def _cast(tree, dtype):
  """Floating leaves of `tree` in `dtype` (None: unchanged)."""
  if dtype is None:
    return tree
  return jax.tree.map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating)
                      else x, tree)


def _read_sharded(path, objective, module, mesh, rules, dtype) -> dict:
  """The variables of model directory `path`, each param sharded over `mesh` by its logical
  axis names under `rules`, other collections replicated."""
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    boxed = jax.eval_shape(lambda rng: objective.init_variables(module, rng),
                           jax.random.PRNGKey(0))
  boxed = {k: v for k, v in boxed.items() if k != "image_tokenizer"}
  param_shardings = sharding.logical_to_shardings(boxed["params"], mesh, rules)
  rep = sharding.replicated(mesh)
  unboxed = nn.unbox(boxed)
  shardings = {k: (param_shardings if k == "params" else jax.tree.map(lambda _: rep, v))
               for k, v in unboxed.items()}
  target = jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(
          a.shape, jnp.dtype(dtype) if dtype and jnp.issubdtype(a.dtype, jnp.floating)
          else a.dtype, sharding=s), unboxed, shardings)
  return model_dir.read_variables(path, target)
