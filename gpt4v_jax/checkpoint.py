"""Orbax checkpoints holding the train state and the grain iterator together.

A checkpoint step `N` holds two items:
  state  params, optimizer state, step and RNG (sharded arrays, via StandardSave)
  data   the training iterator's position (a small JSON, via grain's handler)
Restoring takes an abstract state whose leaves carry the *target* shardings, so a run can
resume on a different mesh than the one that saved it.
"""
from typing import Any

import grain
import orbax.checkpoint as ocp


class Checkpointer:
  """Async saves (the caller decides when), keeps the newest `keep`, restores state + iterator."""

  def __init__(self, directory: str, *, keep: int):
    self.manager = ocp.CheckpointManager(
        directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                             enable_async_checkpointing=True),
        item_names=("state", "data"))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state: Any, data_iter: grain.DatasetIterator) -> None:
    """Starts an async save: returns once the arrays are copied off the devices."""
    self.manager.save(
        step, force=True,
        args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                data=grain.checkpoint.CheckpointSave(data_iter)))

  def restore(self, step: int, abstract_state: Any,
              data_iter: grain.DatasetIterator | None) -> Any:
    """State laid out as `abstract_state` says; `data_iter` is moved to the saved position."""
    items = dict(state=ocp.args.StandardRestore(abstract_state))
    if data_iter is not None:
      items["data"] = grain.checkpoint.CheckpointRestore(data_iter)
    return self.manager.restore(step, args=ocp.args.Composite(**items)).state

  def wait(self) -> None:
    """Blocks until pending async saves are committed."""
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.close()
