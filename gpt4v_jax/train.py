"""The one train loop, shared by every objective.

Read top to bottom: checks -> mesh -> data -> model -> sharded state -> checkpoint/resume ->
jitted train step -> loop (logging, checkpoints, evals) -> final evals.

The objective (`objectives/base.py` lists what the loop calls on it) supplies everything
task-specific: the model, its variables, the batch layout, the loss and the evaluation, so the
same loop trains the GPT-4V model on captions, questions or image codes, and the VQ-VAE image
tokenizer. Building the objective and the sharded state is `runs.py`'s, the step
`train_step.py`'s.

Fault tolerance (README, "Fault tolerance"): a killed run resumes bitwise identically from its
newest readable checkpoint, on any number of processes; SIGTERM/SIGINT to any process make
them all save one step and stop (`preemption`); a non-finite step is never checkpointed (the
run stops, or skips the update); bad examples are counted in the state's `counters`.
"""
import functools
import json
import os
import time

import flax.linen as nn
import jax
import ml_collections
import numpy as np

from gpt4v_jax import checkpoint, config_checks, perf, preemption, runs, sharding
from gpt4v_jax.data import datasets, pipeline
from gpt4v_jax.evals.evaluator import evaluate_split
from gpt4v_jax.metric_writer import MetricWriter, log
from gpt4v_jax.optimizer import make_optimizer
from gpt4v_jax.pretrained import compose
from gpt4v_jax.runs import COUNTERS
from gpt4v_jax.train_step import make_train_step


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       allow_config_change: bool = False) -> dict[str, dict]:
  """Trains (resuming from `workdir` if it holds checkpoints), evaluates, returns final metrics.

  Raises preemption.Preempted after a SIGTERM/SIGINT, once the current step is saved.
  """
  # --- Checks: everything that can be wrong is reported before any compilation.
  workdir = os.path.abspath(workdir)  # Orbax's TensorStore paths must be absolute.
  config_checks.check(config, workdir)
  config_checks.check_resume(config, workdir, allow_change=allow_config_change)
  mesh = sharding.make_mesh(config.mesh)
  sharding.check_batch_divides(config.data.global_batch_size, mesh, "config.data.global_batch_size")
  sharding.check_batch_divides(config.evals.batch_size, mesh, "config.evals.batch_size")
  k = config.train.microbatches
  if k < 1 or config.data.global_batch_size % k:
    raise ValueError(f"config.train.microbatches={k} must be >= 1 and divide "
                     f"config.data.global_batch_size={config.data.global_batch_size}.")
  sharding.check_batch_divides(config.data.global_batch_size // k, mesh,
                               "The micro-batch config.data.global_batch_size / "
                               "config.train.microbatches")
  os.makedirs(workdir, exist_ok=True)
  if jax.process_index() == 0:
    _write_atomically(os.path.join(workdir, "config.json"), config.to_json_best_effort(indent=1))
  log(f"Mesh {dict(mesh.shape)} over {jax.device_count()} {jax.devices()[0].platform} devices, "
      f"{jax.process_count()} process(es).")

  # Measured before the input pipeline's threads start, so they don't slow the measurement.
  peak, peak_source = perf.peak_flops_per_device()

  # --- Data.
  objective = runs.make_objective(config)
  sources = datasets.open_splits(config.data)
  config_checks.check_splits(config, sources)
  sub_batches = objective.rows_per_sub_batch(config.data.global_batch_size)
  if list(sub_batches) != [""]:  # A mixture: every part's rows must split too.
    for name, rows in sub_batches.items():
      what = (f"config.objective.mixture.{name}'s rows per batch (its weight's share of "
              "config.data.global_batch_size)")
      sharding.check_batch_divides(rows, mesh, what)
      if rows % k or (rows // k) % sharding.data_parallel_size(mesh):
        raise ValueError(f"{what}={rows} must split into config.train.microbatches={k} "
                         "micro-batches, each divisible by the mesh's data*fsdp devices.")
    log("Rows per batch: " + ", ".join(
        f"{name} {rows} x {objective.parts[name].max_text_len} text slots"
        for name, rows in sub_batches.items()) + ".")
  train_iter = iter(objective.train_dataset(
      sources[config.data.train_split], seed=config.seed,
      global_batch_size=config.data.global_batch_size, process_index=jax.process_index(),
      process_count=jax.process_count(), num_threads=config.data.num_threads,
      on_bad_example=config.data.on_bad_example))
  batch_sharding = sharding.batch_sharding(mesh)

  # --- Model, optimizer and the sharded state.
  model = objective.build_model(config.model)
  total_steps = config.train.steps
  tx, schedule = make_optimizer(config.optimizer, total_steps)
  # SIGTERM/SIGINT from here on only set `stop.received`; the loop saves and stops.
  with (jax.set_mesh(mesh), nn.logical_axis_rules(config.sharding_rules),
        preemption.StopRequest() as stop):
    init, abstract_state, state_shardings = runs.sharded_state_init(config, objective, model,
                                                                    tx, mesh)
    num_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(abstract_state.params))
    log(f"Model: {num_params / 1e6:.2f}M params.")

    # --- Checkpoints: resume from the newest readable one if the workdir has any.
    ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"),
                                   keep=config.train.keep_checkpoints)
    # Saved by a run on another number of processes: its data positions are translated.
    relayout = functools.partial(pipeline.relayout_state,
                                 global_batches=list(sub_batches.values()),
                                 process_count=jax.process_count())
    restored = ckpt.restore_latest(abstract_state, train_iter, relayout)
    if restored is None:
      state, start_step = init(), 0
      # Pretrained checkpoints first, then a workdir's trees over them (LLaVA's stage 2
      # starts from stage 1's run).
      params = compose.load_pretrained(
          config.model, state.params, skip=tuple(config.init.params) if config.init.workdir
          else ())
      state = state.replace(params=runs.init_params_from(
          config.init, params, config.model.get("vocab_size")))
    else:
      state, start_step = restored
      log(f"Resumed from step {start_step} in {workdir}.")

    # --- The jitted train step: explicit shardings, donated state.
    train_step = jax.jit(
        make_train_step(objective, model, tx, schedule,
                        deterministic=config.model.get("dropout", 0.0) == 0.0,
                        skip_nonfinite=config.train.skip_nonfinite_updates,
                        frozen=tuple(config.optimizer.frozen),
                        microbatches=config.train.microbatches),
        in_shardings=(state_shardings, batch_sharding),
        out_shardings=(state_shardings, sharding.replicated(mesh)), donate_argnums=0)
    # Model FLOPs (the objective's count; perf.py says what it counts) per device and step.
    step_flops = (objective.train_flops_per_example(model, tuple(config.optimizer.frozen))
                  * config.data.global_batch_size / jax.device_count())
    log(f"Train step: {step_flops / 1e9:.2f} GFLOP per device; peak {peak / 1e12:.3f} "
        f"TFLOP/s per device ({peak_source}).")

    # --- The loop. Step N+1 is dispatched before step N's metrics are pulled to the host;
    # step N's finiteness is checked then too, and before anything of step N+1 is saved.
    writer = MetricWriter(os.path.join(workdir, "tb"))
    evaluate = lambda split, n, step: evaluate_split(
        objective=objective, model=model, params=state.params,
        model_state=state.model_state, source=sources[split],
        split=split, num_examples=n, batch_size=config.evals.batch_size, mesh=mesh,
        out_dir=workdir, step=step, on_bad_example=config.data.on_bad_example)

    def check_finite(step, metrics):
      if not config.train.skip_nonfinite_updates:
        _check_finite(step, metrics, ckpt)

    # Multi-process: every process stops at the step they agree on (preemption.StopVote).
    votes = preemption.StopVote(stop, mesh)
    pending, window_start, window_steps = None, time.perf_counter(), 0
    step_times = []  # Seconds per step of each logged window, for results.json.
    previous = None  # (step, metrics) of the step before, checked one step late.
    for step in range(start_step, total_steps):
      done = step + 1
      batch = sharding.to_global(next(train_iter), batch_sharding)
      state, metrics = train_step(state, batch)
      window_steps += 1
      if previous is not None:
        check_finite(*previous)
      previous = (done, metrics)
      if pending is not None:
        _report(writer, *pending)
        pending = None
      if done % config.train.log_every == 0 or done == total_steps:
        jax.block_until_ready(metrics)
        elapsed = time.perf_counter() - window_start
        step_time = elapsed / window_steps
        step_times.append(step_time)
        rates = dict(step_time=step_time,
                     examples_per_sec=config.data.global_batch_size / step_time,
                     tflops_per_device=step_flops / step_time / 1e12,
                     mfu=step_flops / step_time / peak,
                     eta_min=(total_steps - done) * step_time / 60)
        pending = (done, total_steps, metrics, rates, objective.log_keys)
        window_start, window_steps = time.perf_counter(), 0
      signum = votes.poll()
      if done % config.train.checkpoint_every == 0 or done == total_steps or signum:
        check_finite(done, metrics)
        ckpt.save(done, state, train_iter)
      if signum:
        _stop(ckpt, done, signum)
      if config.evals.every and done % config.evals.every == 0 and done < total_steps:
        check_finite(done, metrics)
        for split in config.evals.during_splits:
          m, _ = evaluate(split, config.evals.during_num_examples, done)
          writer.scalars(done, m, prefix=f"eval/{split}/")
          log(f"[eval {split} @ {done}] " + _fmt(m))
        window_start, window_steps = time.perf_counter(), 0  # Evals are not train time.
    if pending is not None:
      _report(writer, *pending)
    ckpt.wait()

    # --- Final evals (reused if this exact step was already evaluated).
    results = {}
    for split in config.evals.final_splits:
      if signum := votes.now():  # The final checkpoint is committed; evals redo on resume.
        _stop(ckpt, total_steps, signum)
      path = os.path.join(workdir, f"eval_{split}_step{total_steps}.json")
      if os.path.exists(path):
        with open(path) as f:
          saved = json.load(f)
        m, records = saved["metrics"], saved["predictions"]
        log(f"[final {split}] reused {path}")
      else:
        m, records = evaluate(split, config.evals.final_num_examples, total_steps)
        writer.scalars(total_steps, m, prefix=f"final/{split}/")
      results[split] = m
      log(f"[final {split}] " + _fmt(m))
      for r in records[:config.evals.num_samples_to_print]:
        log(f"  {json.dumps(r)}")  # Fields differ by objective: references, answer, ...
  ckpt.close()
  writer.close()
  # What the run cost: params, and the median step time of the windows this process trained
  # (after a resume that only reused the final evals, the previous summary's).
  summary = dict(params=num_params, step_ms=float(np.median(step_times)) * 1e3
                 if step_times else None)
  path = os.path.join(workdir, "results.json")
  if summary["step_ms"] is None and os.path.exists(path):
    with open(path) as f:
      summary = json.load(f).get("train", summary)
  results["train"] = summary
  if jax.process_index() == 0:
    _write_atomically(path, json.dumps(results, indent=1))
  return results


