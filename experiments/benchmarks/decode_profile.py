"""Where a greedy generation call's time goes, op by op: the image encoder, the prefill and
the decode loop, each with its dot FLOP rate.

  python -m experiments.benchmarks.decode_profile [--model=default] [--batch=64] [--top=15]

Runs `decode.greedy_decode` (the path `Model.generate` takes for greedy decoding) on
preprocessed random images and the caption prompt's bucket, on one device, under
`jax.profiler.trace`, and joins every traced op with its compiled HLO instruction as
op_profile.py does for a train step. An op's phase comes from its jax source (op_name
metadata): "encoder" (the ViT and the projector), "prefill" (the decoder over the image and
prompt tokens), "decode" (the `fori_loop` over new tokens: its time is the sum over steps)
or "other" (argmax, masks, gathers outside the loop). The table lists per phase and kind
(dot or other) the time per call, its share of the traced time, the dot FLOPs and their rate
over the f32 matmul rate measured in this process; then the slowest ops. The notes give the
wall-clock time of a whole call without the profiler: above the traced time, the gap is
between ops (dispatch, loop control). The params are random and no row stops early (no EOS
id), so every call does the same work.
"""
import re
import tempfile

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from experiments.benchmarks import common
from experiments.benchmarks.op_profile import op_rows, op_times, parse_hlo
from gpt4v_jax import decode, perf, runs

# --model, --batch and --top are op_profile's flags (importing it defines them); here the
# defaults are the "default" model at batch 64 (set in __main__).
_MODEL, _BATCH, _TOP = flags.FLAGS["model"], flags.FLAGS["batch"], flags.FLAGS["top"]
_PROMPT = flags.DEFINE_integer("prompt_len", 8, "Prompt bucket (BOS and the task token are "
                               "valid, the rest padding, as a caption call's).")
_NEW_TOKENS = flags.DEFINE_integer("max_new_tokens", 24, "Tokens generated per row.")
_CALLS = flags.DEFINE_integer("calls", 5, "Traced calls (times are per call).")


def phase_of(source: str, in_loop: bool) -> str:
  """The phase of an op from its op_name metadata (see the module docstring), or "decode"
  when it is in the loop body (XLA drops the metadata of some ops it rewrites)."""
  if in_loop or "while" in source:
    return "decode"
  if "prefill" in source:
    return "encoder" if re.search(r"/(vit|projector|resampler|ViT|Projector)", source) else (
        "prefill")
  return "other"


def main(argv):
  del argv
  config = common.model_config(_MODEL.value)
  model = runs.make_objective(config).build_model(config.model)
  b, p, n = _BATCH.value, _PROMPT.value, _NEW_TOKENS.value
  rng = np.random.default_rng(0)
  size = config.data.image_size
  images = jnp.asarray(rng.uniform(-1, 1, (b, size, size, 3)), jnp.float32)
  prompt = jnp.zeros((b, p), jnp.int32).at[:, :2].set(jnp.array([1, 5]))  # BOS, a task id.
  mask = jnp.arange(p)[None, :].repeat(b, 0) < 2
  params = jax.jit(lambda: nn.unbox(model.init(
      jax.random.key(0), images, prompt, jnp.zeros((b, p), jnp.int32), mask))["params"])()
  # The jitted function itself, for its compiled HLO; eos_id -1 never stops a row.
  greedy = decode._greedy_decode  # pylint: disable=protected-access
  args = (model, params, images, prompt, mask, n, jnp.int32(-1), jnp.int32(0), None)
  hlo = greedy.lower(*args).compile().as_text()
  call = lambda: jax.block_until_ready(greedy(*args))
  wall = common.time_calls(call, repeats=max(3, _CALLS.value))
  peak = perf.peak_flops_per_device()[0]
  with tempfile.TemporaryDirectory() as trace_dir:
    with jax.profiler.trace(trace_dir):
      for _ in range(_CALLS.value):
        call()
    instructions, computations = parse_hlo(hlo)
    times = op_times(trace_dir, instructions, calls=_CALLS.value)
  loop_ops = {name for body in re.findall(r"body=%?([\w.\-]+)", hlo)
               for name in computations.get(body, [])}
  # An op in the loop body runs once per step: its FLOPs count every step.
  rows, total = op_rows(times, instructions, computations, peak=peak, top=_TOP.value,
                        phase_of=lambda source, name: phase_of(source, name in loop_ops),
                        runs_of=lambda phase: n - 1 if phase == "decode" else 1,
                        order={"encoder": 0, "prefill": 1, "decode": 2, "other": 3})
  common.report("decode_profile", rows, notes=(
      f"model {_MODEL.value}, batch {b}, prompt bucket {p}, {n} new tokens; wall "
      f"{wall * 1e3:.1f} ms per call, traced op time {total * 1e3:.1f} ms; peak "
      f"{peak / 1e12:.3f} TFLOP/s (measured f32 matmul rate)"))


if __name__ == "__main__":
  flags.FLAGS.set_default("model", "default")
  flags.FLAGS.set_default("batch", 64)
  app.run(main)
