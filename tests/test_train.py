"""The sharded train step, checkpoint round trips and the data iterator resume."""
import json

import jax
import jax.numpy as jnp
import flax.linen as nn
import numpy as np
import pytest

from configs import shapes_caption, shapes_vqa
from gpt4v_jax import checkpoint, config_checks, perf, runs, sharding, train_step
from gpt4v_jax.data import pipeline
from gpt4v_jax.models.gpt4v import build_model
from gpt4v_jax.optimizer import make_optimizer


def _tiny_config(data_dir=None):
  c = shapes_caption.get_config("tiny")
  if data_dir is not None:
    c.data.data_dir = str(data_dir)
  return c


def _random_batch(config, seed=0):
  """A batch of random images and real caption rows (no dataset needed)."""
  rng = np.random.default_rng(seed)
  obj = runs.make_objective(config)
  rows = []
  for i in range(config.data.global_batch_size):
    ex = dict(image=rng.integers(0, 256, (64, 64, 3), dtype=np.uint8),
              captions=[f"a small red circle and {i} large blue squares."])
    rows.append(dict(obj.train_example(ex, rng), skipped=np.int32(0)))
  return {k: np.stack([r[k] for r in rows]) for k in rows[0]}, obj


def _run_steps(config, devices, batch, max_text_len, num_steps=2):
  """Losses of `num_steps` train steps on `batch` over a mesh of `devices`."""
  mesh = sharding.make_mesh(config.mesh, devices)
  model = build_model(config.model)
  tx, schedule = make_optimizer(config.optimizer, config.train.steps)
  with jax.set_mesh(mesh), nn.logical_axis_rules(config.sharding_rules):
    obj = runs.make_objective(config)
    init, _, shardings = runs.sharded_state_init(config, obj, model, tx, mesh)
    bs = sharding.batch_sharding(mesh)
    step = jax.jit(train_step.make_train_step(obj, model, tx, schedule, deterministic=True,
                                         skip_nonfinite=False,
                                         frozen=tuple(config.optimizer.frozen),
                                         microbatches=config.train.microbatches),
                   in_shardings=(shardings, bs), out_shardings=(shardings, None),
                   donate_argnums=0)
    state = init()
    losses = []
    for _ in range(num_steps):
      state, metrics = step(state, sharding.to_global(batch, bs))
      losses.append(float(metrics["loss"]))
    return losses, jax.device_get(state.params), shardings


@pytest.fixture(scope="module")
def tiny_steps():
  """tiny_steps(data, fsdp, microbatches=1) -> (losses, params, shardings) of two steps of
  the tiny config on one random batch, over a data x fsdp mesh (1 x 1: the first device).
  Each setting is compiled and run once for the module."""
  config = _tiny_config()
  batch, obj = _random_batch(config)
  runs = {}

  def run(data, fsdp, microbatches=1):
    if (data, fsdp, microbatches) not in runs:
      c = config.copy_and_resolve_references()
      c.mesh.update(data=data, fsdp=fsdp, tensor=1)
      c.train.microbatches = microbatches
      devices = jax.devices()[:data * fsdp]
      runs[data, fsdp, microbatches] = _run_steps(c, devices, batch, obj.max_text_len)
    return runs[data, fsdp, microbatches]

  run.batch = batch
  return run


def test_sharded_step_matches_one_device(tiny_steps):
  """Data parallel x FSDP: the whole step (loss, gradients, AdamW, donation) matches one
  device. Each mesh axis alone, and tensor parallelism, are held to one device's loss and
  gradients in tests/test_parallelism.py."""
  ref_losses, ref_params, _ = tiny_steps(1, 1)
  losses, params, shardings = tiny_steps(2, 4)
  np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
  # Adam divides by sqrt(v): for near-zero gradients, float reassociation noise across
  # devices becomes an update of up to ~lr/100, hence the absolute tolerance on params.
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=5e-5),
               params, ref_params)
  # FSDP really shards: some param is split over the fsdp axis.
  specs = [s.spec for s in jax.tree.leaves(shardings.params)]
  assert any("fsdp" in jax.tree.leaves(tuple(s)) for s in specs)


