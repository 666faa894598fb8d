"""Own data from JPEG files: the image-folder builder's throughput, the grain pipeline's
examples/s at 224x224, and the ViT-B/16 train step's consumption, on this machine.

  python -m experiments.benchmarks.own_data [--images=500] [--threads=1,2,4] [--batches=20]

1. Writes --images synthetic photos (--image_width x --image_height JPEGs with 1/f-spectrum
   texture and flat objects, about 65-100 KB each at 640x480, like camera photos) and five
   captions each into DIR/train/ (the `imagefolder` layout) in a temporary folder, then times
   `image_folder.load` building the array_record copy (images/s, MB/s of JPEG) and a second
   load that reuses it.
2. Runs the real grain pipeline (`objective.train_dataset` of configs/coco_captions.py's caption
   objective, data.name "folder": decode, centre crop or random resized crop to 224, CLIP
   normalisation, byte tokens) with each --threads, and times --batches batches after
   --warmup_batches.
3. Times the train step of the same config with --vit_variant (196 image tokens at 224) and
   coco_captions' decoder (6 x 512) on --step_batch random examples (`train_step.measure`).

Headroom = pipeline examples/s over step examples/s: how many times over the pipeline outruns
the step it feeds (the bar is 3x). Both run on the same CPU cores here, one after the other;
on an accelerator host the step's rate is the accelerator's and the pipeline keeps the cores.
"""
import io
import json
import os
import tempfile
import time

import numpy as np
import PIL.Image
import PIL.ImageDraw
from absl import app, flags

from configs import coco_captions
from experiments.benchmarks import common, train_step
from gpt4v_jax import perf, runs
from gpt4v_jax.data import datasets, image_folder

_IMAGES = flags.DEFINE_integer("images", 500, "Synthetic JPEG photos written and built.")
_WIDTH = flags.DEFINE_integer("image_width", 640, "Their width in pixels.")
_HEIGHT = flags.DEFINE_integer("image_height", 480, "Their height in pixels.")
_QUALITY = flags.DEFINE_integer("jpeg_quality", 90, "Their JPEG quality.")
_CONFIG = flags.DEFINE_string("config_arg", "", "coco_captions.get_config's argument: '' "
                              "(224x224, ViT-S/16, 6 x 512 decoder) or 'tiny' (for the tests).")
_VIT = flags.DEFINE_string("vit_variant", "B/16", "The step's ViT; '' keeps the config's.")
_BATCH = flags.DEFINE_integer("pipeline_batch", 32, "Pipeline batch size.")
_THREADS = flags.DEFINE_list("threads", ["1", "2", "4"], "grain read threads to time.")
_BATCHES = flags.DEFINE_integer("batches", 20, "Pipeline batches timed per setting.")
_WARMUP = flags.DEFINE_integer("warmup_batches", 2, "Pipeline batches taken before timing.")
_STEP_BATCH = flags.DEFINE_integer("step_batch", 8, "Train step batch size.")
_STEP_REPEATS = flags.DEFINE_integer("step_repeats", 2, "Timed train steps (median).")

_COLOURS = ("red", "green", "blue", "yellow", "brown", "grey", "white", "black", "orange")
_THINGS = ("dog", "cat", "car", "bicycle", "tree", "bench", "umbrella", "kite", "boat", "cup")
_PLACES = ("on a lawn", "next to a wall", "in a park", "near the water", "on a street",
           "under a cloudy sky", "in a kitchen", "on a wooden table")


def _field(rng: np.random.Generator, h: int, w: int, alpha: float) -> np.ndarray:
  """float [h, w], zero mean, unit std: noise whose amplitude falls as 1/f^alpha (natural
  photos are close to alpha 1-1.5; higher is smoother)."""
  f = np.hypot(np.fft.fftfreq(h)[:, None], np.fft.rfftfreq(w)[None, :])
  f[0, 0] = 1.0
  amp = f ** -alpha
  amp[0, 0] = 0.0  # No DC: the mean colour is set separately.
  spectrum = amp * rng.standard_normal(amp.shape) * np.exp(2j * np.pi * rng.random(amp.shape))
  x = np.fft.irfft2(spectrum, s=(h, w))
  return x / x.std()


