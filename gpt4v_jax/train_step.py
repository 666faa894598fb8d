"""The train step: one jitted function of (state, batch) -> (state, metrics), with gradient
accumulation over micro-batches and the non-finite-update policy. `train.py` runs it in the
loop; benchmarks time it (experiments/benchmarks/train_step.py).
"""
import jax
import jax.numpy as jnp
import optax

from gpt4v_jax import runs, sharding


def make_train_step(objective, model, tx, schedule, *, deterministic: bool,
                    skip_nonfinite: bool, frozen: tuple[str, ...] = (), microbatches: int = 1):
  """(state, batch) -> (state, metrics): the objective's loss, its gradient, AdamW update.

  `metrics["finite"]` says whether loss, gradients and update were all finite. With
  `skip_nonfinite` a step where they are not leaves params and optimizer state as they were
  (the step counter and the data still move on); either way `nonfinite_steps` counts it.
  `frozen` names top-level param trees (e.g. "vit") that are not differentiated at all, so
  their backward pass is never computed, and have no optimizer state (`trained_params`).
  With `microbatches` k > 1 the batch is split into k interleaved micro-batches (rows i,
  i + k, ...: each stays spread over the data devices), whose gradients are averaged (each
  micro-batch's loss is its own mean, as big_vision does) before one update; activation
  memory falls k-fold. `model_state` (a VQ-VAE's EMA codebook) is threaded through the
  micro-batches in order.
  """

  def train_step(state: runs.TrainState, batch: dict[str, jax.Array]):
    dropout_rng = jax.random.fold_in(state.rng, state.step)
    trained = runs.trained_params(state.params, frozen)

    def loss_fn(trained, model_state, batch, rng):
      params = {**state.params, **trained}
      loss, aux, model_state = objective.loss(model, params, model_state, batch, rng,
                                              deterministic)
      return loss, (aux, model_state)

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    if microbatches == 1:
      (loss, (aux, model_state)), grads = grad_fn(trained, state.model_state, batch,
                                                  dropout_rng)
    else:
      (loss, aux), grads, model_state = _accumulate(grad_fn, trained, state.model_state,
                                                    batch, dropout_rng, microbatches)
    grad_norm = optax.tree.norm(grads)
    updates, opt_state = tx.update(grads, state.opt_state, trained)
    new_trained = optax.apply_updates(trained, updates)
    params = {**state.params, **new_trained}
    # The new params catch what loss and gradients miss, e.g. a NaN learning rate. (Not
    # the update's norm: that keeps the update alive beside the params it changes in place,
    # so XLA copies every param first.)
    finite = (jnp.isfinite(loss) & jnp.isfinite(grad_norm)
              & jnp.isfinite(optax.tree.norm(new_trained)))
    if skip_nonfinite:
      params, opt_state, model_state = jax.tree.map(
          lambda new, old: jnp.where(finite, new, old), (params, opt_state, model_state),
          (state.params, state.opt_state, state.model_state))
    c = state.counters
    counters = dict(skipped_examples=c["skipped_examples"] + _field_sum(batch, "skipped"),
                    truncated_texts=c["truncated_texts"] + _field_sum(batch, "truncated"),
                    nonfinite_steps=c["nonfinite_steps"] + (~finite).astype(jnp.int32))
    metrics = dict(loss=loss, grad_norm=grad_norm, learning_rate=schedule(state.step),
                   finite=finite, **counters, **aux)
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                         model_state=model_state, counters=counters), metrics

  return train_step


def _field_sum(batch: dict, field: str) -> jax.Array:
  """Sum of `field` over the batch: of every sub-batch's for a mixture ({part: rows})."""
  rows = batch.values() if field not in batch else [batch]
  return sum(part[field].sum() for part in rows)


def _accumulate(grad_fn, trained, model_state, batch, rng, k):
  """((mean loss, mean aux), mean gradients, model_state) of `grad_fn` over k micro-batches
  of `batch`, one after another (lax.scan: one micro-batch's activations live at a time)."""

  def split(x):  # [B, ...] -> [k, B / k, ...], micro-batch i = rows i, i + k, ...
    x = x.reshape(x.shape[0] // k, k, *x.shape[1:]).swapaxes(0, 1)
    return jax.lax.with_sharding_constraint(
        x, jax.sharding.PartitionSpec(None, sharding.BATCH_AXES))

  def body(carry, inputs):
    model_state, grad_sum = carry
    i, micro = inputs
    (loss, (aux, model_state)), grads = grad_fn(trained, model_state, micro,
                                                jax.random.fold_in(rng, i))
    grad_sum = jax.tree.map(jnp.add, grad_sum, grads)
    return (model_state, grad_sum), (loss, aux)

  zeros = jax.tree.map(jnp.zeros_like, trained)
  (model_state, grad_sum), (losses, auxes) = jax.lax.scan(
      body, (model_state, zeros), (jnp.arange(k), jax.tree.map(split, batch)))
  mean = lambda x: jnp.mean(x, axis=0)
  return ((mean(losses), jax.tree.map(mean, auxes)), jax.tree.map(lambda g: g / k, grad_sum),
          model_state)
