"""End to end through the command line, as a user runs it."""
import glob
import json
import os
import shutil

import jax
import ml_collections
import numpy as np
import pytest

from gpt4v_jax import runs
from gpt4v_jax.metric_writer import read_scalars


def test_few_step_run_trains_evaluates_and_resumes(tmp_path, run_main, tiny_run):
  # A relative --workdir, as `make train` passes it (Orbax itself needs absolute paths).
  r, workdir = tiny_run
  assert r.returncode == 0, r.stderr[-3000:]
  out = r.stdout
  assert "step 6/6 loss=" in out and "ex/s" in out and "ETA" in out and "MFU=" in out
  results = json.loads((workdir / "results.json").read_text())
  assert set(results["test"]) >= {"cider_d", "bleu_4", "object_f1", "exact_match"}
  preds = json.loads((workdir / "eval_test_step6.json").read_text())
  assert len(preds["predictions"]) == 16 and "references" in preds["predictions"][0]
  assert (workdir / "eval_validation_step3.json").exists()  # The in-training eval ran.
  assert glob.glob(str(workdir / "tb" / "events.out.tfevents.*"))
  losses = read_scalars(str(workdir / "tb"))["train/loss"]  # The logged ones, read back.
  assert [step for step, _ in losses] == [2, 4, 6]
  assert f"step 6/6 loss={losses[-1][1]:.4f}" in out
  assert sorted(os.listdir(workdir / "checkpoints")) == ["3", "6"]

  # Same command again: nothing retrains, the final evaluation is reused.
  workdir = tmp_path / "run"
  shutil.copytree(tiny_run[1], workdir)  # The shared run stays as it is.
  again = run_main("--workdir=run", cwd=tmp_path)
  assert again.returncode == 0, again.stderr[-3000:]
  assert "Resumed from step 6" in again.stdout and "step 1/6" not in again.stdout
  assert "reused" in again.stdout
  assert json.loads((workdir / "results.json").read_text()) == results

  # Asking for more steps continues from the checkpoint.
  longer = run_main("--workdir=run", "--config.train.steps=8", cwd=tmp_path)
  assert longer.returncode == 0, longer.stderr[-3000:]
  assert "Resumed from step 6" in longer.stdout and "step 8/8" in longer.stdout


@pytest.mark.parametrize("args,message", [
    (["--config.train.stepz=3"], "stepz"),
    (["--config.train.steps=abc"], "train.steps"),
    (["--config.mesh.data=3", "--config.mesh.fsdp=1"], "config.mesh"),
    (["--config.data.global_batch_size=12"], "config.data.global_batch_size=12"),
    (["--config.model.num_kv_heads=3"], "config.model.num_kv_heads"),
    (["--config.data.on_bad_example=ignore"], "config.data.on_bad_example"),
    (["--config.train.microbatches=3"], "config.train.microbatches=3 must be >= 1 and divide"),
    (["--config.train.microbatches=4"],
     "config.train.microbatches=4 is not divisible by the mesh's"),
    (["--config.optimizer.frozen=('vti',)"], "config.optimizer.frozen=('vti',)"),
    (["--config.model.remat=some"], "config.model.remat='some'"),
    (["--config.data.name=imagenet"], "config.data.name='imagenet'"),
    (["--config.data.image_size=0"], "config.data.image_size=0"),
    (["--config.evals.final_splits=('dev',)"], "config.evals.final_splits: ['dev'] are not"),
])
def test_bad_config_fails_before_compiling(tmp_path, run_main, args, message):
  r = run_main(f"--workdir={tmp_path / 'run'}", *args)
  assert r.returncode != 0
  assert message in r.stderr
  assert not (tmp_path / "run" / "checkpoints").exists()


def test_missing_workdir_parent_is_a_clear_error(tmp_path, run_main):
  r = run_main(f"--workdir={tmp_path / 'no' / 'such' / 'run'}")
  assert r.returncode != 0 and "parent directory" in r.stderr


def test_finetune_from_another_runs_encoder(tmp_path, tiny_run, run_main, vq_workdir):
  """VQA initialised from the tiny caption run's ViT, frozen: its final ViT is the caption
  run's, bit for bit. Trees that do not fit are errors before training."""
  caption_dir = str(tiny_run[1])
  r = run_main(f"--workdir={tmp_path / 'vqa'}", f"--config.init.workdir={caption_dir}",
               "--config.optimizer.frozen=('vit',)", config="shapes_vqa.py:tiny")
  assert r.returncode == 0, r.stderr[-3000:]
  assert f"Initialised vit from step 6 of {caption_dir}" in r.stdout
  vit = lambda workdir: runs.restore_run(workdir, "run")[2].params["vit"]
  jax.tree.map(np.testing.assert_array_equal, vit(tmp_path / "vqa"), vit(caption_dir))
  bad = run_main(f"--workdir={tmp_path / 'bad'}", f"--config.init.workdir={vq_workdir}",
                 config="shapes_vqa.py:tiny")
  assert bad.returncode != 0 and "config.init.params: 'vit' is not a param tree" in bad.stderr


def test_finetune_grows_the_vocabulary(tiny_run, tiny_t2i_run):
  """The tiny caption run's decoder (128 ids) starts a text-to-image decoder (256 ids: its
  words and the image codes): every leaf is the caption run's except the new ids' rows of the
  embedding and the code position embeddings, which keep this model's init. A vocabulary
  that shrank is an error, as is a param the target lacks."""
  (_, caption_dir), (r, t2i_dir) = tiny_run, tiny_t2i_run
  assert r.returncode == 0, r.stderr[-3000:]
  caption_params = runs.restore_run(caption_dir, "caption")[2].params
  fresh = runs.restore_run(t2i_dir, "t2i")[2].params
  init = ml_collections.ConfigDict(dict(workdir=str(caption_dir), params=("decoder",)))
  grown = runs.init_params_from(init, fresh, vocab_size=256)["decoder"]
  flat = lambda tree: dict(jax.tree_util.tree_leaves_with_path(tree))
  caption, grown, fresh = flat(caption_params["decoder"]), flat(grown), flat(fresh["decoder"])
  added = [k for k in grown if k not in caption]
  assert [jax.tree_util.keystr(k) for k in added] == ["['code_position_embedding']"]
  np.testing.assert_array_equal(grown[added[0]], fresh[added[0]])
  resized = [k for k in caption if grown[k].shape != caption[k].shape]
  assert [jax.tree_util.keystr(k) for k in resized] == ["['embedding']"]
  for k in caption:
    old = np.asarray(caption[k])
    new = np.asarray(grown[k])
    np.testing.assert_array_equal(new[:len(old)], old)
    np.testing.assert_array_equal(new[len(old):], np.asarray(fresh[k])[len(old):])
  assert grown[resized[0]].shape == (256, caption[resized[0]].shape[1])
  shrink = ml_collections.ConfigDict(dict(workdir=str(t2i_dir), params=("decoder",)))
  with pytest.raises(ValueError, match=r"decoder\['embedding'\] has shape \(128, .*\(256,"):
    runs.init_params_from(shrink, caption_params, vocab_size=128)
  without = runs.restore_run(t2i_dir, "t2i")[2].params
  del without["decoder"]["code_position_embedding"]
  with pytest.raises(ValueError, match=r"this model has no decoder\['code_position_embedding"):
    runs.init_params_from(shrink, without, vocab_size=256)