def test_mesh_errors_name_the_setting():
  with pytest.raises(ValueError, match="config.mesh"):
    sharding.mesh_shape(dict(data=3, fsdp=-1, tensor=1), 8)
  with pytest.raises(ValueError, match="config.mesh"):
    sharding.mesh_shape(dict(data=2, fsdp=2, tensor=1), 8)
  assert sharding.mesh_shape(dict(data=-1, fsdp=2, tensor=1), 8) == (4, 2, 1)
  mesh = sharding.make_mesh(dict(data=4, fsdp=2, tensor=1))
  with pytest.raises(ValueError, match="config.data.global_batch_size=12"):
    sharding.check_batch_divides(12, mesh, "config.data.global_batch_size")


def _train_iter(sources, obj, seed=0):
  return iter(pipeline.train_dataset(
      sources["train"], obj.train_example, seed=seed, local_batch_size=8,
      process_index=0, process_count=1, num_threads=2))


def test_pipeline_is_deterministic_and_reshuffles_epochs(tiny_sources):
  obj = runs.make_objective(_tiny_config())
  a, b = _train_iter(tiny_sources, obj), _train_iter(tiny_sources, obj)
  batches_a = [next(a) for _ in range(40)]  # 320 examples: more than one epoch of 256.
  for x, y in zip(batches_a, [next(b) for _ in range(40)]):
    jax.tree.map(np.testing.assert_array_equal, x, y)
  assert batches_a[0]["image"].shape == (8, 64, 64, 3)
  assert batches_a[0]["text"].shape == (8, obj.max_text_len)
  # Two hosts read disjoint shards.
  h0 = pipeline.train_dataset(tiny_sources["train"], obj.train_example, seed=0,
                              local_batch_size=8, process_index=0, process_count=2,
                              num_threads=0)
  h1 = pipeline.train_dataset(tiny_sources["train"], obj.train_example, seed=0,
                              local_batch_size=8, process_index=1, process_count=2,
                              num_threads=0)
  i0, i1 = next(iter(h0)), next(iter(h1))
  assert not np.array_equal(i0["image"], i1["image"])


def test_checkpoint_restores_onto_another_mesh_and_iterator_resumes(tiny_sources, tmp_path):
  config = _tiny_config()
  obj = runs.make_objective(config)
  model = build_model(config.model)
  tx, _ = make_optimizer(config.optimizer, config.train.steps)

  def setup(mesh_sizes):
    config.mesh.update(**mesh_sizes)
    mesh = sharding.make_mesh(config.mesh)
    with jax.set_mesh(mesh), nn.logical_axis_rules(config.sharding_rules):
      return runs.sharded_state_init(config, obj, model, tx, mesh)

  init, _, _ = setup(dict(data=8, fsdp=1, tensor=1))
  state = init()
  it = _train_iter(tiny_sources, obj)
  for _ in range(3):
    next(it)
  ckpt = checkpoint.Checkpointer(str(tmp_path / "ckpt"), keep=2)
  ckpt.save(3, state, it)
  ckpt.wait()
  expected_next = [next(it) for _ in range(2)]

  _, abstract, shardings = setup(dict(data=2, fsdp=4, tensor=1))
  fresh_it = _train_iter(tiny_sources, obj)
  restored = checkpoint.Checkpointer(str(tmp_path / "ckpt"), keep=2)
  assert restored.latest_step() == 3
  new_state = restored.restore(3, abstract, fresh_it)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(new_state),
               jax.device_get(state))
  for leaf, sh in zip(jax.tree.leaves(new_state), jax.tree.leaves(shardings)):
    assert leaf.sharding.is_equivalent_to(sh, leaf.ndim)
  for want in expected_next:
    jax.tree.map(np.testing.assert_array_equal, next(fresh_it), want)
  ckpt.close()
  restored.close()


