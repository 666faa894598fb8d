"""Reruns every default config in dependency order and publishes the results the docs show.

  python -m experiments.reproduce [--only=NAME ...] [--workdir_root=workdirs] [--dry_run]

RUNS lists the default runs: a "run" is `python -m gpt4v_jax.main --config=C
--workdir=ROOT/NAME`, a "sweep" `python -m experiments.sweep --config=C --workdir=ROOT/NAME`.
Each launch first writes ROOT/NAME/reproduce.json: the commit, the code revision (the git trees
of gpt4v_jax/ and setup.py: a docs commit does not move a number) and the run's stamp: a hash of
that revision, the settings it trains with (its config, a sweep's variants too) and its
dependencies' stamps, so a changed caption config reruns the VQA run that starts from it, and a
changed VQA config reruns nothing else. A run whose reproduce.json holds the stamp HEAD gives it
is reused when finished (results.json; a sweep: results/sweep.csv and every variant's
results.json) and resumed from its checkpoint when not; any other run dir is moved aside to
ROOT/stale/NAME-<commit> (never deleted) and rerun (a dir without reproduce.json too: nothing
says what made it). Uncommitted changes under those paths or configs/ are refused after the plan
is printed (--dry_run too): a result must name a commit. `--only NAME` takes that run (reused if
it can be: move its dir aside to force a rerun), and first each dependency that is not reusable.
The configs read their dependencies from workdirs/<NAME>, so a run with dependencies launches
only with that root.

Each finished run (reused ones too) is published to experiments/results/<NAME>/: results.json,
curve.json (train/loss and the eval scalars from its TensorBoard events, [[step, value], ...]
per tag) and run.json (name, config, commit, code, stamp, minutes, date); a sweep's
sweep.csv/.md/.png, each variant's results.json as <variant>.json, and run.json. Then the docs'
tables are re-rendered (`experiments.tables --write`). `minutes` is the wall time of a run
launched from scratch here (null when it was resumed, or reused without an earlier measurement);
the next plan's estimates come from it.
"""
import dataclasses
import datetime
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time

from absl import app, flags

from experiments import tables
from experiments.provenance import REPO, git

CODE = ("gpt4v_jax", "setup.py")  # What can move a number, besides the run's config.
WATCHED = CODE + ("configs",)  # Must be committed: a result names the commit it came from.
# Bookkeeping eval scalars, not part of a learning curve.
_NOT_CURVES = ("num_examples", "skipped_examples", "seconds", "num_questions")


@dataclasses.dataclass(frozen=True)
class Run:
  name: str  # Workdir ROOT/name and experiments/results/name.
  config: str  # As passed to --config.
  kind: str  # "run" (gpt4v_jax.main) or "sweep" (experiments.sweep).
  deps: tuple[str, ...]  # Runs whose workdirs the config reads (workdirs/<dep>).
  minutes: float  # Estimate until a published run.json measures it.


# In dependency order. VQA's first stage starts from the caption run, its second from the
# first; t2i reads the VQ-VAE (objective.image_tokenizer) and the caption run (init);
# multitask's first stage the t2i run (init), its second the first, both the VQ-VAE; the
# fusion ablation trains from scratch but its text-to-image rows need the VQ-VAE; the encoder
# ablation's variants start from the contrastive and caption runs.
RUNS = (
    Run("shapes_caption", "configs/shapes_caption.py", "run", (), 11),
    Run("shapes_vqa_left_of", "configs/shapes_vqa.py:left_of", "run", ("shapes_caption",), 7),
    Run("shapes_vqa", "configs/shapes_vqa.py", "run", ("shapes_vqa_left_of",), 17),
    Run("shapes_vqvae", "configs/shapes_vqvae.py", "run", (), 25),
    Run("shapes_t2i", "configs/shapes_t2i.py", "run", ("shapes_vqvae", "shapes_caption"), 28),
    Run("shapes_multitask_left_of", "configs/shapes_multitask.py:left_of", "run",
        ("shapes_t2i", "shapes_vqvae"), 10),
    Run("shapes_multitask", "configs/shapes_multitask.py", "run",
        ("shapes_multitask_left_of", "shapes_vqvae"), 26),
    Run("shapes_ablation", "configs/shapes_ablation.py", "sweep", ("shapes_vqvae",), 43),
    Run("shapes_summarize", "configs/shapes_summarize.py", "run", (), 5),
    Run("shapes_contrastive", "configs/shapes_contrastive.py", "run", (), 19),
    Run("shapes_encoder_ablation", "configs/shapes_encoder_ablation.py", "sweep",
        ("shapes_contrastive", "shapes_caption"), 21),
)


