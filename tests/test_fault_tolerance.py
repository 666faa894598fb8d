"""Fault tolerance (README, "Fault tolerance"): each test injects one fault and checks what the
run does about it. Unit tests first; the end-to-end runs of main come last."""
import collections
import errno
import io
import json
import os
import re
import signal

import flax.linen as nn
import grain
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import PIL.Image
import pytest
import tensorstore as ts
from jax.sharding import NamedSharding, PartitionSpec as P

from configs import shapes_caption
from gpt4v_jax import checkpoint, config_checks, preemption, runs, sharding, train_step
from gpt4v_jax.data import pipeline
from gpt4v_jax.optimizer import make_optimizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# --- Corrupt, partial or unwritable checkpoints (Checkpointer on a small sharded state).


def _state(value: float) -> dict:
  mesh = sharding.make_mesh(dict(data=-1, fsdp=1, tensor=1))
  return {"w": jax.device_put(np.full((8, 4), value, np.float32), NamedSharding(mesh, P("data")))}


def _abstract(state: dict) -> dict:
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                      state)


def _data_iter():
  return iter(grain.MapDataset.range(100).to_iter_dataset())


def _save_steps(directory: str, steps) -> checkpoint.Checkpointer:
  """Checkpoints `steps`; at step s the state is s and the iterator has yielded s elements."""
  ckpt, it = checkpoint.Checkpointer(directory, keep=5), _data_iter()
  for s in steps:
    while next(it) < s - 1:
      pass
    ckpt.save(s, _state(s), it)
  ckpt.wait()
  return ckpt


