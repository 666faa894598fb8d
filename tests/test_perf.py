"""Peak rates, and the model-FLOP count for MFU against XLA's cost analysis."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from configs import shapes_caption, shapes_vqvae
from gpt4v_jax import perf, runs


def test_compiled_flops_counts_a_matmul():
  a, b = jnp.ones((64, 128)), jnp.ones((128, 32))
  compiled = jax.jit(lambda x, y: x @ y).lower(a, b).compile()
  assert perf.compiled_flops(compiled) == pytest.approx(2 * 64 * 128 * 32, rel=0.01)


def test_cpu_peak_is_measured():
  peak, source = perf.peak_flops_per_device()
  assert "measured" in source and 1e8 < peak < 1e14


@pytest.mark.parametrize("overrides", [
    dict(),  # The default caption model: ViT-mu/16, 2 x 128 decoder, GELU MLP.
    dict(vit_variant="S/16", width=512, depth=4, mlp_dim=2048, num_heads=8, num_kv_heads=8),
    dict(vit_stem="resnet", projector="mlp", mlp_type="gated"),
    dict(vit_stem="conv", projector_merge=2),
    dict(fusion="cross_attention", cross_attention_every=1),
    dict(resampler_latents=8, resampler_depth=2),
])
def test_flop_count_agrees_with_xla_cost_analysis(overrides):
  """The formula (all attention pairs counted, as the dense masked computation does them)
  against XLA's count of the compiled loss and of its gradient: within 4%. XLA counts
  elementwise ops too and skips padded conv taps, so exact equality is not expected."""
  config = shapes_caption.get_config()
  config.model.update(overrides)
  objective = runs.make_objective(config)
  model = objective.build_model(config.model)
  params = jax.eval_shape(lambda: nn.unbox(objective.init_variables(model, jax.random.key(0))))
  batch = objective.batch_spec(8)

  def loss(params, batch):
    return objective.loss(model, params["params"], {}, batch, jax.random.key(0), True)[0]

  forward = model.forward_flops(objective.max_text_len, causal_halving=False)
  ours = 8 * sum(forward.values())
  xla_forward = perf.compiled_flops(jax.jit(loss).lower(params, batch).compile())
  xla_train = perf.compiled_flops(jax.jit(jax.grad(loss)).lower(params, batch).compile())
  assert xla_forward == pytest.approx(ours, rel=0.04)
  assert xla_train == pytest.approx(3 * ours, rel=0.04)
  # The MFU count halves causal attention only, and counts all of forward and backward.
  halved = model.forward_flops(objective.max_text_len)
  assert halved["vit"] == forward["vit"] and halved["decoder"] < forward["decoder"]
  assert objective.train_flops_per_example(model) == 3 * sum(halved.values())


def test_vqvae_flop_count_is_within_10_percent_of_xla():
  """Ours counts every tap of a padded conv; XLA skips the border's zero taps (~8% here)."""
  config = shapes_vqvae.get_config()
  objective = runs.make_objective(config)
  model = objective.build_model(config.model)
  variables = jax.eval_shape(lambda: nn.unbox(objective.init_variables(model, jax.random.key(0))))
  params = variables.pop("params")
  batch = objective.batch_spec(8)

  def loss(params, model_state, batch):
    return objective.loss(model, params, model_state, batch, jax.random.key(0), True)[0]

  xla = perf.compiled_flops(jax.jit(loss).lower(params, variables, batch).compile())
  ours = 8 * model.forward_flops()
  assert 0.9 * ours < xla < ours
  assert objective.train_flops_per_example(model) == 3 * model.forward_flops()