# --- Code revision ------------------------------------------------------------------------------


def commit(repo: str = REPO) -> str:
  return git("rev-parse", "HEAD", repo=repo).strip()


def revision(repo: str = REPO) -> str:
  """HEAD's git tree hashes of CODE, joined: equal exactly when no commit since touched them."""
  return "-".join(git("rev-parse", f"HEAD:{path}", repo=repo)[:12] for path in CODE)


def uncommitted(repo: str = REPO) -> list[str]:
  """`git status --porcelain` lines of WATCHED (changed, staged or untracked files)."""
  return git("status", "--porcelain", "--", *WATCHED, repo=repo).splitlines()


def config_digest(run: Run, repo: str = REPO) -> str:
  """A hash of the settings `run` trains with: its config file's get_config(arg) and, for a
  sweep, get_sweep(arg) (the variants' overrides)."""
  path, _, arg = run.config.partition(":")
  spec = importlib.util.spec_from_file_location("reproduce_config", os.path.join(repo, path))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  settings = {}
  if hasattr(module, "get_config"):
    settings["config"] = json.loads(module.get_config(arg or None).to_json_best_effort())
  if hasattr(module, "get_sweep"):
    settings["sweep"] = module.get_sweep(arg or None)
  return _hash(settings)


def _hash(value) -> str:
  return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def stamps(code: str, runs=RUNS, digest=config_digest) -> dict[str, str]:
  """{name: stamp}: a hash of the code revision, the run's settings and its dependencies'
  stamps (runs in dependency order)."""
  out = {}
  for run in runs:
    out[run.name] = _hash([code, digest(run), [out[d] for d in run.deps]])
  return out


# --- Plan ---------------------------------------------------------------------------------------


def _read(path: str) -> dict | None:
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def sweep_variants(run: Run) -> list[str]:
  from experiments.sweep import load_sweep  # It defines its flags on import: only when needed.
  return list(load_sweep(os.path.join(REPO, run.config))[0])


def finished(run: Run, workdir: str) -> bool:
  if run.kind == "run":
    return os.path.exists(os.path.join(workdir, "results.json"))
  return (os.path.exists(os.path.join(workdir, "results", "sweep.csv"))
          and all(os.path.exists(os.path.join(workdir, v, "results.json"))
                  for v in sweep_variants(run)))


def action(run: Run, root: str, stamp: str) -> str:
  """"reuse", "resume", "run" (no run dir) or "stale" (another revision or config, or not
  launched by this script: moved aside, then run)."""
  workdir = os.path.join(root, run.name)
  if not os.path.exists(workdir):
    return "run"
  recorded = _read(os.path.join(workdir, "reproduce.json")) or {}
  if recorded.get("stamp") != stamp or recorded.get("config") != run.config:
    return "stale"
  return "reuse" if finished(run, workdir) else "resume"


def plan(names: list[str], root: str, stamp: dict[str, str],
         runs=RUNS) -> list[tuple[Run, str]]:
  """[(run, action)] in dependency order: the named runs (all when none) and, for each that
  will launch, its dependencies that are not reusable (a reusable one needs nothing)."""
  by_name = {r.name: r for r in runs}
  unknown = [n for n in names if n not in by_name]
  if unknown:
    raise ValueError(f"Unknown run(s) {unknown}; experiments/reproduce.py RUNS has: "
                     f"{', '.join(by_name)}.")
  actions, todo = {}, list(names) or list(by_name)
  while todo:
    name = todo.pop()
    if name not in actions:
      actions[name] = action(by_name[name], root, stamp[name])
      if actions[name] != "reuse":
        todo += by_name[name].deps
  return [(r, actions[r.name]) for r in runs if r.name in actions]


