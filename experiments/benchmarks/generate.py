"""The front door's generation speed: `Model.generate` tokens/s by batch, time to first token,
and compile time per (batch bucket, prompt-length bucket).

  python -m experiments.benchmarks.generate [--models=default,mid] [--batches=1,64]

Each model is `common.model_config`'s, randomly initialised and wrapped in a `Model` as
`Model.from_pretrained` would build it (params laid out by the config's logical rules over all
devices, data parallel). It captions real shapes test images, greedily: the images go in as PNG
bytes, so every call decodes and preprocesses them as a user's call would.

Generated tokens are counted as batch * max_new_tokens: the decode loop runs every step whatever
EOS a row emits (random params emit it anywhere), so that is the work done. Times are wall-clock
seconds of whole `generate` calls, median over --repeats after a first call; a bucket's compile
time is its first call minus that median. Time to first token is a call with max_new_tokens=1
(image preprocessing, prefill and the first token): at batch 1 the latency a user waits for,
at the larger batches the part of a call that the image encoder and prefill take.
"""
import time

import flax.linen as nn
import jax
import numpy as np
from absl import app, flags

from experiments.benchmarks import common
from gpt4v_jax import runs, sharding
from gpt4v_jax.data import shapes
from gpt4v_jax.data.pipeline import decode_text
from gpt4v_jax.model import Model

_MODELS = flags.DEFINE_list("models", ["default", "mid"], "common.model_config names.")
_BATCHES = flags.DEFINE_list("batches", ["1", "64"],
                             "Batch sizes for tokens/s; the last over the first is the "
                             "batching speedup.")
_NEW_TOKENS = flags.DEFINE_integer(
    "max_new_tokens", 24, "Tokens generated per row (a shapes caption is <= 23 + EOS).")
_BUCKETS = flags.DEFINE_list(
    "compile_buckets", ["1x8", "64x8", "1x32", "64x32"],
    "BATCHxLENGTH pairs whose compile time is measured: LENGTH is the prompt-length bucket "
    "(a power of two >= 8), filled by a caption prompt with caption words after it.")
_FIRST_TOKEN = flags.DEFINE_list(
    "first_token_batches", ["1", "64"],
    "Batch sizes of the max_new_tokens=1 calls: batch 1 is the time to first token.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed calls after the first (median reported).")

SHORT_BUCKET = 8  # The plain caption prompt (BOS, the task token) fills the smallest bucket.


def random_model(name: str) -> Model:
  """The named benchmark model with random params, on all devices, data parallel."""
  config = common.model_config(name)
  objective = runs.make_objective(config)
  module = objective.build_model(config.model)
  mesh = sharding.make_mesh(dict(data=-1, fsdp=1, tensor=1))
  rules = config.sharding_rules
  init = lambda: objective.init_variables(module, jax.random.PRNGKey(0))
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    boxed = jax.eval_shape(init)
    shardings = {k: (sharding.logical_to_shardings(v, mesh, rules) if k == "params" else
                     jax.tree.map(lambda _: sharding.replicated(mesh), nn.unbox(v)))
                 for k, v in boxed.items()}
    variables = jax.jit(lambda: nn.unbox(init()), out_shardings=shardings)()
  params = variables.pop("params")
  return Model(config=config, objective=objective, module=module, params=params,
               model_state=variables, preprocess=objective.preprocess, mesh=mesh, rules=rules,
               info={})


def shapes_test_images(n: int) -> tuple[list[bytes], str]:
  """The first n shapes test images (PNG bytes, as the built dataset stores them) and the
  first one's first caption."""
  examples = [shapes.make_standard_example(0, "test", i) for i in range(n)]
  return [x["image"] for x in examples], decode_text(examples[0]["captions"][0], "caption")


