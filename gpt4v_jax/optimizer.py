"""AdamW with linear warmup, cosine decay and global-norm gradient clipping."""
import jax
import optax


def _decay_mask(params):
  """Weight decay on matrices only; norms and biases (1-d) are left alone, as is standard."""
  return jax.tree.map(lambda p: p.ndim > 1, params)


def make_optimizer(cfg, total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """`config.optimizer` -> (transformation, learning-rate schedule)."""
  schedule = optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=cfg.learning_rate, warmup_steps=cfg.warmup_steps,
      decay_steps=max(total_steps, cfg.warmup_steps + 1),
      end_value=cfg.learning_rate * cfg.end_learning_rate_fraction)
  tx = optax.chain(
      optax.clip_by_global_norm(cfg.grad_clip_norm),
      optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, weight_decay=cfg.weight_decay,
                  mask=_decay_mask),
  )
  return tx, schedule
