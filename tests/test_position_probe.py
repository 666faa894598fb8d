"""experiments/position_probe.py: its probes read a linear code and not noise, its relation
counts are right, and it runs on the suite's tiny run."""
import numpy as np

from experiments import position_probe
from gpt4v_jax.data import datasets
from gpt4v_jax.model import Model


def test_ridge_probe_reads_a_linear_code_and_not_noise():
  rng = np.random.default_rng(0)
  x = rng.uniform(0, 64, 400)
  code = np.outer(x, rng.normal(size=16)) + rng.normal(scale=0.1, size=(400, 16))
  noise = rng.normal(size=(400, 16))
  for features, low, high in ((code, 0.99, 1.0), (noise, -1.0, 0.1)):
    weights = position_probe.ridge_fit(features[:300], x[:300, None])
    r2 = position_probe.r_squared(position_probe.ridge_predict(weights, features[300:])[:, 0],
                                  x[300:])
    assert low <= r2 <= high


def test_relation_answers_are_counted_against_the_truth():
  records = ([dict(qtype="relation", answer="yes", prediction="yes")] * 3
             + [dict(qtype="relation", answer="yes", prediction="no")]
             + [dict(qtype="relation", answer="no", prediction="yes")] * 2
             + [dict(qtype="relation", answer="no", prediction="no")] * 2
             + [dict(qtype="color", answer="red", prediction="red")])
  assert position_probe.relation_answers(records) == dict(
      relation_questions=8, relation_accuracy=5 / 8, yes_rate_when_yes=3 / 4,
      yes_rate_when_no=2 / 4)
  assert position_probe.relation_answers(records[-1:]) == {}


def test_probe_runs_on_a_run(tiny_run):
  r, workdir = tiny_run
  assert r.returncode == 0, r.stderr[-3000:]
  model = Model.from_pretrained(str(workdir))
  out = position_probe.probe(model, datasets.open_splits(model.config.data), 12, 8)
  assert out["grid"] ** 2 == model.module.num_image_tokens
  assert out["train_objects"] >= 12 and out["test_objects"] >= 8
  for name in ("column", "row"):
    assert 0 <= out[f"{name}_accuracy"] <= 1 and 0 < out[f"{name}_majority"] <= 1
  for axis in ("x", "y"):  # Errors within the 64-pixel image.
    assert out[f"{axis}_r2"] <= 1 and 0 <= out[f"{axis}_mean_error_px"] <= 64
