"""Orbax checkpoints holding the train state and the grain iterator together.

A checkpoint step `N` holds two items:
  state  params, optimizer state, step, counters and RNG (sharded arrays, via StandardSave)
  data   the training iterator's position (a small JSON, via grain's handler)
Restoring takes an abstract state whose leaves carry the *target* shardings, so a run can
resume on a different mesh than the one that saved it.

Faults handled here:
  - A save interrupted by a crash or kill leaves only Orbax's `<N>.orbax-checkpoint-tmp-*`
    directory, which is never listed as a step and is deleted when the next run starts.
  - A step that exists but cannot be read (missing or truncated files) is reported, moved
    aside to `<directory>_unreadable/<N>`, and the next older step is restored instead.
  - A failed write (disk full, no permission) raises CheckpointError saying which steps are
    still intact.
Nothing here goes through pickle: arrays are TensorStore/OCDBT files, metadata and the
iterator position are JSON, so reading a checkpoint never executes code.
"""
import contextlib
import os
import shutil
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from gpt4v_jax.metric_writer import log

_TMP_MARKER = ".orbax-checkpoint-tmp"


class CheckpointError(RuntimeError):
  """A checkpoint could not be written, or no checkpoint in the directory could be read."""


class Checkpointer:
  """Async saves (the caller decides when), keeps the newest `keep`, restores state + iterator."""

  def __init__(self, directory: str, *, keep: int):
    self.directory = directory
    self._report_unfinished_saves()
    self.manager = ocp.CheckpointManager(
        directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                             enable_async_checkpointing=True,
                                             cleanup_tmp_directories=True),
        item_names=("state", "data"))
    self._saving: int | None = None  # The step of the async save in flight, if any.

  def _report_unfinished_saves(self) -> None:
    if not os.path.isdir(self.directory):
      return
    for name in sorted(os.listdir(self.directory)):
      if _TMP_MARKER in name:
        log(f"Deleting {name} in {self.directory}: a save that never finished (the run was "
            "killed, or the write failed); it is not a checkpoint.")

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state: Any, data_iter: grain.DatasetIterator) -> None:
    """Starts an async save: returns once the arrays are copied off the devices.

    Raises CheckpointError if this save, or the previous one still in flight, fails.
    """
    self.wait()  # Orbax would wait too; doing it here names the right step if that one failed.
    with self._write_errors(step):
      # Orbax 0.12 waits forever for a step directory it failed to create: probe first.
      probe = os.path.join(self.directory, f".write_probe_{jax.process_index()}")
      with open(probe, "w") as f:
        f.write(str(step))
      os.remove(probe)
      self.manager.save(
          step, force=True,
          args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                  data=grain.checkpoint.CheckpointSave(data_iter)))
    self._saving = step

  def wait(self) -> None:
    """Blocks until pending async saves are committed; raises CheckpointError if one failed."""
    with self._write_errors(self._saving):
      self.manager.wait_until_finished()
    self._saving = None

  @contextlib.contextmanager
  def _write_errors(self, step: int | None):
    """Turns a failed write into a CheckpointError naming the step and the intact steps."""
    try:
      yield
    except Exception as e:  # OSError from our code, or whatever TensorStore raises.
      self.manager.reload()  # Forget the failed step: list only what is committed on disk.
      raise CheckpointError(
          f"Writing checkpoint step {step} to {self.directory} failed: {type(e).__name__}: "
          f"{_first_line(e)}. Free disk space or make the directory writable, then rerun the "
          f"same command: it resumes from the newest of the committed steps "
          f"{sorted(self.manager.all_steps())}, which this failure did not touch.") from e

  def restore(self, step: int, abstract_state: Any,
              data_iter: grain.DatasetIterator | None) -> Any:
    """State laid out as `abstract_state` says; `data_iter` is moved to the saved position."""
    items = dict(state=ocp.args.StandardRestore(abstract_state))
    if data_iter is not None:
      items["data"] = grain.checkpoint.CheckpointRestore(data_iter)
    return self.manager.restore(step, args=ocp.args.Composite(**items)).state

  def restore_latest(self, abstract_state: Any,
                     data_iter: grain.DatasetIterator | None) -> tuple[Any, int] | None:
    """(state, step) of the newest readable step; None if the directory holds no step.

    Unreadable newer steps are moved aside, so the run can save those steps again. Raises
    CheckpointError if steps exist but none can be read: starting from scratch over them
    would silently throw a run away.
    """
    steps = sorted(self.manager.all_steps(), reverse=True)
    unreadable = []
    for step in steps:
      try:
        state = self.restore(step, abstract_state, data_iter)
      except Exception as e:  # Whatever Orbax, TensorStore or grain raise for bad files.
        log(f"WARNING: checkpoint step {step} in {self.directory} cannot be restored: "
            f"{type(e).__name__}: {_first_line(e)}")
        unreadable.append((step, e))
        continue
      if unreadable:
        self._move_aside([s for s, _ in unreadable])
        log(f"WARNING: resuming from step {step}, the newest readable checkpoint.")
      return state, step
    if unreadable:
      step, e = unreadable[0]
      raise CheckpointError(
          f"None of the checkpoints in {self.directory} (steps {steps}) can be restored; "
          f"step {step} failed with {type(e).__name__}: {_first_line(e)}. Nothing was "
          "deleted. If the config changed since they were written, use the original config; "
          "to start over, move the directory away.") from e
    return None

  def _move_aside(self, steps: list[int]) -> None:
    aside = self.directory.rstrip("/") + "_unreadable"
    if jax.process_index() == 0:
      os.makedirs(aside, exist_ok=True)
      for step in steps:
        target = os.path.join(aside, str(step))
        shutil.rmtree(target, ignore_errors=True)  # An older copy of the same step.
        os.replace(os.path.join(self.directory, str(step)), target)
        log(f"WARNING: moved unreadable step {step} to {target}.")
    multihost_utils.sync_global_devices("checkpoint_move_aside")
    self.manager.reload()

  def close(self) -> None:
    self.manager.close()


def _first_line(e: Exception) -> str:
  return str(e).strip().split("\n")[0][:500]