def _write_atomically(path: str, text: str) -> None:
  """A reader (or a run restarted after a kill) never sees a half-written file."""
  with open(path + ".tmp", "w") as f:
    f.write(text)
  os.replace(path + ".tmp", path)


def _check_finite(step: int, metrics: dict, ckpt: checkpoint.Checkpointer) -> None:
  """Stops the run at a non-finite step, once the saves before it are committed."""
  if bool(metrics["finite"]):
    return
  ckpt.wait()
  m = jax.device_get(metrics)
  newest = ckpt.latest_step()
  kept = ("no checkpoint was saved before it" if newest is None else
          f"the newest checkpoint, step {newest}, was saved before it and holds finite values")
  raise FloatingPointError(
      f"Non-finite loss, gradients or update at step {step} (loss={float(m['loss'])}, "
      f"grad_norm={float(m['grad_norm'])}); {kept}. Lower config.optimizer.learning_rate, "
      "check the data, or set config.train.skip_nonfinite_updates=True to skip such updates.")


def _stop(ckpt: checkpoint.Checkpointer, step: int, signum: int):
  """After a SIGTERM/SIGINT: waits for the saves to commit, then raises Preempted."""
  ckpt.wait()
  ckpt.close()
  raise preemption.Preempted(step, signum)


def _fmt(metrics: dict) -> str:
  return " ".join(f"{k}={v:.4g}" for k, v in metrics.items())


def _report(writer: MetricWriter, step: int, total: int, metrics: dict, rates: dict,
            keys: tuple[str, ...]) -> None:
  """Writes every train metric to TensorBoard; prints loss, the objective's `keys`, rates."""
  m = {k: float(v) for k, v in jax.device_get(metrics).items() if k != "finite"}
  writer.scalars(step, {**m, **rates}, prefix="train/")
  faults = "".join(f" {k}={int(m[k])}" for k in COUNTERS if m[k])  # Shown once non-zero.
  extra = "".join(f" {k}={m[k]:.4g}" for k in keys)
  log(f"step {step}/{total} loss={m['loss']:.4f}{extra} "
      f"lr={m['learning_rate']:.2e} gnorm={m['grad_norm']:.3f} "
      f"{rates['examples_per_sec']:.1f} ex/s {rates['step_time'] * 1e3:.0f} ms/step "
      f"{rates['tflops_per_device']:.3g} TFLOP/s/device MFU={rates['mfu']:.1%} "
      f"ETA {rates['eta_min']:.1f} min{faults}")
