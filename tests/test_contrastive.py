"""The contrastive objective: its losses against a NumPy transcription of the papers'
formulas, the sharded loss (and gradients) against one device's on every 8-device mesh, and a
tiny run end to end: retrieval metrics, the front door's embeddings, the encoder initialising
a caption run, and contrastive as a part of the mixture."""
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import shapes_caption, shapes_contrastive, shapes_multitask
from gpt4v_jax import export, main, metric_writer, runs, sharding
from gpt4v_jax.model import Model
from gpt4v_jax.models import contrastive

MESHES = {"data": (8, 1, 1), "fsdp": (1, 8, 1), "data_fsdp": (2, 4, 1),
          "fsdp_tensor": (1, 4, 2), "data_tensor": (2, 1, 4)}


def _numpy_loss(kind, x, y, scale, bias):
  """The SigLIP / CLIP losses written out pair by pair, in float64."""
  x, y = x.astype(np.float64), y.astype(np.float64)
  b = len(x)
  logits = scale * x @ y.T + bias
  if kind == "sigmoid":
    total = 0.0
    for i in range(b):
      for j in range(b):
        z = 1.0 if i == j else -1.0
        total += np.log1p(np.exp(-z * logits[i, j]))
    return total / b
  i2t = [np.log(np.exp(logits[i]).sum()) - logits[i, i] for i in range(b)]
  t2i = [np.log(np.exp(logits[:, j]).sum()) - logits[j, j] for j in range(b)]
  return 0.5 * (np.mean(i2t) + np.mean(t2i))


@pytest.mark.parametrize("kind", ["sigmoid", "softmax"])
def test_losses_match_the_papers_formulas(kind):
  rng = np.random.default_rng(0)
  x, y = (rng.normal(size=(12, 16)).astype(np.float32) for _ in range(2))
  x /= np.linalg.norm(x, axis=1, keepdims=True)
  y /= np.linalg.norm(y, axis=1, keepdims=True)
  y[:4] = x[:4]  # Some matching pairs, so the loss is not all negatives.
  scale, bias = (10.0, -10.0) if kind == "sigmoid" else (1 / 0.07, 0.0)
  loss, aux = contrastive.contrastive_loss(kind, x, y, jnp.float32(scale), jnp.float32(bias))
  np.testing.assert_allclose(float(loss), _numpy_loss(kind, x, y, scale, bias), rtol=1e-5)
  expected_accuracy = np.mean(np.argmax(x @ y.T, axis=1) == np.arange(12))
  assert float(aux["batch_accuracy"]) == pytest.approx(expected_accuracy)


def test_heads_start_as_the_papers_say():
  head = contrastive.ContrastiveHead(8, loss="sigmoid")
  params = head.init(jax.random.PRNGKey(0), jnp.zeros((1, 4, 8)), jnp.zeros((1, 3, 8)),
                     jnp.ones((1, 3), bool))["params"]
  assert float(nn.unbox(params["temperature"])) == pytest.approx(np.log(10.0))
  assert float(nn.unbox(params["bias"])) == -10.0
  clip = contrastive.ContrastiveHead(8, loss="softmax", image_pool="mean", text_pool="mean")
  params = clip.init(jax.random.PRNGKey(0), jnp.zeros((1, 4, 8)), jnp.zeros((1, 3, 8)),
                     jnp.ones((1, 3), bool))["params"]
  assert "bias" not in params and "image_pool_head" not in params
  assert float(nn.unbox(params["temperature"])) == pytest.approx(np.log(1 / 0.07))
  with pytest.raises(ValueError, match="image_pool='max'"):
    contrastive.ContrastiveHead(8, image_pool="max")


def _mesh(shape):
  devices = jax.devices()[:int(np.prod(shape))]
  return jax.make_mesh(shape, sharding.MESH_AXES, devices=devices,
                       axis_types=(jax.sharding.AxisType.Auto,) * 3)


