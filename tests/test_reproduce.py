"""experiments/reproduce.py without training: the code revision, the plan (reuse, resume, move
aside and rerun, dependencies, --only), the refusal of uncommitted code, and publishing."""
import datetime
import importlib.util
import json
import os
import subprocess
import sys

import pytest

from experiments import provenance, reproduce
from experiments.reproduce import Run

CODE = "tree-a"
A = Run("a", "configs/a.py", "run", (), 3)
B = Run("b", "configs/b.py", "run", ("a",), 4)
C = Run("c", "configs/c.py", "run", ("b",), 5)
D = Run("d", "configs/d.py", "run", (), 6)
RUNS = (A, B, C, D)
STAMPS = {r.name: CODE for r in RUNS}


def _git(repo, *args):
  env = dict(os.environ, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t",
             GIT_COMMITTER_EMAIL="t@t")
  subprocess.run(["git", *args], cwd=repo, env=env, check=True, capture_output=True)


def _write(path, content) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    f.write(content if isinstance(content, str) else json.dumps(content))


def _workdir(root, run: Run, stamp=CODE, config=None, commit="c0ffee1234", done=True) -> str:
  """A run dir as reproduce leaves it: reproduce.json, and results.json when finished."""
  workdir = os.path.join(root, run.name)
  _write(os.path.join(workdir, "reproduce.json"),
         dict(commit=commit, code=CODE, stamp=stamp, config=config or run.config))
  if done:
    _write(os.path.join(workdir, "results.json"), {"test": {"accuracy": 0.5}})
  return workdir


def test_revision_moves_with_code_not_docs_and_uncommitted_code_is_found(tmp_path):
  repo = str(tmp_path)
  for path in ("gpt4v_jax/__init__.py", "configs/c.py", "setup.py", "docs/d.md"):
    _write(os.path.join(repo, path), "x = 1\n")
  _git(repo, "init", "-q")
  _git(repo, "add", ".")
  _git(repo, "commit", "-qm", "one")
  first = reproduce.revision(repo)
  assert reproduce.uncommitted(repo) == [] and len(reproduce.commit(repo)) == 40

  _write(os.path.join(repo, "docs/d.md"), "more\n")
  assert reproduce.uncommitted(repo) == []  # Docs cannot move a number.
  _git(repo, "commit", "-qam", "docs")
  assert reproduce.revision(repo) == first

  _write(os.path.join(repo, "configs/c.py"), "x = 2\n")
  _write(os.path.join(repo, "gpt4v_jax/new.py"), "")
  assert reproduce.uncommitted(repo) == [" M configs/c.py", "?? gpt4v_jax/new.py"]
  _git(repo, "commit", "-qm", "config", "--", "configs/c.py")
  assert reproduce.revision(repo) == first  # A config moves its runs' stamps instead.
  _git(repo, "add", ".")
  _git(repo, "commit", "-qm", "code")
  assert reproduce.revision(repo) != first


def test_a_result_names_its_commit_and_is_marked_dirty_with_uncommitted_code(tmp_path):
  repo = str(tmp_path)
  assert provenance.commit(repo) is None  # Not a checkout: no commit to name.
  for path in ("experiments/probe.py", "docs/d.md"):
    _write(os.path.join(repo, path), "x = 1\n")
  _git(repo, "init", "-q")
  _git(repo, "add", ".")
  _git(repo, "commit", "-qm", "one")
  head = provenance.commit(repo)
  assert len(head) == 40 and head == reproduce.commit(repo)
  _write(os.path.join(repo, "docs/d.md"), "more\n")
  assert provenance.commit(repo) == head  # Docs cannot move a number.
  _write(os.path.join(repo, "experiments/probe.py"), "x = 2\n")  # A script can.
  assert provenance.commit(repo) == head + "+dirty"
  assert provenance.short(head + "+dirty") == head[:7] + "+dirty"
  assert provenance.short(head) == provenance.short(head[:7]) == head[:7]


def test_a_changed_config_restamps_its_run_and_the_runs_that_start_from_it(tmp_path):
  for name in "abcd":
    _write(str(tmp_path / "configs" / f"{name}.py"),
           "import ml_collections\ndef get_config(arg):\n"
           "  return ml_collections.ConfigDict(dict(lr=1.0, arg=arg))\n")
  first = reproduce.stamps(CODE, RUNS, lambda r: reproduce.config_digest(r, str(tmp_path)))
  # a and d: equal settings, no dependencies; b and c: the same settings after others.
  assert first["a"] == first["d"] and len({first["a"], first["b"], first["c"]}) == 3
  _write(str(tmp_path / "configs" / "b.py"),
         "import ml_collections\ndef get_config(arg):\n"
         "  return ml_collections.ConfigDict(dict(lr=2.0, arg=arg))\n")
  second = reproduce.stamps(CODE, RUNS, lambda r: reproduce.config_digest(r, str(tmp_path)))
  assert [n for n in first if first[n] != second[n]] == ["b", "c"]  # c starts from b.
  third = reproduce.stamps("tree-b", RUNS, lambda r: reproduce.config_digest(r, str(tmp_path)))
  assert all(third[n] != second[n] for n in third)


