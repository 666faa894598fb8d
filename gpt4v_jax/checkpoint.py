"""Orbax checkpoints holding the train state and the grain iterator together.

A checkpoint step `N` holds three items:
  state      params, optimizer state, step, counters and RNG (sharded arrays, StandardSave)
  data       each process's training iterator position (small JSONs, via grain's handler)
  checksums  two 32-bit checksums of every array of `state`, computed on the devices when
             the step is saved (JSON)
Restoring takes an abstract state whose leaves carry the *target* shardings, so a run can
resume on a different mesh than the one that saved it, and on another number of processes:
the iterator positions the old processes saved are translated (`pipeline.relayout_state`).

Faults handled here:
  - A save interrupted by a crash or kill leaves only Orbax's `<N>.orbax-checkpoint-tmp-*`
    directory, which is never listed as a step and is deleted when the next run starts.
  - A step that exists but cannot be read (missing or truncated files), or whose arrays read
    back differ from their checksums (bits flipped on disk or in transfer: the files stay
    readable), is reported, moved aside to `<directory>_unreadable/<N>`, and the next older
    step is restored instead.
  - A failed write (disk full, no permission) raises CheckpointError saying which steps are
    still intact.
Nothing here goes through pickle: arrays are TensorStore/OCDBT files, metadata and the
iterator position are JSON, so reading a checkpoint never executes code.
"""
import contextlib
import json
import os
import re
import shutil
from typing import Any, Callable

import grain
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils

from gpt4v_jax.metric_writer import log

_TMP_MARKER = ".orbax-checkpoint-tmp"


class CheckpointError(RuntimeError):
  """A checkpoint could not be written, or no checkpoint in the directory could be read."""


class CorruptCheckpoint(CheckpointError):
  """A step's arrays were read back but differ from the checksums saved with them."""


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
        item_names=("state", "data", "checksums"))
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
                                  data=grain.checkpoint.CheckpointSave(data_iter),
                                  checksums=ocp.args.JsonSave(checksums(state))))
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

  def restore(self, step: int, abstract_state: Any, data_iter: grain.DatasetIterator | None,
              relayout: Callable[[list[Any]], tuple[Any, int]] | None = None) -> Any:
    """State laid out as `abstract_state` says, checked against its checksums; `data_iter`
    is moved to the saved position.

    Saved by a run on another number of processes, the data positions are those processes'
    states, which `relayout(states) -> (this process's state, rows left out)` translates
    (`pipeline.relayout_state`); without `relayout` such a step cannot be restored with its
    data position.
    """
    step_dir = epath.Path(self.directory) / str(step)
    items = dict(state=ocp.args.StandardRestore(abstract_state))
    saved_sums = (step_dir / "checksums").exists()
    if saved_sums:  # Steps saved before checksums existed are restored unchecked.
      items["checksums"] = ocp.args.JsonRestore()
    other_layout = (_other_layout_states(step_dir / "data")
                    if data_iter is not None and relayout is not None else None)
    if data_iter is not None and other_layout is None:
      items["data"] = grain.checkpoint.CheckpointRestore(data_iter)
    restored = self.manager.restore(step, args=ocp.args.Composite(**items))
    if saved_sums:
      _verify(step, restored.checksums, checksums(restored.state))
    else:
      log(f"Checkpoint step {step} has no checksums (saved before they were written); "
          "restored without checking them.")
    if other_layout is not None:
      state, lost = relayout(other_layout)
      data_iter.set_state(state)
      log(f"The data position of step {step}, saved by {len(other_layout)} process(es), "
          f"continues on {jax.process_count()}"
          + (f"; {lost} rows of batches that some process had started are left out." if lost
             else ": every example follows on exactly."))
    return restored.state

  def restore_latest(self, abstract_state: Any, data_iter: grain.DatasetIterator | None,
                     relayout: Callable[[list[Any]], tuple[Any, int]] | None = None
                     ) -> tuple[Any, int] | None:
    """(state, step) of the newest readable step; None if the directory holds no step.

    Unreadable newer steps are moved aside, so the run can save those steps again. Raises
    CheckpointError if steps exist but none can be read: starting from scratch over them
    would silently throw a run away.
    """
    steps = sorted(self.manager.all_steps(), reverse=True)
    unreadable = []
    for step in steps:
      try:
        state = self.restore(step, abstract_state, data_iter, relayout)
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


def _other_layout_states(data_dir: epath.Path) -> list[Any] | None:
  """The iterator states in `data_dir` if another number of processes saved them (in process
  order), else None."""
  counts = {int(m.group(1)) for f in data_dir.glob("process_*-of-*.json")
            if (m := re.fullmatch(r"process_\d+-of-(\d+)\.json", f.name))}
  if not counts or counts == {jax.process_count()}:
    return None
  (count,) = counts
  return [json.loads((data_dir / f"process_{p}-of-{count}.json").read_text())
          for p in range(count)]


def _uint32_words(x: jax.Array) -> jax.Array:
  """The array's bits as uint32 (a trailing axis of 2 for 64-bit types)."""
  if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
    x = jax.random.key_data(x)
  if x.dtype == jnp.bool_:
    x = x.astype(jnp.uint8)
  if x.dtype.itemsize >= 4:
    return jax.lax.bitcast_convert_type(x, jnp.uint32)
  return jax.lax.bitcast_convert_type(x, jnp.dtype(f"uint{8 * x.dtype.itemsize}")).astype(
      jnp.uint32)


def _fingerprint(x: jax.Array) -> jax.Array:
  """uint32 [2]: sums of the array's words w_i times two odd weights of their flat index i,
  modulo 2**32. Each weight is odd, so one flipped bit (w_i changes by +-2**k) always changes
  both sums; random damage goes unseen with probability about 2**-64. Integer sums are exact
  in any order, so the value does not depend on the mesh or the number of processes; no
  reshape, so a sharded array is never gathered."""
  words = _uint32_words(x)
  flat = jnp.zeros(words.shape, jnp.uint32)
  stride = 1
  for axis in reversed(range(words.ndim)):  # Flat (row-major) index, per axis.
    flat = flat + jax.lax.broadcasted_iota(jnp.uint32, words.shape, axis) * jnp.uint32(stride)
    stride *= words.shape[axis]
  odd = flat * jnp.uint32(2) + jnp.uint32(1)
  mixed = flat * jnp.uint32(0x9E3779B1) | jnp.uint32(1)
  return jnp.stack([jnp.sum(words * odd, dtype=jnp.uint32),
                    jnp.sum(words * mixed, dtype=jnp.uint32)])


_fingerprints = jax.jit(lambda tree: jax.tree.map(_fingerprint, tree))


def checksums(state: Any) -> dict[str, list[int]]:
  """{array path: [two uint32 checksums]} of every array of `state` (computed where the
  arrays are; waits for them)."""
  sums = jax.device_get(_fingerprints(state))
  return {jax.tree_util.keystr(path): [int(v) for v in np.asarray(value)]
          for path, value in jax.tree_util.tree_flatten_with_path(sums)[0]}


def _verify(step: int, saved: dict, restored: dict) -> None:
  bad = sorted(k for k in saved.keys() | restored.keys() if saved.get(k) != restored.get(k))
  if bad:
    raise CorruptCheckpoint(
        f"step {step}: {len(bad)} arrays read back differ from the checksums saved with them "
        f"({', '.join(bad[:5])}{', ...' if len(bad) > 5 else ''}): the files were changed "
        "after the save (silent corruption on disk or in transfer).")


def _first_line(e: Exception) -> str:
  return str(e).strip().split("\n")[0][:500]