def caption_prompt(model: Model, length_bucket: int, caption: str) -> list[int]:
  """Prompt ids (after BOS) that land in `length_bucket`: the caption task prompt alone for
  the smallest bucket, else followed by `caption`'s words repeated up to the bucket's end."""
  ids = model.part("caption").prompt_ids()
  if length_bucket <= SHORT_BUCKET:
    return ids
  words = model.tokenizer.encode(caption)
  filler = words * (length_bucket // len(words) + 1)
  return (ids + filler)[:length_bucket - 1]  # + BOS = the bucket exactly.


class Timer:
  """First-call and warm-call seconds of `model.generate` per (batch, length bucket,
  max_new_tokens), each measured once, and the compiles that warm calls caused (0 if every
  bucket's program is reused)."""

  def __init__(self, model: Model, images: list[bytes], caption: str, repeats: int):
    self.model, self.images, self.caption, self.repeats = model, images, caption, repeats
    self.measured: dict[tuple[int, int, int], tuple[float, float]] = {}
    self.compiles, self.warm_compiles = 0, 0
    jax.monitoring.register_event_duration_secs_listener(self._count)

  def _count(self, event: str, _, **kwargs):
    if event == "/jax/core/compile/backend_compile_duration":
      self.compiles += 1

  def _call(self, batch: int, length: int, new_tokens: int) -> float:
    images = [self.images[k % len(self.images)] for k in range(batch)]
    prompts = [caption_prompt(self.model, length, self.caption)] * batch
    t0 = time.perf_counter()
    self.model.generate(images, prompts, max_new_tokens=new_tokens, batch_size=batch)
    return time.perf_counter() - t0

  def __call__(self, batch: int, length: int, new_tokens: int) -> tuple[float, float]:
    """(first call's seconds, median warm call's seconds)."""
    key = (batch, length, new_tokens)
    if key not in self.measured:
      first = self._call(*key)
      before = self.compiles
      warm = float(np.median([self._call(*key) for _ in range(self.repeats)]))
      self.warm_compiles += self.compiles - before
      self.measured[key] = (first, warm)
    return self.measured[key]


def measure(name: str, batches: list[int], first_token_batches: list[int],
            buckets: list[tuple[int, int]], new_tokens: int, repeats: int) -> dict:
  """One table row: the model's tokens/s per batch, time to first token, compile seconds per
  bucket."""
  model = random_model(name)
  images, caption = shapes_test_images(max(batches + first_token_batches
                                            + [b for b, _ in buckets]))
  timer = Timer(model, images, caption, repeats)
  row = dict(model=name, params_M=sum(x.size for x in jax.tree.leaves(model.params)) / 1e6,
             new_tokens=new_tokens)
  for b in batches:
    row[f"tokens_per_s_b{b}"] = b * new_tokens / timer(b, SHORT_BUCKET, new_tokens)[1]
  row[f"b{batches[-1]}_over_b{batches[0]}"] = (row[f"tokens_per_s_b{batches[-1]}"]
                                               / row[f"tokens_per_s_b{batches[0]}"])
  for b in first_token_batches:  # Batch 1: the time to first token; others: prefill's share.
    row[f"first_token_ms_b{b}"] = 1000 * timer(b, SHORT_BUCKET, 1)[1]
  for b, length in buckets:
    first, warm = timer(b, length, new_tokens)
    row[f"compile_s_b{b}_l{length}"] = first - warm
  row["warm_compiles"] = timer.warm_compiles
  return row


def parse_bucket(text: str) -> tuple[int, int]:
  """"64x8" -> (64, 8); a length that is not a bucket is an error naming the flag."""
  batch, _, length = text.partition("x")
  if not (batch.isdigit() and length.isdigit()) or int(length) < SHORT_BUCKET or (
      int(length) & (int(length) - 1)):
    raise ValueError(f"--compile_buckets={text!r}: expected BATCHxLENGTH with LENGTH a power "
                     f"of two >= {SHORT_BUCKET}, e.g. 64x8.")
  return int(batch), int(length)


def main(argv):
  del argv
  batches = [int(b) for b in _BATCHES.value]
  buckets = [parse_bucket(x) for x in _BUCKETS.value]
  first_token_batches = [int(b) for b in _FIRST_TOKEN.value]
  rows = [measure(name, batches, first_token_batches, buckets, _NEW_TOKENS.value,
                  _REPEATS.value) for name in _MODELS.value]
  common.report("generate", rows, notes=(
      f"Model.generate, greedy, captioning shapes test images (PNG) with random params; "
      f"{_NEW_TOKENS.value} new tokens per row, prompt bucket {SHORT_BUCKET} unless named; "
      f"median of {_REPEATS.value} warm calls; compile_s = first call - warm call"))


if __name__ == "__main__":
  app.run(main)