def test_plan_reuses_resumes_and_reruns(tmp_path):
  root = str(tmp_path)
  _workdir(root, A)  # Finished, this revision and config: reuse.
  _workdir(root, B, done=False)  # Unfinished, same revision: resume.
  _workdir(root, C, stamp="tree-old")  # Another revision: moved aside and rerun.
  # d: no run dir.
  assert [(r.name, act) for r, act in reproduce.plan([], root, STAMPS, RUNS)] == [
      ("a", "reuse"), ("b", "resume"), ("c", "stale"), ("d", "run")]
  _workdir(root, C, config="configs/c.py:tiny")  # Same revision, another config.
  assert reproduce.action(C, root, CODE) == "stale"
  os.remove(os.path.join(root, "c", "reproduce.json"))  # A run not launched by reproduce.
  assert reproduce.action(C, root, CODE) == "stale"


def test_only_pulls_in_dependencies_that_are_not_reusable(tmp_path):
  root = str(tmp_path)
  plan = lambda *names: [(r.name, act) for r, act in reproduce.plan(list(names), root, STAMPS,
                                                                       RUNS)]
  assert plan("c") == [("a", "run"), ("b", "run"), ("c", "run")]  # In dependency order.
  _workdir(root, A)
  assert plan("c") == [("a", "reuse"), ("b", "run"), ("c", "run")]
  _workdir(root, B)
  _workdir(root, A, stamp="tree-old")  # b is reusable: its stale dependency is not needed.
  assert plan("c", "d") == [("b", "reuse"), ("c", "run"), ("d", "run")]
  _workdir(root, C)
  assert plan("c") == [("c", "reuse")]
  with pytest.raises(ValueError, match="Unknown run"):
    plan("e")


def test_the_table_lists_dependencies_before_their_users():
  order = [r.name for r in reproduce.RUNS]
  for run in reproduce.RUNS:
    assert all(order.index(dep) < order.index(run.name) for dep in run.deps), run.name
    assert os.path.exists(os.path.join(reproduce.REPO, run.config.partition(":")[0])), run.config


def _workdirs_read(value) -> set[str]:
  """The run names of every "workdirs/NAME" string in a config's (or sweep's) settings."""
  if isinstance(value, dict):
    return set().union(set(), *map(_workdirs_read, value.values()))
  if isinstance(value, (list, tuple)):
    return set().union(set(), *map(_workdirs_read, value))
  if isinstance(value, str) and value.startswith("workdirs/"):
    return {value.split("/")[1]}
  return set()


