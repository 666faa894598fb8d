"""Rematerialisation (activation checkpointing) of transformer blocks, by policy name.

  "none"       keep every activation for the backward pass (fastest, most memory)
  "full"       keep only each block's input; recompute the block in the backward pass
  "save_dots"  keep the outputs of the weight matmuls (dots without batch dimensions), recompute
               attention and the elementwise ops: most of full's saving at a fraction of its
               recompute (MaxText's "minimal")
"""
import flax.linen as nn
import jax

POLICIES = ("none", "full", "save_dots")


def remat(block_cls: type[nn.Module], policy: str, static_argnums: tuple[int, ...]):
  """`block_cls`, checkpointed as `policy` says. static_argnums counts `self` as 0."""
  if policy not in POLICIES:
    raise ValueError(f"config.model.remat={policy!r}: expected one of {POLICIES}.")
  if policy == "none":
    return block_cls
  saveable = (jax.checkpoint_policies.dots_with_no_batch_dims_saveable
              if policy == "save_dots" else None)
  return nn.remat(block_cls, policy=saveable, static_argnums=static_argnums)
