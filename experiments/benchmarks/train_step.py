"""Train step time, tokens/s and MFU, against the matmul rate measured in the same process.

  python -m experiments.benchmarks.train_step [--models=default,mid] [--batch=8] [--repeats=5]

Each variant jits the real train step (objective loss, gradients, AdamW) on one device over a
random batch; MFU is the objective's model-FLOP count per step over the median step time and
the peak: the spec sheet on TPU/GPU; on CPU the f32 matmul rate (fastest of 5 calls) measured
in this process at start-up and again right before and right after each variant's timed
steps, the highest of the three, so that a CPU running faster during a variant than at
start-up does not inflate its MFU.
"""
import jax
from absl import app, flags

from experiments.benchmarks import common
from gpt4v_jax import perf

_MODELS = flags.DEFINE_list("models", ["default", "mid"], "common.model_config names.")
_VARIANTS = flags.DEFINE_list("variants", ["float32", "bfloat16", "remat_full", "save_dots"],
                              "float32 | bfloat16 | remat_full | save_dots | scan")
_BATCH = flags.DEFINE_integer("batch", 8, "Examples per step.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed steps (median reported).")

VARIANTS = dict(float32={}, bfloat16=dict(dtype="bfloat16"), remat_full=dict(remat="full"),
                save_dots=dict(remat="save_dots"), scan=dict(scan_layers=True))


def measure(config, batch_size: int, repeats: int, start_peak: float) -> dict:
  """One variant's median step time and rates on the first device."""
  with common.one_device_train_step(config) as (objective, model, init, _, train_step):
    step = jax.jit(train_step, donate_argnums=0)
    batch = common.random_batch(objective, batch_size, config.model.vocab_size)
    holder = [init()]

    def run(batch):  # Threads the donated state through the timed calls.
      holder[0], metrics = step(holder[0], batch)
      return metrics["loss"]

    run(batch)  # Compiles, so that the peak below is measured next to the timed steps.
    before = perf.peak_flops_per_device()[0]
    seconds = common.time_calls(run, batch, repeats=repeats)
    peak = max(start_peak, before, perf.peak_flops_per_device()[0])
  flops = objective.train_flops_per_example(model) * batch_size
  tokens = batch_size * (model.num_image_tokens + objective.max_text_len)
  params = sum(x.size for x in jax.tree.leaves(holder[0].params))
  return dict(params_M=params / 1e6, tokens_per_step=tokens, gflop_per_step=flops / 1e9,
              step_ms=seconds * 1e3, tokens_per_s=tokens / seconds,
              tflops_per_s=flops / seconds / 1e12, peak_tflops=peak / 1e12,
              mfu=flops / seconds / peak)


def main(argv):
  del argv
  peak, source = perf.peak_flops_per_device()
  rows = []
  for name in _MODELS.value:
    for variant in _VARIANTS.value:
      config = common.model_config(name)
      config.model.update(VARIANTS[variant])
      rows.append(dict(model=name, variant=variant,
                       **measure(config, _BATCH.value, _REPEATS.value, peak)))
  common.report("train_step", rows, notes=f"batch {_BATCH.value}; peak per row: the highest "
                f"{source} (start-up {peak / 1e12:.3f} TFLOP/s, before and after the row)")


if __name__ == "__main__":
  app.run(main)