def synthetic_photo(rng: np.random.Generator, w: int, h: int, quality: int) -> bytes:
  """A JPEG file of a w x h picture that compresses like a photo: a textured 1/f luminance
  field, smoother colour fields (at 1/4 resolution, as in real scenes) and a few flat objects
  with hard edges."""
  alpha = rng.uniform(1.3, 1.5)  # ~100 KB at 1.3, ~65 KB at 1.5 (640x480, quality 90).
  lum = _field(rng, h, w, alpha)
  ch, cw = max(1, h // 4), max(1, w // 4)
  chroma = [np.asarray(PIL.Image.fromarray(_field(rng, ch, cw, alpha).astype(np.float32))
                       .resize((w, h), PIL.Image.Resampling.BILINEAR)) for _ in range(2)]
  tint = rng.normal(0, 12, (2, 3))
  x = (rng.uniform(60, 190, 3) + 40 * lum[..., None]
       + chroma[0][..., None] * tint[0] + chroma[1][..., None] * tint[1])
  im = PIL.Image.fromarray(np.clip(x, 0, 255).astype(np.uint8))
  draw = PIL.ImageDraw.Draw(im)
  for _ in range(rng.integers(3, 8)):
    x0, y0, s = rng.integers(0, w), rng.integers(0, h), rng.integers(w // 32 + 1, w // 3 + 2)
    draw.ellipse([x0, y0, x0 + s, y0 + int(s * rng.uniform(0.5, 1.5))],
                 fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
  buf = io.BytesIO()
  im.save(buf, "JPEG", quality=quality)
  return buf.getvalue()


def _caption(rng: np.random.Generator) -> str:
  pick = lambda options: options[rng.integers(len(options))]
  return (f"a {pick(_COLOURS)} {pick(_THINGS)} and a {pick(_COLOURS)} {pick(_THINGS)} "
          f"{pick(_PLACES)}")


def write_folder(path: str, n: int, w: int, h: int, quality: int, seed: int = 0) -> int:
  """Writes n photos with five captions each as path/train/{metadata.jsonl, images/*.jpg};
  returns the JPEG bytes written."""
  rng = np.random.default_rng(seed)
  os.makedirs(os.path.join(path, "train", "images"))
  total = 0
  with open(os.path.join(path, "train", image_folder.METADATA), "w") as meta:
    for i in range(n):
      name = f"images/{i:05d}.jpg"
      data = synthetic_photo(rng, w, h, quality)
      with open(os.path.join(path, "train", name), "wb") as f:
        f.write(data)
      total += len(data)
      meta.write(json.dumps({"file_name": name,
                             "captions": [_caption(rng) for _ in range(5)]}) + "\n")
  return total


def pipeline_rate(config, source, threads: int, batch: int) -> tuple[float, float]:
  """(examples/s, seconds) of the real training pipeline over `source`, after warm-up."""
  objective = runs.make_objective(config)
  it = iter(objective.train_dataset(source, seed=0, global_batch_size=batch,
                                  process_index=0, process_count=1, num_threads=threads))
  for _ in range(_WARMUP.value):  # Threads started, buffers filled once.
    next(it)
  t0 = time.perf_counter()
  for _ in range(_BATCHES.value):
    b = next(it)
  seconds = time.perf_counter() - t0
  assert b["image"].shape == (batch, config.data.image_size, config.data.image_size, 3)
  return _BATCHES.value * batch / seconds, seconds


def _row(stage, setting, threads=None, examples=None, seconds=None, examples_per_s=None,
         mb_per_s=None, headroom=None) -> dict:
  """One table row; None where a column does not apply."""
  return dict(stage=stage, setting=setting, threads=threads, examples=examples, seconds=seconds,
              examples_per_s=examples_per_s, MB_per_s=mb_per_s, headroom=headroom)


def main(argv):
  del argv
  peak, _ = perf.peak_flops_per_device()
  config = coco_captions.get_config(_CONFIG.value)
  n, w, h = _IMAGES.value, _WIDTH.value, _HEIGHT.value
  rows = []
  with tempfile.TemporaryDirectory() as tmp:
    folder, data_dir = os.path.join(tmp, "folder"), os.path.join(tmp, "data_dir")
    t0 = time.perf_counter()
    jpeg_bytes = write_folder(folder, n, w, h, _QUALITY.value)
    print(f"Wrote {n} {w}x{h} JPEGs, {jpeg_bytes / n / 1e3:.1f} KB each on average, in "
          f"{time.perf_counter() - t0:.1f} s.", flush=True)
    config.data.update(name="folder", path=folder, data_dir=data_dir)

    # 1. Builder: the array_record copy, then its reuse.
    t0 = time.perf_counter()
    source = image_folder.load(folder, data_dir)["train"]
    build_s = time.perf_counter() - t0
    if len(source) != n:
      raise RuntimeError(f"The built copy of {folder} has {len(source)} examples, not {n}.")
    t0 = time.perf_counter()
    source = datasets.open_splits(config.data)["train"]  # The path a train run takes.
    reuse_s = time.perf_counter() - t0
    photos = f"{n} JPEGs {w}x{h}, {jpeg_bytes / n / 1e3:.0f} KB avg"
    rows.append(_row("build", photos, examples=n, seconds=build_s, examples_per_s=n / build_s,
                     mb_per_s=jpeg_bytes / 1e6 / build_s))
    rows.append(_row("reuse", "second load of the copy", examples=n, seconds=reuse_s))

    # 2. The pipeline, with and without the random resized crop.
    size = config.data.image_size
    crop = tuple(config.data.random_resized_crop) or (0.5, 1.0)
    pipeline_rows = []
    for augment in ((), crop):
      config.data.random_resized_crop = augment
      setting = (f"{size}x{size} " + (f"random_resized_crop {augment}" if augment
                                      else f"{config.data.resize}") + f", batch {_BATCH.value}")
      for threads in map(int, _THREADS.value):
        rate, seconds = pipeline_rate(config, source, threads, _BATCH.value)
        pipeline_rows.append(_row("pipeline", setting, threads, _BATCHES.value * _BATCH.value,
                                  seconds, rate, rate * jpeg_bytes / n / 1e6))
        print(f"pipeline {setting}, {threads} threads: {rate:.1f} examples/s", flush=True)

  # 3. The train step it feeds.
  if _VIT.value:
    config.model.vit_variant = _VIT.value
  step = train_step.measure(config, _STEP_BATCH.value, repeats=_STEP_REPEATS.value,
                            start_peak=peak)
  step_rate = _STEP_BATCH.value / (step["step_ms"] / 1e3)
  image_tokens = step["tokens_per_step"] // _STEP_BATCH.value - config.objective.max_text_len
  m = config.model
  rows += [{**r, "headroom": r["examples_per_s"] / step_rate} for r in pipeline_rows]
  rows.append(_row(
      "train step", f"ViT-{m.vit_variant} at {size} ({image_tokens} image tokens) + "
      f"{m.depth} x {m.width} decoder ({config.objective.max_text_len} text), "
      f"{step['params_M']:.3g}M params, MFU {step['mfu']:.2f}, batch {_STEP_BATCH.value}",
      examples=_STEP_BATCH.value, seconds=step["step_ms"] / 1e3, examples_per_s=step_rate))
  common.report("own_data", rows, notes=(
      f"{os.cpu_count()} CPU cores shared with other work (noisy); pipeline and step take "
      f"turns on them; headroom = pipeline / step examples/s; step {step['gflop_per_step']:.0f} "
      f"GFLOP, median of {_STEP_REPEATS.value}"))


if __name__ == "__main__":
  app.run(main)