def estimate(run: Run, results: str = tables.RESULTS) -> float:
  """Minutes: the last published measurement, else the table's guess."""
  measured = (_read(os.path.join(results, run.name, "run.json")) or {}).get("minutes")
  return run.minutes if measured is None else measured


# --- Launch -------------------------------------------------------------------------------------


def command(run: Run, workdir: str) -> list[str]:
  module = "gpt4v_jax.main" if run.kind == "run" else "experiments.sweep"
  return [sys.executable, "-m", module, f"--config={run.config}", f"--workdir={workdir}"]


def move_aside(workdir: str, root: str) -> str:
  """ROOT/stale/NAME-<short commit of its reproduce.json> (-2, -3, ... when taken)."""
  recorded = _read(os.path.join(workdir, "reproduce.json")) or {}
  base = os.path.join(root, "stale", f"{os.path.basename(workdir)}-"
                      f"{recorded.get('commit', 'unrecorded')[:7]}")
  target, k = base, 1
  while os.path.exists(target):
    k += 1
    target = f"{base}-{k}"
  os.makedirs(os.path.dirname(target), exist_ok=True)
  shutil.move(workdir, target)
  return target


def launch(run: Run, act: str, root: str, head: str, code: str,
           stamp: str) -> float | None:
  """Runs (or resumes) one entry; its minutes when it ran from scratch here."""
  workdir = os.path.join(root, run.name)
  if act == "stale":
    print(f"[reproduce] {run.name}: moved {workdir} to {move_aside(workdir, root)}", flush=True)
  os.makedirs(workdir, exist_ok=True)
  if act != "resume":  # A resumed run keeps the commit it started at (same code).
    with open(os.path.join(workdir, "reproduce.json"), "w") as f:
      json.dump(dict(commit=head, code=code, stamp=stamp, config=run.config), f, indent=1)
  start = time.time()
  status = subprocess.run(command(run, workdir), cwd=REPO).returncode
  if status != 0:
    sys.exit(f"[reproduce] {run.name} failed with status {status}; rerun the same command to "
             "resume it from its checkpoint.")
  return None if act == "resume" else (time.time() - start) / 60


# --- Publish ------------------------------------------------------------------------------------


def curve(tb_dir: str) -> dict[str, list[list[float]]]:
  """{tag: [[step, value], ...]}: train/loss and every eval/validation scalar of the run."""
  from gpt4v_jax.metric_writer import read_scalars  # Imports jax: only when publishing.
  keep = lambda tag: tag == "train/loss" or (
      tag.startswith(("eval/", "validation")) and tag.rsplit("/", 1)[-1] not in _NOT_CURVES)
  return {tag: [[step, value] for step, value in points]
          for tag, points in read_scalars(tb_dir).items() if keep(tag)}


def publish(run: Run, workdir: str, minutes: float | None,
            results: str = tables.RESULTS) -> str:
  """Copies a finished run's results to results/<name>/ (see the module docstring)."""
  out = os.path.join(results, run.name)
  os.makedirs(out, exist_ok=True)
  recorded = _read(os.path.join(workdir, "reproduce.json"))
  if run.kind == "run":
    final = os.path.join(workdir, "results.json")
    shutil.copyfile(final, os.path.join(out, "results.json"))
    if os.path.isdir(os.path.join(workdir, "tb")):
      with open(os.path.join(out, "curve.json"), "w") as f:
        json.dump(curve(os.path.join(workdir, "tb")), f)
  else:
    final = os.path.join(workdir, "results", "sweep.csv")
    for name in ("sweep.csv", "sweep.md", "sweep.png"):
      shutil.copyfile(os.path.join(workdir, "results", name), os.path.join(out, name))
    for variant in sweep_variants(run):
      shutil.copyfile(os.path.join(workdir, variant, "results.json"),
                      os.path.join(out, f"{variant}.json"))
  previous = _read(os.path.join(out, "run.json")) or {}
  if minutes is None and previous.get("commit") == recorded["commit"]:
    minutes = previous.get("minutes")  # Reused: keep what the launch measured.
  date = datetime.date.fromtimestamp(os.path.getmtime(final)).isoformat()
  with open(os.path.join(out, "run.json"), "w") as f:
    json.dump(dict(name=run.name, config=run.config, commit=recorded["commit"],
                   code=recorded["code"], stamp=recorded.get("stamp"),
                   minutes=None if minutes is None else round(minutes, 1), date=date),
              f, indent=1)
  return out


