"""Parallelism is a config change: the multitask model's loss and gradients are the same on
one device and on every 8-device mesh of data, FSDP and tensor (Megatron) parallelism."""
import flax.linen as nn
import jax
import numpy as np
import pytest

from configs import shapes_multitask
from gpt4v_jax import runs, sharding
from gpt4v_jax.optimizer import make_optimizer


@pytest.fixture(scope="module")
def config(vq_workdir):
  c = shapes_multitask.get_config("tiny")
  c.objective.mixture.text_to_image.image_tokenizer = vq_workdir
  # 8 rows of each task per batch: every part's sub-batch splits over 8 data devices.
  c.data.global_batch_size = 24
  for task in ("caption", "vqa", "text_to_image"):
    c.objective.mixture[task].weight = 1.0
  # 8 decoder heads (no GQA), MLP 128 and vocab 256 split 8 ways; the ViT's 2 heads do not,
  # and stay replicated (sharding.logical_to_shardings). One decoder layer: every layer is
  # laid out alike, and the three tasks' passes already triple the program to compile.
  c.model.update(num_heads=8, num_kv_heads=8, depth=1)
  return c


@pytest.fixture(scope="module")
def objective(config):
  return runs.make_objective(config)


@pytest.fixture(scope="module")
def batch(config, objective, tiny_sources):
  """One batch of 8 rows of each of the three tasks."""
  it = iter(objective.train_dataset(tiny_sources["train"], seed=0, global_batch_size=config.data.global_batch_size,
      process_index=0, process_count=1, num_threads=1))
  b = next(it)
  assert {name: len(rows["text"]) for name, rows in b.items()} == dict(
      caption=8, vqa=8, text_to_image=8)
  return b


def _loss_and_grads(config, objective, batch, mesh_sizes, devices):
  config = config.copy_and_resolve_references()
  config.mesh.update(dict(zip(("data", "fsdp", "tensor"), mesh_sizes)))
  mesh = sharding.make_mesh(config.mesh, devices)
  model = objective.build_model(config.model)
  tx, _ = make_optimizer(config.optimizer, config.train.steps)
  with jax.set_mesh(mesh), nn.logical_axis_rules(config.sharding_rules):
    init, _, shardings = runs.sharded_state_init(config, objective, model, tx, mesh)
    state = init()
    bs = sharding.batch_sharding(mesh)

    def loss_and_grads(params, model_state, batch):
      def loss_fn(p):
        return objective.loss(model, p, model_state, batch, jax.random.key(1), True)[0]
      return jax.value_and_grad(loss_fn)(params)

    f = jax.jit(loss_and_grads, in_shardings=(shardings.params, shardings.model_state, bs),
                out_shardings=(None, shardings.params))
    loss, grads = f(state.params, state.model_state, sharding.to_global(batch, bs))
    return float(loss), jax.device_get(grads), shardings.params


@pytest.fixture(scope="module")
def one_device(config, objective, batch):
  return _loss_and_grads(config, objective, batch, (1, 1, 1), jax.devices()[:1])[:2]


@pytest.mark.parametrize("mesh_sizes", [(8, 1, 1), (1, 8, 1), (2, 2, 2), (1, 1, 8)])
def test_every_mesh_gives_one_devices_loss_and_gradients(config, objective, batch, one_device,
                                                        mesh_sizes):
  ref_loss, ref_grads = one_device
  loss, grads, shardings = _loss_and_grads(config, objective, batch, mesh_sizes, jax.devices())
  assert loss == pytest.approx(ref_loss, rel=1e-5)
  # Per param tensor: |g - g_ref| / |g_ref| in the L2 norm (elementwise ratios of near-zero
  # gradients would measure float reassociation noise, not a sharding error). Gradients that
  # are zero in exact arithmetic (the ViT's key biases: softmax ignores a shift shared by all
  # keys) are noise on every mesh: they are held to 1e-5 of the whole gradient's norm instead.
  total = np.sqrt(sum(np.sum(r**2) for r in jax.tree.leaves(ref_grads)))
  errors = jax.tree.map(
      lambda g, r: float(np.linalg.norm(g - r) / max(np.linalg.norm(r), 1e-3 * total)),
      grads, ref_grads)
  worst = max(jax.tree_util.tree_leaves_with_path(errors), key=lambda kv: kv[1])
  assert worst[1] <= 1e-5, f"{jax.tree_util.keystr(worst[0])}: relative error {worst[1]:.2e}"
  # Each axis of size > 1 really splits some param or (data) the batch.
  specs = {a for s in jax.tree.leaves(shardings) for a in jax.tree.leaves(tuple(s.spec))}
  assert {a for a, n in zip(("fsdp", "tensor"), mesh_sizes[1:]) if n > 1} <= specs
