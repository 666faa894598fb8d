"""Fault tolerance (README, "Fault tolerance"): each test injects one fault and checks what the
run does about it."""
import io

import grain
import jax
import numpy as np
import PIL.Image
import pytest

from configs import shapes_caption
from gpt4v_jax import train
from gpt4v_jax.data import pipeline
from gpt4v_jax.data.tokenizer import ByteTokenizer


# --- Bad input data (the training pipeline over a small fake source).


def _png(image: np.ndarray) -> bytes:
  buffer = io.BytesIO()
  PIL.Image.fromarray(image).save(buffer, format="PNG")
  return buffer.getvalue()


def _example(i: int, *, image: bytes | None = None, caption: bytes = b"a small red circle."):
  """Example `i`: its image is filled with the value i, so a batch row says which it came from."""
  if image is None:
    image = _png(np.full((64, 64, 3), i, np.uint8))
  return dict(id=i, image=image, captions=[caption])


def _fake_source() -> list[dict]:
  source = [_example(i) for i in range(12)]
  source += [_example(100, image=_png(np.full((64, 64, 3), 100, np.uint8))[:40]),  # Truncated.
             _example(101, image=_png(np.zeros((32, 32, 3), np.uint8))),  # Wrong size.
             _example(102, caption=b""),
             _example(103, caption=b"a large blue square " * 50)]  # 1000 bytes: cut to fit.
  return source


def _fake_iter(on_bad_example="skip"):
  obj = train.make_objective(shapes_caption.get_config("tiny"), ByteTokenizer())
  return iter(pipeline.train_dataset(
      _fake_source(), obj.train_example, seed=0, local_batch_size=4, process_index=0,
      process_count=1, num_threads=2, on_bad_example=on_bad_example))


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


def test_bad_example_is_a_clear_error_when_configured():
  it = _fake_iter(on_bad_example="error")
  with pytest.raises(pipeline.BadExample, match=r"id=10[012]\).*on_bad_example='skip'"):
    for _ in range(20):
      next(it)


def test_only_bad_examples_is_an_error_not_a_hang():
  obj = train.make_objective(shapes_caption.get_config("tiny"), ByteTokenizer())
  it = iter(pipeline.train_dataset(
      [_example(0, caption=b"")], obj.train_example, seed=0, local_batch_size=4,
      process_index=0, process_count=1, num_threads=0))
  with pytest.raises(pipeline.BadExample, match="bad training examples in a row"):
    next(it)


def test_bad_eval_examples_are_left_out_of_fixed_size_batches():
  obj = train.make_objective(shapes_caption.get_config("tiny"), ByteTokenizer())
  batches = list(pipeline.eval_batches(_fake_source(), obj.eval_example, num_examples=16,
                                       batch_size=5))
  assert [ex["id"] for _, raw in batches for ex in raw] == [*range(12), 102, 103]
  assert all(b["image"].shape[0] == 5 for b, _ in batches)
  with pytest.raises(pipeline.BadExample, match=r"id=100\)"):
    list(pipeline.eval_batches(_fake_source(), obj.eval_example, num_examples=16,
                               batch_size=5, on_bad_example="error"))