# --- The command --------------------------------------------------------------------------------


def check_root(steps: list[tuple[Run, str]], root: str) -> None:
  """The configs read dependencies from workdirs/<dep>: another root would train from the
  wrong (or no) checkpoint."""
  default = os.path.join(REPO, "workdirs")
  needy = [r.name for r, act in steps if act != "reuse" and r.deps]
  if needy and os.path.abspath(root) != default:
    raise SystemExit(f"--workdir_root={root}: {', '.join(needy)} read their dependencies from "
                     f"{default}/<name> (their configs' paths); use --workdir_root=workdirs, "
                     "or --only runs without dependencies.")


def reproduce(names: list[str], root: str, dry_run: bool) -> None:
  head, code = commit(), revision()
  stamp = stamps(code)
  steps = plan(names, root, stamp)
  estimates = {r.name: 0.0 if act == "reuse" else estimate(r) for r, act in steps}
  shown = dict(stale="run (old dir moved aside)")
  print(tables.markdown_table([dict(run=r.name, action=shown.get(act, act),
                                    minutes=estimates[r.name]) for r, act in steps]))
  print(f"[reproduce] commit {head[:7]}, code {code}: about {sum(estimates.values()):.0f} min "
        "to run", flush=True)
  dirty = uncommitted()
  if dirty:
    sys.exit("[reproduce] refused: uncommitted changes in what can move a number (results "
             "must name a commit); commit them first:\n" + "\n".join(dirty))
  if dry_run:
    return
  check_root(steps, root)
  start = time.time()
  elapsed = lambda: (time.time() - start) / 60
  for i, (run, act) in enumerate(steps):
    minutes = None
    if act != "reuse":
      left = sum(estimates[r.name] for r, _ in steps[i:])
      print(f"[reproduce] {run.name}: {act} ({elapsed():.1f} min elapsed, ~{left:.0f} min "
            "left)", flush=True)
      minutes = launch(run, act, root, head, code, stamp[run.name])
      print(f"[reproduce] {run.name}: finished ({elapsed():.1f} min elapsed, "
            f"~{left - estimates[run.name]:.0f} min left)", flush=True)
    print(f"[reproduce] {run.name}: published to "
          f"{os.path.relpath(publish(run, os.path.join(root, run.name), minutes), REPO)}",
          flush=True)
  # A fresh process: the docs and their tables may have changed during a long reproduce.
  subprocess.run([sys.executable, "-m", "experiments.tables", "--write"], cwd=REPO, check=True)


_FLAGS = {}  # Defined when run as a command: the tests import this module beside others.


def _define_flags() -> None:
  _FLAGS.update(
      only=flags.DEFINE_multi_string("only", [], "Run NAME (and its unusable dependencies)."),
      root=flags.DEFINE_string("workdir_root", "workdirs", "Run dirs go to ROOT/NAME."),
      dry_run=flags.DEFINE_bool("dry_run", False, "Print the plan and stop."))


def main(argv):
  del argv
  reproduce(_FLAGS["only"].value, _FLAGS["root"].value, _FLAGS["dry_run"].value)


if __name__ == "__main__":
  _define_flags()
  app.run(main)