@pytest.mark.parametrize("kind", ["sigmoid", "softmax"])
def test_sharded_loss_equals_one_devices_on_every_mesh(kind):
  """Every image meets every text of the global batch: on each 8-device mesh the loss and
  its gradients (embeddings, scale, bias) equal one device's."""
  rng = np.random.default_rng(2)
  x, y = (rng.normal(size=(16, 32)).astype(np.float32) for _ in range(2))
  x /= np.linalg.norm(x, axis=1, keepdims=True)
  y /= np.linalg.norm(y, axis=1, keepdims=True)
  y[:8] = 0.6 * x[:8] + 0.4 * y[:8]  # Some pairs closer than the rest.
  scale, bias = np.float32(12.0), np.float32(-8.0 if kind == "sigmoid" else 0.0)

  def loss_and_grads(mesh):
    rules = sharding.DEFAULT_RULES
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
      batch = sharding.batch_sharding(mesh)
      fn = jax.jit(jax.value_and_grad(
          lambda *a: contrastive.contrastive_loss(kind, *a)[0], argnums=(0, 1, 2, 3)))
      loss, grads = fn(jax.device_put(x, batch), jax.device_put(y, batch), scale, bias)
      return float(loss), [np.asarray(g) for g in grads]

  reference, reference_grads = loss_and_grads(_mesh((1, 1, 1)))
  for name, shape in MESHES.items():
    loss, grads = loss_and_grads(_mesh(shape))
    assert abs(loss - reference) <= 1e-5, (name, loss, reference)
    for g, r in zip(grads, reference_grads):
      np.testing.assert_allclose(g, r, atol=1e-5, err_msg=name)


def test_sharded_train_loss_equals_one_devices(tiny_data_dir):
  """The objective's whole loss (ViT, MAP head, decoder as text tower, all-gathered texts)
  on a data x fsdp x tensor mesh equals one device's (the gradients through the gather:
  the test above)."""
  config = shapes_contrastive.get_config("tiny")
  config.data.data_dir = tiny_data_dir
  objective = runs.make_objective(config)
  model = objective.build_model(config.model)
  rng = np.random.default_rng(1)
  s, t = config.data.image_size, objective.max_text_len
  mask = np.arange(t)[None] < rng.integers(4, t, size=16)[:, None]
  batch = dict(image=rng.uniform(-1, 1, (16, s, s, 3)).astype(np.float32),
               text=np.where(mask, rng.integers(16, 60, size=(16, t)), 0).astype(np.int32),
               input_mask=mask)
  rules = config.sharding_rules
  boxed = objective.init_variables(model, jax.random.PRNGKey(0))["params"]
  values = jax.device_get(nn.unbox(boxed))

  def loss(mesh):
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
      params = jax.device_put(values, sharding.logical_to_shardings(boxed, mesh, rules))
      fn = jax.jit(lambda p, b: objective.loss(model, p, {}, b, jax.random.PRNGKey(1), True)[0])
      return float(fn(params, jax.device_put(batch, sharding.batch_sharding(mesh))))

  reference = loss(_mesh((1, 1, 1)))
  assert reference > 0 and abs(loss(_mesh((2, 2, 2))) - reference) <= 1e-5


@pytest.fixture(scope="module")
def contrastive_run(tmp_path_factory, tiny_data_dir):
  """A tiny contrastive run, trained in the test process."""
  workdir = str(tmp_path_factory.mktemp("contrastive") / "run")
  config = shapes_contrastive.get_config("tiny")
  config.data.data_dir = tiny_data_dir
  config.evals.every = 0  # The final test evaluation only.
  main.train(config, workdir)
  return workdir


def test_tiny_run_reports_retrieval_metrics(contrastive_run):
  with open(os.path.join(contrastive_run, "results.json")) as f:
    results = json.load(f)
  test = results["test"]
  for k in (1, 5, 10):
    for way in ("i2t", "t2i"):
      assert 0.0 <= test[f"strict_{way}_recall_at_{k}"] <= test[f"{way}_recall_at_{k}"] <= 1.0
  for task in ("shape", "color", "size"):
    assert 0.0 <= test[f"zero_shot_{task}_accuracy"] <= 1.0
  assert test["similar_precision_at_5"] <= test["similar_precision_at_5_max"]
  with open(os.path.join(contrastive_run, "eval_test_step6.json")) as f:
    records = json.load(f)["predictions"]
  assert len(records) == 16 and len(records[0]["retrieved"]) == 5