def test_every_run_a_default_reads_is_one_of_its_dependencies():
  for run in reproduce.RUNS:
    path, _, arg = run.config.partition(":")
    spec = importlib.util.spec_from_file_location("config", os.path.join(reproduce.REPO, path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    read = _workdirs_read(json.loads(module.get_config(arg or None).to_json_best_effort()))
    if run.kind == "sweep":
      read |= _workdirs_read(module.get_sweep(arg or None))
    assert read <= set(run.deps), (run.name, read, run.deps)


def test_a_sweep_is_finished_when_every_variant_is(tmp_path):
  config = tmp_path / "sweep_config.py"
  config.write_text("def get_sweep(arg):\n  return {'x': {}, 'y': {}}\n")
  sweep = Run("s", str(config), "sweep", (), 1)
  root = str(tmp_path / "root")
  workdir = _workdir(root, sweep, done=False)
  _write(os.path.join(workdir, "x", "results.json"), {})
  _write(os.path.join(workdir, "results", "sweep.csv"), "variant\nx\n")
  assert reproduce.action(sweep, root, CODE) == "resume"
  _write(os.path.join(workdir, "y", "results.json"), {})
  assert reproduce.action(sweep, root, CODE) == "reuse"


def test_launch_moves_a_stale_run_aside_and_records_the_new_one(tmp_path, monkeypatch):
  root = str(tmp_path)
  old = _workdir(root, A, stamp="tree-old", commit="0123456789", done=False)
  _write(os.path.join(old, "checkpoints", "1"), "old")
  script = "import json, sys; json.dump({}, open(sys.argv[1] + '/results.json', 'w'))"
  monkeypatch.setattr(reproduce, "command",
                      lambda run, workdir: [sys.executable, "-c", script, workdir])
  minutes = reproduce.launch(A, "stale", root, "f" * 40, CODE, CODE)
  assert 0 <= minutes < 1
  stale = os.path.join(root, "stale", "a-0123456")
  assert open(os.path.join(stale, "checkpoints", "1")).read() == "old"  # Never deleted.
  recorded = json.load(open(os.path.join(root, "a", "reproduce.json")))
  assert recorded == dict(commit="f" * 40, code=CODE, stamp=CODE, config="configs/a.py")
  assert not os.path.exists(os.path.join(root, "a", "checkpoints"))  # Rerun from scratch.
  assert reproduce.action(A, root, CODE) == "reuse"

  _workdir(root, A, stamp="tree-old", commit="0123456789")  # Moved aside again: a new name.
  reproduce.launch(A, "stale", root, "f" * 40, CODE, CODE)
  assert os.path.isdir(stale + "-2")

  resumed = _workdir(root, B, commit="1111111", done=False)
  assert reproduce.launch(B, "resume", root, "f" * 40, CODE, CODE) is None  # Part of its time only.
  assert json.load(open(os.path.join(resumed, "reproduce.json")))["commit"] == "1111111"

  monkeypatch.setattr(reproduce, "command", lambda run, workdir: [sys.executable, "-c", "1/0"])
  with pytest.raises(SystemExit, match="a failed with status 1; rerun the same command"):
    reproduce.launch(A, "resume", root, "f" * 40, CODE, CODE)


def test_uncommitted_code_is_refused_before_anything_runs(tmp_path, monkeypatch, capsys):
  monkeypatch.setattr(reproduce, "commit", lambda: "a" * 40)
  monkeypatch.setattr(reproduce, "revision", lambda: CODE)
  monkeypatch.setattr(reproduce, "uncommitted", lambda: [" M configs/shapes_vqa.py"])
  monkeypatch.setattr(reproduce, "launch", lambda *a: pytest.fail("launched"))
  with pytest.raises(SystemExit, match="(?s)refused: uncommitted.* M configs/shapes_vqa.py"):
    reproduce.reproduce(["shapes_vqa"], str(tmp_path), dry_run=False)
  out = capsys.readouterr().out
  assert "| shapes_caption | run |" in out and "| shapes_vqa_left_of | run |" in out
  assert "| shapes_vqa | run |" in out
  assert os.listdir(tmp_path) == []


def test_runs_with_dependencies_need_the_configs_root(tmp_path):
  steps = [(reproduce.RUNS[0], "run"), (reproduce.RUNS[1], "run")]
  with pytest.raises(SystemExit, match="shapes_vqa_left_of read their dependencies"):
    reproduce.check_root(steps, str(tmp_path))
  reproduce.check_root(steps[:1], str(tmp_path))
  reproduce.check_root(steps, os.path.join(reproduce.REPO, "workdirs"))


def test_publish_copies_results_curve_and_run(tmp_path):
  from gpt4v_jax.metric_writer import MetricWriter
  workdir = _workdir(str(tmp_path / "root"), A)
  writer = MetricWriter(os.path.join(workdir, "tb"))
  for step, loss in ((100, 2.0), (200, 1.5)):
    writer.scalars(step, dict(loss=loss, grad_norm=9.0), prefix="train/")
  writer.scalars(200, dict(accuracy=0.25, seconds=3.0), prefix="eval/validation/")
  writer.scalars(200, dict(accuracy=0.5), prefix="final/test/")
  writer.close()
  results = tmp_path / "results"

  out = reproduce.publish(A, workdir, 12.345, str(results))
  assert sorted(os.listdir(out)) == ["curve.json", "results.json", "run.json"]
  assert json.load(open(os.path.join(out, "results.json"))) == {"test": {"accuracy": 0.5}}
  assert json.load(open(os.path.join(out, "curve.json"))) == {
      "train/loss": [[100, 2.0], [200, 1.5]], "eval/validation/accuracy": [[200, 0.25]]}
  run = dict(name="a", config="configs/a.py", commit="c0ffee1234", code=CODE, stamp=CODE,
             minutes=12.3,
             date=datetime.date.today().isoformat())
  assert json.load(open(os.path.join(out, "run.json"))) == run
  assert reproduce.estimate(A, str(results)) == 12.3

  reproduce.publish(A, workdir, None, str(results))  # Reused: keeps the measured minutes,
  assert json.load(open(os.path.join(out, "run.json"))) == run
  _workdir(str(tmp_path / "root"), A, commit="beef")  # unless it is another run.
  reproduce.publish(A, workdir, None, str(results))
  assert json.load(open(os.path.join(out, "run.json")))["minutes"] is None
  assert reproduce.estimate(A, str(results)) == 3


def test_publish_a_sweep(tmp_path):
  config = tmp_path / "sweep_config.py"
  config.write_text("def get_sweep(arg):\n  return {'x': {}, 'y': {}}\n")
  sweep = Run("s", str(config), "sweep", (), 1)
  workdir = _workdir(str(tmp_path / "root"), sweep, done=False)
  for variant, accuracy in (("x", 0.1), ("y", 0.2)):
    _write(os.path.join(workdir, variant, "results.json"), {"test": {"accuracy": accuracy}})
  for name in ("sweep.csv", "sweep.md", "sweep.png"):
    _write(os.path.join(workdir, "results", name), f"{name} content")
  out = reproduce.publish(sweep, workdir, 2.0, str(tmp_path / "results"))
  assert sorted(os.listdir(out)) == ["run.json", "sweep.csv", "sweep.md", "sweep.png", "x.json",
                                     "y.json"]
  assert json.load(open(os.path.join(out, "y.json"))) == {"test": {"accuracy": 0.2}}
  assert open(os.path.join(out, "sweep.png")).read() == "sweep.png content"
  assert json.load(open(os.path.join(out, "run.json")))["minutes"] == 2.0
