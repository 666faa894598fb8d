"""What every benchmark shares: the model configs it measures, a timer, and the report (a
markdown table on stdout and a JSON file with the machine it ran on)."""
import contextlib
import datetime
import json
import os
import platform
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import flags

from configs import shapes_caption
from experiments import provenance
from experiments.tables import markdown_table
from gpt4v_jax import runs, sharding, train_step
from gpt4v_jax.optimizer import make_optimizer

_RESULTS = flags.DEFINE_string(
    "results_dir", os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"),
    "Where <benchmark>.json is written.")


def model_config(name: str) -> ml_collections.ConfigDict:
  """shapes_caption's config with the named model: "default" (its own: ViT-mu/16, 2 x 128
  decoder, 42 tokens), "mid" (ViT-S/16 and a 12-layer, 512-wide decoder over 256 tokens:
  16 image + 240 text) or "1b" (ViT-B/16 and a 20-layer, 2048-wide decoder over the same
  256 tokens: 1.09B params, for an accelerator, e.g. `--models=1b --variants=bfloat16`)."""
  c = shapes_caption.get_config()
  if name == "mid":
    c.model.update(vit_variant="S/16", width=512, depth=12, mlp_dim=2048, num_heads=8,
                   num_kv_heads=8, vocab_size=512)
    c.objective.max_text_len = 240
  elif name == "1b":
    c.model.update(vit_variant="B/16", width=2048, depth=20, mlp_dim=8192, num_heads=16,
                   num_kv_heads=16, vocab_size=512)
    c.objective.max_text_len = 240
  elif name != "default":
    raise ValueError(f"Unknown benchmark model {name!r}; expected 'default', 'mid' or '1b'.")
  return c


@contextlib.contextmanager
def one_device_train_step(config: ml_collections.ConfigDict):
  """Inside the first device's mesh and the config's axis rules, yields (objective, model,
  init, abstract_state, train_step): the real, not yet jitted, train step of `config`."""
  config.mesh.update(data=1, fsdp=1, tensor=1)
  objective = runs.make_objective(config)
  model = objective.build_model(config.model)
  tx, schedule = make_optimizer(config.optimizer, config.train.steps)
  mesh = sharding.make_mesh(config.mesh, jax.devices()[:1])
  with jax.set_mesh(mesh), nn.logical_axis_rules(config.sharding_rules):
    init, abstract, _ = runs.sharded_state_init(config, objective, model, tx, mesh)
    yield objective, model, init, abstract, train_step.make_train_step(
        objective, model, tx, schedule, deterministic=True, skip_nonfinite=False)


def random_batch(objective, batch_size: int, vocab_size: int, seed: int = 0) -> dict:
  """A batch of `objective.batch_spec`'s shapes: random images and tokens, every text slot
  valid and predicted (the most work a row can ask for)."""
  rng = np.random.default_rng(seed)
  batch = {}
  for name, spec in objective.batch_spec(batch_size).items():
    if name == "image":
      batch[name] = rng.uniform(-1, 1, spec.shape).astype(np.float32)
    elif name in ("text", "targets"):
      batch[name] = rng.integers(16, vocab_size, spec.shape).astype(np.int32)
    elif name in ("input_mask", "loss_mask", "ar_mask"):
      batch[name] = np.ones(spec.shape, spec.dtype)
    else:
      batch[name] = np.zeros(spec.shape, spec.dtype)
  return jax.tree.map(jnp.asarray, batch)


def time_calls(fn, *args, repeats: int) -> float:
  """Median seconds of `fn(*args)` (blocked on), after one warm-up call."""
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t0)
  return float(np.median(times))


def machine() -> dict:
  return dict(platform=jax.devices()[0].platform, device_kind=jax.devices()[0].device_kind,
              device_count=jax.device_count(), cpu_count=os.cpu_count(),
              processor=platform.processor() or platform.machine(), jax=jax.__version__)


def report(name: str, rows: list[dict], notes: str = "") -> str:
  """Prints `rows` as a markdown table and writes them, with the machine, to
  <--results_dir>/<name>.json. Returns the table."""
  table = markdown_table(rows)
  print(f"{name} on {machine()['device_kind']} x{jax.device_count()}"
        + (f" ({notes})" if notes else "") + "\n" + table, flush=True)
  os.makedirs(_RESULTS.value, exist_ok=True)
  with open(os.path.join(_RESULTS.value, f"{name}.json"), "w") as f:
    json.dump(dict(benchmark=name, date=datetime.datetime.now().isoformat(timespec="seconds"),
                   commit=provenance.commit(), machine=machine(), notes=notes, rows=rows), f,
              indent=1)
  return table