def test_front_door_embeds_images_and_texts(contrastive_run, tiny_data_dir, tmp_path):
  model = Model.from_pretrained(contrastive_run)
  config = shapes_contrastive.get_config("tiny")
  config.data.data_dir = tiny_data_dir
  from gpt4v_jax.data import datasets
  source = datasets.open_splits(config.data)["test"]
  examples = [source[i] for i in range(3)]
  image_emb = model.embed([ex["image"] for ex in examples])
  text_emb = model.embed_text([ex["captions"][0].decode() for ex in examples])
  assert image_emb.shape == text_emb.shape == (3, config.objective.embed_dim)
  np.testing.assert_allclose(np.linalg.norm(image_emb, axis=1), 1.0, rtol=1e-5)
  # The same embeddings as the evaluation computed (its top caption scores).
  with open(os.path.join(contrastive_run, "eval_test_step6.json")) as f:
    record = json.load(f)["predictions"][0]
  all_text = model.embed_text(record["retrieved"][:1])
  assert float(image_emb[0] @ all_text[0]) == pytest.approx(record["scores"][0], abs=1e-4)
  # An exported model directory embeds the same, on another mesh.
  exported = export.export(contrastive_run, str(tmp_path / "exported"))
  again = Model.from_pretrained(exported, mesh=dict(data=2, fsdp=2, tensor=2))
  np.testing.assert_allclose(again.embed([ex["image"] for ex in examples]), image_emb,
                             atol=1e-5)


def test_contrastive_encoder_initialises_a_caption_run(contrastive_run, tiny_data_dir,
                                                       tmp_path):
  """config.init takes the "vit" tree: frozen, the caption run keeps it bitwise."""
  config = shapes_caption.get_config("tiny")
  config.data.data_dir = tiny_data_dir
  config.init = dict(workdir=contrastive_run, params=("vit",))
  config.optimizer.frozen = ("vit",)
  config.train.steps = 2
  config.evals.update(every=0, final_splits=())
  main.train(config, str(tmp_path / "caption"))
  _, _, pretrained, _ = runs.restore_run(contrastive_run, "contrastive run")
  _, model, finetuned, _ = runs.restore_run(str(tmp_path / "caption"), "caption run")
  assert model.contrastive is None and "contrastive" not in finetuned.params
  for a, b in zip(jax.tree.leaves(finetuned.params["vit"]),
                  jax.tree.leaves(pretrained.params["vit"])):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  with pytest.raises(ValueError, match="no text embedding"):
    Model.from_pretrained(str(tmp_path / "caption")).embed_text(["a small red circle."])


def test_contrastive_joins_the_mixture(tiny_data_dir, tmp_path):
  """A caption + contrastive mixture trains one model (the head on the captioner) and
  evaluates each part on its own."""
  config = shapes_multitask.get_config("tiny")
  config.data.data_dir = tiny_data_dir
  config.objective.mixture = dict(
      caption=dict(weight=1.0, prompt="", max_text_len=26),
      contrastive=dict(weight=1.0, max_text_len=26, embed_dim=32, loss="sigmoid",
                       image_pool="mean", text_pool="last"))
  config.init = dict(workdir="", params=("vit",))
  config.train.update(steps=2, log_every=1)
  # Each part evaluates on its own (objectives' own tests cover those).
  config.evals.update(every=0, final_splits=())
  main.train(config, str(tmp_path / "mix"))
  scalars = metric_writer.read_scalars(str(tmp_path / "mix" / "tb"))
  parts = {tag: values for tag, values in scalars.items() if "/loss" in tag}
  assert any("contrastive/loss" in t for t in parts) and any("caption/loss" in t for t in parts)
  assert all(np.isfinite(v) for values in parts.values() for _, v in values)
  _, model, state, _ = runs.restore_run(str(tmp_path / "mix"), "mixture")
  assert {"vit", "projector", "decoder", "contrastive"} <= set(state.params)
  assert model.contrastive.embed_dim == 32