def _truncate_state_files(step_dir: str) -> None:
  for d, _, files in os.walk(os.path.join(step_dir, "state")):
    for f in files:
      path = os.path.join(d, f)
      os.truncate(path, os.path.getsize(path) // 2)


@pytest.mark.parametrize("damage", ["truncated_arrays", "missing_iterator_state"])
def test_unreadable_newest_checkpoint_falls_back_loudly(tmp_path, capsys, damage):
  directory = str(tmp_path / "checkpoints")
  _save_steps(directory, [1, 2, 3]).close()
  if damage == "truncated_arrays":
    _truncate_state_files(os.path.join(directory, "3"))
  else:
    os.remove(os.path.join(directory, "3", "data", "process_0-of-1.json"))

  ckpt, it = checkpoint.Checkpointer(directory, keep=5), _data_iter()
  state, step = ckpt.restore_latest(_abstract(_state(0)), it)
  assert step == 2 and float(state["w"][0, 0]) == 2.0 and next(it) == 2
  out = capsys.readouterr().out
  assert re.search(r"WARNING: checkpoint step 3 in .* cannot be restored: \w+", out), out
  assert "resuming from step 2" in out
  # Moved aside, not deleted; the run can then save step 3 again.
  assert (tmp_path / "checkpoints_unreadable" / "3" / "state").is_dir()
  ckpt.save(3, _state(3), it)
  ckpt.wait()
  assert ckpt.latest_step() == 3
  ckpt.close()


def test_no_readable_checkpoint_is_an_error_not_a_fresh_start(tmp_path):
  directory = str(tmp_path / "checkpoints")
  _save_steps(directory, [1, 2]).close()
  for step in ("1", "2"):
    _truncate_state_files(os.path.join(directory, step))
  ckpt = checkpoint.Checkpointer(directory, keep=5)
  with pytest.raises(checkpoint.CheckpointError,
                     match=r"None of the checkpoints in .* \(steps \[2, 1\]\) can be restored"):
    ckpt.restore_latest(_abstract(_state(0)), _data_iter())
  assert sorted(os.listdir(directory)) == ["1", "2"]  # Nothing moved or deleted.
  ckpt.close()


def test_checksums_see_every_flipped_bit_and_not_the_mesh():
  rng = np.random.RandomState(0)
  arrays = {"f32": rng.randn(8, 6).astype(np.float32),
            "bf16": rng.randn(4, 4).astype(jnp.bfloat16), "int8": np.arange(3, dtype=np.int8),
            "bool": np.array([True, False, True, True]), "step": np.int32(7),
            "key": np.asarray(jax.random.key_data(jax.random.PRNGKey(3)))}
  one_device = checkpoint.checksums(jax.tree.map(jnp.asarray, arrays))
  mesh = jax.make_mesh((4, 2), ("a", "b"))
  spread = {k: jax.device_put(v, NamedSharding(mesh, P("a", "b") if v.ndim == 2 else
                                               P("a") if v.ndim == 1 and len(v) % 4 == 0 else
                                               P())) for k, v in arrays.items()}
  assert checkpoint.checksums(spread) == one_device  # Integer sums: any layout, same value.
  for name in ("f32", "bf16", "int8", "bool", "key"):
    flat = arrays[name].reshape(-1)
    bits = 1 if name == "bool" else 8 * flat.dtype.itemsize
    for index in {0, len(flat) // 2, len(flat) - 1}:
      for bit in range(bits):
        damaged = flat.copy()
        if name == "bool":
          damaged[index] = not damaged[index]
        else:
          view = damaged.view(f"uint{bits}")
          view[index] ^= np.array(1 << bit, view.dtype)
        sums = checkpoint.checksums({name: jnp.asarray(damaged.reshape(arrays[name].shape))})
        (key,) = sums
        assert all(a != b for a, b in zip(sums[key], one_device[key])), (name, index, bit)


def test_flipped_bit_in_a_readable_file_is_caught_and_the_previous_step_restored(tmp_path,
                                                                                 capsys):
  directory = str(tmp_path / "checkpoints")
  mesh = sharding.make_mesh(dict(data=-1, fsdp=1, tensor=1))
  w = np.random.RandomState(0).randn(8, 4).astype(np.float32)
  ckpt, it = checkpoint.Checkpointer(directory, keep=5), _data_iter()
  for s in (1, 2):
    ckpt.save(s, {"w": jax.device_put(w * s, NamedSharding(mesh, P("data")))}, it)
  ckpt.close()
  # Step 2's stored w with one bit flipped, written through TensorStore: every file stays
  # valid (compressed chunks, OCDBT's CRC-checked nodes), only the array's bytes changed.
  stored = ts.open({"driver": "zarr", "kvstore": {
      "driver": "ocdbt", "base": f"file://{directory}/2/state/", "path": "w/"}}).result()
  row = stored[3:4].read().result()
  row.view(np.uint32)[0, 1] ^= 1 << 4
  stored[3:4].write(row).result()

  ckpt = checkpoint.Checkpointer(directory, keep=5)
  state, step = ckpt.restore_latest({"w": jax.ShapeDtypeStruct(
      w.shape, w.dtype, sharding=NamedSharding(mesh, P("data")))}, _data_iter())
  assert step == 1 and np.array_equal(np.asarray(state["w"]), w)
  out = capsys.readouterr().out
  assert re.search(r"WARNING: checkpoint step 2 .* CorruptCheckpoint: step 2: 1 arrays read "
                   r"back differ from the checksums saved with them \(\['w'\]\).*silent "
                   r"corruption", out), out
  assert (tmp_path / "checkpoints_unreadable" / "2").is_dir()
  ckpt.close()


def _permissions_enforced(tmp_path) -> bool:
  probe = tmp_path / "probe"
  probe.mkdir(mode=0o555)
  try:
    (probe / "file").touch()
    return False
  except PermissionError:
    return True


@pytest.mark.parametrize("fault", ["disk_full", "read_only_directory"])
def test_failed_save_is_a_clear_error_and_keeps_the_previous_step(tmp_path, monkeypatch, fault):
  directory = str(tmp_path / "checkpoints")
  ckpt = _save_steps(directory, [1])
  if fault == "disk_full":
    def no_space(*args, **kwargs):
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(grain.checkpoint.CheckpointHandler, "save", no_space)
  elif not _permissions_enforced(tmp_path):
    pytest.skip("running as root: read-only directories stay writable; disk_full covers this")
  else:
    os.chmod(directory, 0o555)
  with pytest.raises(checkpoint.CheckpointError,
                     match=r"Writing checkpoint step 2 to .* failed: .*(No space left|denied).*"
                           r"committed steps \[1\]"):
    ckpt.save(2, _state(2), _data_iter())
    ckpt.wait()
  os.chmod(directory, 0o755)  # The user frees space / fixes permissions and reruns.
  monkeypatch.undo()
  state, step = checkpoint.Checkpointer(directory, keep=5).restore_latest(
      _abstract(_state(0)), _data_iter())
  assert step == 1 and float(state["w"][0, 0]) == 1.0


# --- Bad input data (the training pipeline over a small fake source).


def _png(image: np.ndarray) -> bytes:
  buffer = io.BytesIO()
  PIL.Image.fromarray(image).save(buffer, format="PNG")
  return buffer.getvalue()


def _example(i: int, *, image: bytes | None = None, caption: bytes = b"a small red circle."):
  """Example `i`: its image is filled with the value i, so a batch row says which it came from."""
  if image is None:
    image = _png(np.full((64, 64, 3), i, np.uint8))
  return dict(id=i, image=image, image_path="", captions=[caption])


def _fake_source() -> list[dict]:
  source = [_example(i) for i in range(12)]
  source += [_example(100, image=_png(np.full((64, 64, 3), 100, np.uint8))[:40]),  # Truncated.
             _example(101, image=b"GIF89a, but not an image"),  # Does not decode.
             _example(102, caption=b""),
             _example(103, caption=b"a large blue square " * 50)]  # 1000 bytes: cut to fit.
  return source


def _fake_iter(on_bad_example="skip"):
  obj = runs.make_objective(shapes_caption.get_config("tiny"))
  return iter(pipeline.train_dataset(
      _fake_source(), obj.train_example, seed=0, local_batch_size=4,
      process_index=0, process_count=1, num_threads=2, on_bad_example=on_bad_example))


def _row_ids(batch: dict) -> list[int]:
  return [int(round((x + 1.0) * 127.5)) for x in batch["image"][:, 0, 0, 0]]


def test_bad_examples_are_skipped_counted_and_the_batch_refilled():
  # What an exact skip must give: the shuffled stream without the three bad examples, each
  # kept row counting the bad ones just before it.
  order = grain.MapDataset.source(_fake_source())[0::1].seed(0).shuffle().repeat()
  want_ids, want_skipped, bad_run = [], [], 0
  for i in range(48):
    if order[i]["id"] in (100, 101, 102):
      bad_run += 1
    else:
      want_ids.append(order[i]["id"])
      want_skipped.append(bad_run)
      bad_run = 0
  it = _fake_iter()
  batches = [next(it) for _ in range(len(want_ids) // 4)]
  n = 4 * len(batches)
  assert all(b["image"].shape == (4, 64, 64, 3) for b in batches)  # Never a smaller batch.
  assert sum((_row_ids(b) for b in batches), []) == want_ids[:n]
  assert list(np.concatenate([b["skipped"] for b in batches])) == want_skipped[:n]
  truncated = np.concatenate([b["truncated"] for b in batches])
  ids = np.array(want_ids[:n])
  assert truncated.sum() >= 1 and (truncated == (ids == 103)).all()


def test_bad_example_iterator_resumes_exactly():
  it = _fake_iter()
  for _ in range(3):
    next(it)
  state = it.get_state()
  want = [next(it) for _ in range(4)]
  resumed = _fake_iter()
  resumed.set_state(state)
  for w in want:
    jax.tree.map(np.testing.assert_array_equal, next(resumed), w)


# --- The data position on another number of processes (pipeline.relayout_state).


def _ids(source, *, rows, count, bad=()):
  """Per process of `count`: its iterator over `source` (ids; ids in `bad` are bad examples),
  global batches of `rows`."""
  def fn(example, rng):
    del rng
    if example in bad:
      raise pipeline.BadExample("bad")
    return dict(id=np.int32(example))
  return [iter(pipeline.train_dataset(source, fn, seed=0, local_batch_size=rows // count,
                                      process_index=p, process_count=count, num_threads=2))
          for p in range(count)]


def _global_batches(iterators, n):
  """The next n global batches: the processes' local batches side by side."""
  return [np.concatenate([next(it)["id"] for it in iterators]).tolist() for _ in range(n)]


@pytest.mark.parametrize("old, new", [(2, 1), (1, 2), (2, 4)])
def test_data_position_continues_exactly_on_another_number_of_processes(old, new):
  source, rows = list(range(50)), 8
  want = _global_batches(_ids(source, rows=rows, count=1), 9)  # An uninterrupted run.
  before = _ids(source, rows=rows, count=old)
  got = _global_batches(before, 4)
  state, lost = pipeline.relayout_state([it.get_state() for it in before], [rows], new)
  after = _ids(source, rows=rows, count=new)
  for it in after:
    it.set_state(state)
  got += _global_batches(after, 5)
  assert got == want and lost == 0  # Past an epoch's end too (50 examples, 72 rows).


def test_mixture_position_continues_per_stream():
  source, rows = list(range(40)), {"a": 4, "b": 12}

  def mixture(count):  # Zipped streams, each seeded apart, as objectives/mixture.py builds.
    return [iter(pipeline.zip_datasets({
        name: pipeline.train_dataset(
            source, lambda e, rng: dict(id=np.int32(e)), seed=k, local_batch_size=r // count,
            process_index=p, process_count=count, num_threads=0)
        for k, (name, r) in enumerate(rows.items())})) for p in range(count)]

  def take(iterators, n):
    return [{name: np.concatenate([b[name]["id"] for b in batch]).tolist() for name in rows}
            for batch in (tuple(next(it) for it in iterators) for _ in range(n))]

  want = take(mixture(1), 6)
  before = mixture(2)
  got = take(before, 2)
  state, lost = pipeline.relayout_state([it.get_state() for it in before], list(rows.values()),
                                        1)
  (after,) = mixture(1)
  after.set_state(state)
  assert got + take([after], 4) == want and lost == 0


def test_position_after_dropped_examples_repeats_nothing_and_counts_what_it_leaves_out():
  source, rows = list(range(64)), 8
  order = grain.MapDataset.source(source).seed(0).shuffle().repeat()  # The global order.
  # Bad: process 0's second row of batch 0 and process 1's second row of batch 1. Each process
  # refills from its own rows, so both end their third local batch one row into batch 3.
  bad = {order[1], order[13]}
  before = _ids(source, rows=rows, count=2, bad=bad)
  seen = sum(_global_batches(before, 3), [])
  state, lost = pipeline.relayout_state([it.get_state() for it in before], [rows], 1)
  assert state == {"next_index": 32} and lost == 6  # Batch 3's 8 rows less the 2 read.
  (after,) = _ids(source, rows=rows, count=1, bad=bad)
  after.set_state(state)
  new = sum(_global_batches([after], 3), [])
  assert new == [i for i in (order[j] for j in range(32, 64)) if i not in bad][:24]
  assert len(set(seen + new)) == len(seen + new)  # Nothing repeated.
  unseen = collections.Counter(order[j] for j in range(32)) - collections.Counter(seen)
  assert sum(unseen.values()) == lost + len(bad)  # Left out: exactly the count reported.


def test_bad_example_is_a_clear_error_when_configured():
  it = _fake_iter(on_bad_example="error")
  with pytest.raises(pipeline.BadExample, match=r"id=10[012]\).*on_bad_example='skip'"):
    for _ in range(20):
      next(it)


def test_only_bad_examples_is_an_error_not_a_hang():
  obj = runs.make_objective(shapes_caption.get_config("tiny"))
  it = iter(pipeline.train_dataset(
      [_example(0, caption=b"")], obj.train_example, seed=0, local_batch_size=4,
      process_index=0, process_count=1, num_threads=0))
  with pytest.raises(pipeline.BadExample, match="bad training examples in a row"):
    next(it)


def test_bad_eval_examples_are_left_out_of_fixed_size_batches():
  obj = runs.make_objective(shapes_caption.get_config("tiny"))
  batches = list(pipeline.eval_batches(_fake_source(), obj.eval_items, num_examples=16,
                                       batch_size=5))
  # A caption item's info is its example; each row names the example's index in the source.
  items = [item for _, batch_items in batches for item in batch_items]
  assert [ex["id"] for _, ex in items] == [*range(12), 102, 103]
  assert [i for i, _ in items] == [*range(12), 14, 15]
  assert all(b["image"].shape[0] == 5 for b, _ in batches)
  with pytest.raises(pipeline.BadExample, match=r"id=100\)"):
    list(pipeline.eval_batches(_fake_source(), obj.eval_items, num_examples=16,
                               batch_size=5, on_bad_example="error"))


# --- Non-finite steps (the jitted train step on a toy model: fast to compile).


class _Toy(nn.Module):
  """Logits from the text and the image mean: a NaN image gives a NaN loss."""
  vocab: int = 16

  @nn.compact
  def __call__(self, image, text, ar_mask, input_mask, deterministic=True):
    del ar_mask, input_mask, deterministic
    x = nn.Embed(self.vocab, 8)(text) + image.mean((1, 2, 3))[:, None, None]
    return nn.Dense(self.vocab)(x)


def _toy_batch(image_value: float) -> dict:
  b, t = 4, 6
  rng = np.random.default_rng(0)
  return dict(image=np.full((b, 2, 2, 3), image_value, np.float32),
              text=rng.integers(0, 16, (b, t), dtype=np.int32),
              ar_mask=np.ones((b, t), np.int32), input_mask=np.ones((b, t), bool),
              targets=rng.integers(0, 16, (b, t), dtype=np.int32),
              loss_mask=np.ones((b, t), np.float32),
              truncated=np.array([1, 0, 0, 0], np.int32), skipped=np.array([0, 2, 0, 1], np.int32))


@pytest.mark.parametrize("learning_rate,bad_image", [(1e-2, np.nan), (np.nan, 0.0)])
def test_nonfinite_update_is_skipped_and_counted(learning_rate, bad_image):
  config = shapes_caption.get_config("tiny")
  config.optimizer.learning_rate = 1e-2
  model, objective = _Toy(), runs.make_objective(config)
  tx, schedule = make_optimizer(config.optimizer, 10)
  batch = _toy_batch(0.0)
  params = model.init(jax.random.PRNGKey(0), *(batch[k] for k in ("image", "text", "ar_mask",
                                                                   "input_mask")))["params"]
  state = runs.TrainState(step=jnp.int32(0), params=params, opt_state=tx.init(params),
                           model_state={}, rng=jax.random.PRNGKey(1),
                           counters={k: jnp.int32(0) for k in runs.COUNTERS})
  good_step = jax.jit(train_step.make_train_step(objective, model, tx, schedule, deterministic=True,
                                            skip_nonfinite=True))
  state, metrics = good_step(state, batch)
  assert bool(metrics["finite"])
  assert int(metrics["truncated_texts"]) == 1 and int(metrics["skipped_examples"]) == 3

  # A NaN image (NaN loss and gradients) or a NaN learning rate (finite gradients, NaN update).
  config.optimizer.learning_rate = learning_rate
  tx_bad, schedule_bad = make_optimizer(config.optimizer, 10)
  bad_step = jax.jit(train_step.make_train_step(objective, model, tx_bad, schedule_bad,
                                           deterministic=True,
                                           skip_nonfinite=True))
  new, metrics = bad_step(state, _toy_batch(bad_image))
  assert not bool(metrics["finite"])
  jax.tree.map(np.testing.assert_array_equal, (new.params, new.opt_state),
               (state.params, state.opt_state))
  assert int(new.step) == 2 and int(new.counters["nonfinite_steps"]) == 1
  assert int(new.counters["truncated_texts"]) == 2  # The data still moved on.


# --- Signals, configs, pickle.


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_first_signal_is_recorded_and_a_second_acts_at_once(signum):
  before = signal.getsignal(signum)
  with preemption.StopRequest() as stop:
    assert stop.received is None
    os.kill(os.getpid(), signum)
    assert stop.received == signum
    assert signal.getsignal(signum) is before  # The default is back for a second signal.
  assert signal.getsignal(signum) is before


def _workdir_with_run(tmp_path, config) -> str:
  workdir = tmp_path / "run"
  (workdir / "checkpoints" / "3").mkdir(parents=True)
  (workdir / "config.json").write_text(config.to_json_best_effort(indent=1))
  return str(workdir)


def test_resuming_with_a_different_config_is_refused_naming_the_settings(tmp_path):
  workdir = _workdir_with_run(tmp_path, shapes_caption.get_config("tiny"))
  changed = shapes_caption.get_config("tiny")
  changed.model.width = 32
  changed.optimizer.learning_rate = 1.0
  with pytest.raises(ValueError, match=r"config.model.width: 64 -> 32; "
                                       r"config.optimizer.learning_rate: 0.002 -> 1.0\).*"
                                       r"new --workdir, or pass --allow_config_change"):
    config_checks.check_resume(changed, workdir, allow_change=False)
  config_checks.check_resume(changed, workdir, allow_change=True)
  # What may change when resuming: length, cadence, evals, data location, layout, policies.
  resumable = shapes_caption.get_config("tiny")
  resumable.train.update(steps=12, checkpoint_every=4, skip_nonfinite_updates=True)
  resumable.mesh.update(data=2, fsdp=4)
  resumable.evals.every = 0
  resumable.data.update(data_dir="/elsewhere", num_threads=8, on_bad_example="error")
  config_checks.check_resume(resumable, workdir, allow_change=False)


def test_no_source_file_imports_pickle():
  pattern = re.compile(r"^\s*(import|from)\s+(pickle|cPickle|dill|cloudpickle|joblib)\b|"
                       r"allow_pickle\s*=\s*True", re.M)
  for d, _, files in os.walk(os.path.join(ROOT, "gpt4v_jax")):
    for f in files:
      if f.endswith(".py"):
        with open(os.path.join(d, f)) as fh:
          assert not pattern.search(fh.read()), f


# --- End to end: runs of main with a fault injected (tests/fault_injection.py).


@pytest.fixture(scope="module")
def reference(tiny_run):
  """The workdir of an uninterrupted run of the tiny config (shared: read only)."""
  r, workdir = tiny_run
  assert r.returncode == 0, r.stderr[-3000:]
  return workdir


def _restore_state(step_dir) -> dict:
  with ocp.StandardCheckpointer() as c:
    return jax.device_get(c.restore(os.path.join(step_dir, "state")))


def _without_timing(results: dict) -> dict:
  return {split: {k: v for k, v in m.items() if k not in ("seconds", "step_ms")}
          for split, m in results.items()}


def test_preempted_then_killed_run_resumes_bitwise_identically(tmp_path, run_main, reference):
  workdir = tmp_path / "run"
  ckpts = workdir / "checkpoints"
  # SIGTERM while step 4 is reported (during step 5): step 5 is saved, committed, and the run
  # says how to resume.
  r = run_main(f"--workdir={workdir}", fault=("SIGTERM", 4))
  assert r.returncode == 128 + signal.SIGTERM, r.stderr[-3000:]
  assert "SIGTERM received: stopped after step 5" in r.stdout
  assert "Resume with the same command:" in r.stdout and f"--workdir={workdir}" in r.stdout
  assert sorted(os.listdir(ckpts)) == ["3", "5"]

  # The same command, killed while the async save of step 6 is being written.
  r = run_main(f"--workdir={workdir}", fault=("kill_during_save", 6))
  assert r.returncode == -signal.SIGKILL and "Resumed from step 5" in r.stdout
  assert sorted(os.listdir(ckpts)) == ["3", "5", "6.orbax-checkpoint-tmp"]

  # Again: the partial save is deleted, the run resumes from step 5 and finishes.
  r = run_main(f"--workdir={workdir}")
  assert r.returncode == 0, r.stderr[-3000:]
  assert "Deleting 6.orbax-checkpoint-tmp" in r.stdout and "Resumed from step 5" in r.stdout
  want, got = _restore_state(reference / "checkpoints" / "6"), _restore_state(ckpts / "6")
  assert jax.tree.structure(got) == jax.tree.structure(want)
  jax.tree.map(np.testing.assert_array_equal, got, want)  # Params, Adam moments, step, RNG.
  for name in ("results.json", "eval_test_step6.json"):
    want, got = (json.loads((d / name).read_text()) for d in (reference, workdir))
    if name == "results.json":
      want, got = _without_timing(want), _without_timing(got)
    else:
      want, got = want["predictions"], got["predictions"]
    assert got == want, name


def test_nonfinite_step_stops_the_run_naming_it(tmp_path, run_main):
  workdir = tmp_path / "run"
  r = run_main(f"--workdir={workdir}", fault=("nan_batch", 5))
  assert r.returncode != 0
  assert ("Non-finite loss, gradients or update at step 5" in r.stderr
          and "the newest checkpoint, step 3," in r.stderr), r.stderr[-3000:]
  assert sorted(os.listdir(workdir / "checkpoints")) == ["3"]
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(
      _restore_state(workdir / "checkpoints" / "3")) if np.issubdtype(x.dtype, np.floating))


def test_workdir_of_another_config_is_refused_before_compiling(tmp_path, run_main):
  other = shapes_caption.get_config("tiny")
  other.model.depth = 3
  workdir = _workdir_with_run(tmp_path, other)
  r = run_main(f"--workdir={workdir}")
  assert r.returncode != 0 and "config.model.depth: 3 -> 2" in r.stderr
  assert "Train step:" not in r.stdout


def test_checkpoints_and_data_hold_no_pickles(reference, tiny_data_dir):
  """Pickle streams (protocol 2+) start with 0x80 and the protocol number."""
  for top in (reference, tiny_data_dir):
    for d, _, files in os.walk(top):
      for f in files:
        with open(os.path.join(d, f), "rb") as fh:
          head = fh.read(2)
        assert not re.fullmatch(rb"\x80[\x02-\x05]", head), os.path.join(d, f)