def test_gradient_accumulation_matches_the_whole_batch(tiny_steps):
  """Rows of one length carry equal token counts, so the mean of micro-batch means is the
  batch mean: 4 micro-batches of 4 give the same losses and params as one batch of 16."""
  assert len(set(tiny_steps.batch["loss_mask"].sum(axis=1))) == 1
  ref_losses, ref_params, _ = tiny_steps(2, 4)
  losses, params, _ = tiny_steps(2, 4, microbatches=4)
  np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=5e-5),
               params, ref_params)


def test_frozen_encoder_gets_no_update_no_optimizer_state_and_no_backward_pass():
  config = _tiny_config()
  batch, obj = _random_batch(config)
  model = build_model(config.model)
  trained_only = lambda p: {k: v for k, v in p.items() if k != "vit"}
  config.optimizer.frozen = ("vit",)
  _, params, _ = _run_steps(config, jax.devices()[:1], batch, obj.max_text_len, num_steps=0)
  # (The first step's learning rate is 0: warmup starts there.)
  losses, new_params, _ = _run_steps(config, jax.devices()[:1], batch, obj.max_text_len,
                                     num_steps=3)
  assert losses[2] < losses[0]
  jax.tree.map(np.testing.assert_array_equal, new_params["vit"], params["vit"])
  assert all(not np.array_equal(a, b) for a, b in zip(
      jax.tree.leaves(trained_only(new_params)), jax.tree.leaves(trained_only(params))))
  # Adam keeps two moments per trained param and none for the ViT's.
  tx, schedule = make_optimizer(config.optimizer, config.train.steps)
  with jax.set_mesh(sharding.make_mesh(config.mesh, jax.devices()[:1])):
    _, abstract, _ = runs.sharded_state_init(config, obj, model, tx, sharding.make_mesh(
        config.mesh, jax.devices()[:1]))
  moments = [x for x in jax.tree.leaves(abstract.opt_state) if x.ndim > 0]
  assert len(moments) == 2 * len(jax.tree.leaves(trained_only(params)))
  # The compiled step skips the ViT's backward pass: XLA counts ~2 ViT forwards fewer FLOPs.
  vit_forward = config.data.global_batch_size * model.forward_flops(obj.max_text_len)["vit"]
  flops = {}
  for frozen in ((), ("vit",)):
    state = jax.eval_shape(lambda: runs.TrainState(
        step=jnp.int32(0), params=params, opt_state=tx.init(runs.trained_params(params, frozen)),
        model_state={}, rng=jax.random.key(0),
        counters={k: jnp.int32(0) for k in runs.COUNTERS}))
    step = train_step.make_train_step(obj, model, tx, schedule, deterministic=True,
                                 skip_nonfinite=False, frozen=frozen)
    flops[frozen] = perf.compiled_flops(jax.jit(step).lower(state, batch).compile())
  assert flops[()] - flops[("vit",)] == pytest.approx(2 * vit_forward, rel=0.1)
  with pytest.raises(ValueError, match=r"config.optimizer.frozen=\('vti',\): \['vti'\]"):
    runs.trained_params(params, ("vti",))


def test_configs_saved_before_keys_were_added_load_with_their_old_behaviour(tmp_path):
  """A workdir whose config.json predates keys (here: every key added since) still loads."""
  config = json.loads(shapes_vqa.get_config().to_json_best_effort())
  old = json.loads(json.dumps(config))
  for section, name in (("optimizer", "frozen"), ("train", "microbatches"), ("model", "fusion"),
                        ("model", "scan_layers"), ("model", "encoder"),
                        ("objective", "max_question_len"), ("objective", "questions_per_row"),
                        *(("data", k) for k in ("name", "path", "image_size", "resize",
                                                "normalize", "max_pixels",
                                                "random_resized_crop", "hflip"))):
    del old[section][name]
  del old["init"]
  old["model"]["remat"] = False
  (tmp_path / "config.json").write_text(json.dumps(old))
  loaded = config_checks.load_saved_config(str(tmp_path))
  config["objective"].update(max_question_len=config["objective"]["max_text_len"] - 4,
                             questions_per_row=1)  # One question per row, as then.
  config["init"] = dict(workdir="", params=["vit"])  # From scratch, as then.
  assert loaded == config
