"""Greedy decoding tokens/s with the KV cache and by recomputing the prefix, per length.

  python -m experiments.benchmarks.decode [--model=mid] [--batch=8] [--lengths=16,32,64]

Both decoders are one jitted function each (prefill + a lax loop over tokens); a compile
counter shows that neither compiles again per generated token or per call.
"""
import jax
import jax.numpy as jnp
import flax.linen as nn
import numpy as np
from absl import app, flags

from experiments.benchmarks import common
from gpt4v_jax import decode, runs

_MODEL = flags.DEFINE_string("model", "mid", "common.model_config name.")
_BATCH = flags.DEFINE_integer("batch", 8, "Sequences decoded at once.")
_PROMPT = flags.DEFINE_integer("prompt_len", 16, "Prompt tokens after the image.")
_LENGTHS = flags.DEFINE_list("lengths", ["16", "32", "64"], "New tokens per sequence.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed calls (median reported).")


def main(argv):
  del argv
  config = common.model_config(_MODEL.value)
  objective = runs.make_objective(config)
  model = objective.build_model(config.model)
  b, p = _BATCH.value, _PROMPT.value
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.uniform(-1, 1, (b, 64, 64, 3)), jnp.float32)
  prompt = jnp.asarray(rng.integers(16, config.model.vocab_size, (b, p)), jnp.int32)
  mask = jnp.ones((b, p), bool)
  params = jax.jit(lambda: nn.unbox(model.init(
      jax.random.key(0), images, prompt, jnp.zeros((b, p), jnp.int32), mask))["params"])()
  compiles = []
  jax.monitoring.register_event_duration_secs_listener(
      lambda event, _, **kw: compiles.append(event)
      if event == "/jax/core/compile/backend_compile_duration" else None)
  rows = []
  for n in map(int, _LENGTHS.value):
    row = dict(new_tokens=n)
    for name, fn in (("cache", decode.greedy_decode), ("recompute", decode.greedy_decode_no_cache)):
      before = len(compiles)
      seconds = common.time_calls(
          lambda: fn(model, params, images, prompt, mask, max_new_tokens=n, eos_id=-1),
          repeats=_REPEATS.value)
      row[f"{name}_tokens_per_s"] = b * n / seconds
      row[f"{name}_compiles"] = len(compiles) - before
    row["speedup"] = row["cache_tokens_per_s"] / row["recompute_tokens_per_s"]
    rows.append(row)
  common.report("decode", rows, notes=f"model {_MODEL.value}, batch {b}, prompt {p} tokens "
                f"after {model.num_image_tokens} image tokens; greedy, no EOS")


if __name__ == "__main__":
  app.run(main)
