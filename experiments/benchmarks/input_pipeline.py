"""Input pipeline examples/s against the train step's consumption, per objective.

  python -m experiments.benchmarks.input_pipeline [--objectives=caption,vqa] [--batches=100]

Reads the built `shapes` dataset (config.data.data_dir; the first train run builds it) through
the real grain pipeline (decode PNG, tokenize, rows, batches) with the config's threads, and
times the default config's train step on the same batch size. The pipeline has to outrun the
step: "headroom" is how many times over it does.
"""
import time

from absl import app, flags

from configs import shapes_vqa
from experiments.benchmarks import common, train_step
from gpt4v_jax import perf, runs
from gpt4v_jax.data import datasets

_OBJECTIVES = flags.DEFINE_list("objectives", ["caption", "vqa"], "caption | vqa")
_BATCHES = flags.DEFINE_integer("batches", 100, "Batches timed after the first.")
_DATA_DIR = flags.DEFINE_string("data_dir", "data_dir", "Where the shapes dataset is built.")
_BUILDER_CONFIG = flags.DEFINE_string("builder_config", "default", "shapes builder config.")


def main(argv):
  del argv
  peak, _ = perf.peak_flops_per_device()
  rows = []
  for name in _OBJECTIVES.value:
    config = {"caption": common.model_config("default"), "vqa": shapes_vqa.get_config()}[name]
    objective = runs.make_objective(config)
    config.data.update(data_dir=_DATA_DIR.value, builder_config=_BUILDER_CONFIG.value)
    source = datasets.open_splits(config.data)["train"]
    batch = config.data.global_batch_size
    it = iter(objective.train_dataset(source, seed=0, global_batch_size=batch, process_index=0, process_count=1,
        num_threads=config.data.num_threads))
    next(it)  # Threads started, first batch made.
    t0 = time.perf_counter()
    for _ in range(_BATCHES.value):
      next(it)
    pipeline_rate = _BATCHES.value * batch / (time.perf_counter() - t0)
    step = train_step.measure(config, batch, repeats=5, start_peak=peak)
    step_rate = batch / (step["step_ms"] / 1e3)
    rows.append(dict(objective=name, batch=batch, threads=config.data.num_threads,
                     pipeline_examples_per_s=pipeline_rate, step_examples_per_s=step_rate,
                     headroom=pipeline_rate / step_rate))
  common.report("input_pipeline", rows, notes="default configs, one device")


if __name__ == "__main__":
  app.run(main)
