"""Tests for image decoding and preprocessing (gpt4v_jax/data/images.py).

Every fixture is made here with PIL and encoded to bytes; expected pixels come from the
fixture's construction (or from PIL's own exif_transpose / resize as an independent path).
"""
import io
import struct
import zlib

import numpy as np
import PIL.Image
import PIL.ImageFile
import PIL.ImageOps
import pytest

from gpt4v_jax.data import images as I
from gpt4v_jax.data import shapes
from gpt4v_jax.data.pipeline import BadExample

RED, GREEN, BLUE, GREY, WHITE = (230, 20, 20), (20, 200, 20), (20, 40, 230), (128, 128, 128), (
    255, 255, 255)
Tr = PIL.Image.Transpose
# Orientation -> the transpose that turns an upright picture into the file's stored pixels
# (the inverse of what a viewer applies; EXIF 6 = "rotate 90 clockwise to view").
TO_STORED = {1: None, 2: Tr.FLIP_LEFT_RIGHT, 3: Tr.ROTATE_180, 4: Tr.FLIP_TOP_BOTTOM,
             5: Tr.TRANSPOSE, 6: Tr.ROTATE_90, 7: Tr.TRANSVERSE, 8: Tr.ROTATE_270}


def encode(image, fmt: str, **kwargs) -> bytes:
  """A PIL image or uint8 array -> file bytes."""
  if isinstance(image, np.ndarray):
    image = PIL.Image.fromarray(image)
  buffer = io.BytesIO()
  image.save(buffer, fmt, **kwargs)
  return buffer.getvalue()


def smooth_picture(w: int, h: int) -> np.ndarray:
  """uint8 [h, w, 3] of gentle gradients (little JPEG error) with a red block at the top
  left (a quarter of each side) marking which way is up."""
  y, x = np.mgrid[0:h, 0:w]
  image = np.stack([60 + 100 * x / w, 60 + 100 * y / h, 120 + 0 * x], -1).astype(np.uint8)
  image[:h // 4, :w // 4] = RED
  return image


def with_orientation(upright: np.ndarray, orientation: int, fmt: str, **kwargs) -> bytes:
  """A file whose stored pixels, turned per its EXIF orientation tag, show `upright`."""
  stored = PIL.Image.fromarray(upright)
  if TO_STORED[orientation] is not None:
    stored = stored.transpose(TO_STORED[orientation])
  exif = PIL.Image.Exif()
  exif[0x0112] = orientation
  return encode(stored, fmt, exif=exif.tobytes(), **kwargs)


def as_uint8(x: np.ndarray, normalize: str = "minus_one_to_one") -> np.ndarray:
  return I.to_uint8(x, normalize)


def png_header(w: int, h: int) -> bytes:
  """A PNG that claims w x h RGB pixels but holds a few bytes of pixel data."""
  def chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
  return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
          + chunk(b"IDAT", zlib.compress(b"\0" * 100)) + chunk(b"IEND", b""))


# ----------------------------------------------------------------------------
# Compatibility with the pipeline's decoding of shapes images.
# ----------------------------------------------------------------------------


def test_bit_identical_to_the_previous_decoding_of_shapes_pngs():
  """Before images.py, the pipeline read a shapes PNG as PIL's RGB array / 127.5 - 1: the
  default runs' numbers depend on the same floats."""
  p = I.Preprocess(size=64, resize="squash", normalize="minus_one_to_one")
  for i in range(20):
    png = shapes._png_bytes(shapes.make_example(0, "train", i)["image"])
    with PIL.Image.open(io.BytesIO(png)) as im:
      old = np.asarray(im.convert("RGB"), np.float32) / 127.5 - 1.0
    for rng in (None, np.random.default_rng(i)):  # No augmentation configured: same either way.
      new = I.preprocess(png, p, rng)
      assert new.dtype == np.float32 and new.shape == (64, 64, 3)
      assert new.tobytes() == old.tobytes()


def test_decoded_array_input_matches_its_png():
  image = shapes.make_example(0, "train", 3)["image"]
  p = I.Preprocess(size=32, resize="crop")
  np.testing.assert_array_equal(I.preprocess(image, p), I.preprocess(encode(image, "PNG"), p))
  with pytest.raises(BadExample, match="uint8"):
    I.preprocess(image.astype(np.float32), p)


# ----------------------------------------------------------------------------
# Decoding: orientation, modes, formats.
# ----------------------------------------------------------------------------


def test_exif_orientation_6_jpeg_marker_ends_top_right():
  stored = np.full((20, 40, 3), GREY, np.uint8)  # 40 wide, 20 high, as the camera stored it.
  stored[:8, :8] = RED  # Stored top-left.
  exif = PIL.Image.Exif()
  exif[0x0112] = 6  # The stored top row is the picture's right side.
  data = encode(stored, "JPEG", quality=95, exif=exif.tobytes())
  image = I.decode(data)
  assert image.shape == (40, 20, 3)  # Portrait once turned.
  assert np.abs(image[1:7, -7:-1].astype(int) - RED).max() < 30  # Top right.
  assert np.abs(image[1:7, 1:7].astype(int) - GREY).max() < 30
  out = as_uint8(I.preprocess(data, I.Preprocess(size=16)))
  assert np.abs(out[0, -1].astype(int) - RED).max() < 40
  assert np.abs(out[0, 0].astype(int) - GREY).max() < 40


@pytest.mark.parametrize("orientation", range(1, 9))
def test_orientation_matches_exif_transpose_and_upright_file(orientation):
  upright = smooth_picture(60, 40)
  data = with_orientation(upright, orientation, "PNG")
  reference = np.asarray(PIL.ImageOps.exif_transpose(PIL.Image.open(io.BytesIO(data))))
  np.testing.assert_array_equal(reference, upright)  # The fixture is what we meant.
  np.testing.assert_array_equal(I.decode(data), upright)
  # preprocess resizes in the stored layout and turns the result: same as from the upright file
  # up to rounding (PIL resamples rows then columns), with the random crop drawn upright too.
  plain = encode(upright, "PNG")
  for p in (I.Preprocess(24), I.Preprocess(24, resize="pad"), I.Preprocess(24, resize="crop"),
            I.Preprocess(24, random_resized_crop=True, hflip=True)):
    for seed in (0, 1):
      got = I.preprocess(data, p, np.random.default_rng(seed))
      want = I.preprocess(plain, p, np.random.default_rng(seed))
      assert np.abs(got - want).max() <= 2 / 127.5, (p, seed)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_orientation_with_jpeg_draft(orientation):
  upright = smooth_picture(400, 240)  # Shrinks 7.5x to 32: decoded at 1/4 scale.
  data = with_orientation(upright, orientation, "JPEG", quality=95)
  out = as_uint8(I.preprocess(data, I.Preprocess(size=32)))
  reference = np.asarray(PIL.Image.fromarray(upright).resize((32, 32), PIL.Image.BICUBIC))
  assert np.abs(out.astype(int) - reference).mean() < 2
  assert np.abs(out[1:7, 1:7].astype(int) - RED).max() < 30  # The marker stays top left.


def test_jpeg_draft_decodes_small_and_stays_close_to_full_decode():
  data = encode(smooth_picture(800, 600), "JPEG", quality=95)
  im = I._open(data, I.DEFAULT_MAX_PIXELS)
  assert I._draft(im, (0, 0, 800, 600), (64, 64)) == 8 and im.size == (100, 75)
  im = I._open(data, I.DEFAULT_MAX_PIXELS)
  assert I._draft(im, (0, 0, 800, 600), (224, 224)) == 2 and im.size == (400, 300)
  for resize in I.RESIZES:
    fast = as_uint8(I.preprocess(data, I.Preprocess(64, resize=resize)))
    full = as_uint8(I.preprocess(data, I.Preprocess(64, resize=resize, jpeg_draft=False)))
    assert np.abs(fast.astype(int) - full).mean() < 1.5, resize


def test_grayscale_and_one_bit():
  gray = np.array([[0, 50], [200, 255]], np.uint8)
  np.testing.assert_array_equal(I.decode(encode(gray, "PNG")), np.repeat(gray[..., None], 3, -1))
  bits = PIL.Image.fromarray(np.array([[True, False], [False, True]]))
  assert bits.mode == "1"
  np.testing.assert_array_equal(I.decode(encode(bits, "PNG"))[..., 0], [[255, 0], [0, 255]])


def test_la_and_rgba_composited_onto_white():
  la = PIL.Image.fromarray(np.array([[[40, 255], [40, 0], [40, 128]]], np.uint8), "LA")
  got = I.decode(encode(la, "PNG"))[0, :, 0].astype(int)
  np.testing.assert_allclose(got, [40, 255, 40 * 128 / 255 + 255 * 127 / 255], atol=1)
  rgba = np.array([[[0, 0, 0, 0], [20, 40, 230, 255], [255, 0, 0, 128]]], np.uint8)
  got = I.decode(encode(rgba, "PNG"))[0].astype(int)
  assert tuple(got[0]) == WHITE  # Fully transparent black is white, not black.
  assert tuple(got[1]) == BLUE
  np.testing.assert_allclose(got[2], [255, 127, 127], atol=1)


def test_palette_with_and_without_transparency():
  index = np.array([[0, 1], [1, 0]], np.uint8)
  im = PIL.Image.fromarray(index, "P")
  im.putpalette(RED + GREEN)
  np.testing.assert_array_equal(I.decode(encode(im, "PNG")), np.array([RED, GREEN])[index])
  np.testing.assert_array_equal(I.decode(encode(im, "PNG", transparency=1)),
                                np.array([RED, WHITE])[index])
  np.testing.assert_array_equal(I.decode(encode(im, "GIF", transparency=1)),
                                np.array([RED, WHITE])[index])


def test_cmyk_jpeg():
  rgb = np.zeros((16, 32, 3), np.uint8)
  rgb[:, :16], rgb[:, 16:] = RED, BLUE
  data = encode(PIL.Image.fromarray(rgb).convert("CMYK"), "JPEG", quality=95)
  assert PIL.Image.open(io.BytesIO(data)).mode == "CMYK"
  assert np.abs(I.decode(data).astype(int) - rgb)[:, 2:-2].max() < 12


def test_16_bit_png_scaled_not_clipped():
  values = np.array([[0, 1000, 25700, 32768, 65535]], np.uint16)
  data = encode(PIL.Image.fromarray(values), "PNG")
  assert PIL.Image.open(io.BytesIO(data)).mode.startswith("I")
  np.testing.assert_array_equal(I.decode(data)[0, :, 0], [0, 4, 100, 128, 255])  # x / 257.


def test_webp_bmp_tiff():
  image = smooth_picture(24, 16)
  for fmt, kwargs in (("WEBP", {"lossless": True}), ("BMP", {}), ("TIFF", {})):
    np.testing.assert_array_equal(I.decode(encode(image, fmt, **kwargs)), image, err_msg=fmt)
  lossy = I.decode(encode(image, "WEBP", quality=90))
  assert np.abs(lossy.astype(int) - image).mean() < 4


def test_animated_gif_first_frame():
  frames = [PIL.Image.new("RGB", (8, 8), c) for c in (RED, BLUE, GREEN)]
  data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50)
  assert PIL.Image.open(io.BytesIO(data)).n_frames == 3
  np.testing.assert_array_equal(I.decode(data), np.full((8, 8, 3), RED, np.uint8))


# ----------------------------------------------------------------------------
# Bad input.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_files_are_bad(fmt, monkeypatch):
  rng = np.random.default_rng(0)
  data = encode((rng.random((120, 160, 3)) * 255).astype(np.uint8), fmt)
  cut = data[:len(data) // 2]
  assert PIL.ImageFile.LOAD_TRUNCATED_IMAGES is False
  for fn in (I.decode, lambda d: I.preprocess(d, I.Preprocess(32))):
    with pytest.raises(BadExample, match="does not decode"):
      fn(cut)
  # The danger guarded against: with the flag on, PIL would hand back a part-grey picture.
  monkeypatch.setattr(PIL.ImageFile, "LOAD_TRUNCATED_IMAGES", True)
  PIL.Image.open(io.BytesIO(cut)).load()
  with pytest.raises(RuntimeError, match="LOAD_TRUNCATED_IMAGES"):
    I.decode(cut)


@pytest.mark.parametrize("data,reason", [
    (b"", "empty"),
    (b"this is not an image at all " * 10, "not an image"),
    (b"\xff\xd8\xff\xe0" + b"\0" * 50, None),  # A JPEG's first bytes, then nothing usable.
    (png_header(0, 10), None),  # Zero width.
    ("a str", "expected encoded bytes"),
], ids=["empty", "text", "jpeg_start", "zero_width", "str"])
def test_non_images_are_bad(data, reason):
  with pytest.raises(BadExample, match=reason):
    I.decode(data)
  with pytest.raises(BadExample, match=reason):
    I.preprocess(data, I.Preprocess(16))


def test_max_pixels_refused_from_the_header(monkeypatch):
  data = png_header(9000, 9000)  # 81M pixels, below PIL's own limits; the data is 100 bytes.

  def no_decoding(self):
    raise AssertionError("pixels decoded")

  monkeypatch.setattr(PIL.ImageFile.ImageFile, "load", no_decoding)
  with pytest.raises(BadExample, match="9000x9000 = 81000000 pixels, more than max_pixels"):
    I.decode(data)
  with pytest.raises(BadExample, match="max_pixels=1000"):
    I.preprocess(encode(smooth_picture(100, 100), "PNG"), I.Preprocess(16, max_pixels=1000))
  with pytest.raises(BadExample, match="too large"):  # PIL's DecompressionBombError.
    I.decode(png_header(100_000, 100_000))


def test_small_max_pixels_accepts_images_within_it():
  data = encode(smooth_picture(100, 100), "PNG")
  assert I.decode(data, max_pixels=10_000).shape == (100, 100, 3)
  with pytest.raises(BadExample):
    I.decode(data, max_pixels=9_999)


# ----------------------------------------------------------------------------
# Geometry.
# ----------------------------------------------------------------------------


def test_squash_ignores_aspect():
  image = np.zeros((50, 100, 3), np.uint8)
  image[:, :50], image[:, 50:] = RED, BLUE
  out = as_uint8(I.preprocess(encode(image, "PNG"), I.Preprocess(20, resample="nearest")))
  np.testing.assert_array_equal(out[:, :10], np.full((20, 10, 3), RED, np.uint8))
  np.testing.assert_array_equal(out[:, 10:], np.full((20, 10, 3), BLUE, np.uint8))


@pytest.mark.parametrize("normalize", list(I.NORMALIZATIONS))
def test_pad_keeps_aspect_and_fills_with_zero(normalize):
  wide = encode(np.full((50, 100, 3), RED, np.uint8), "PNG")
  out = I.preprocess(wide, I.Preprocess(20, resize="pad", normalize=normalize))
  assert out.shape == (20, 20, 3)
  np.testing.assert_array_equal(out[:5], 0)  # 100x50 -> 20x10, centred: rows 5..14.
  np.testing.assert_array_equal(out[15:], 0)
  np.testing.assert_array_equal(as_uint8(out[5:15], normalize), np.full((10, 20, 3), RED))
  tall = encode(np.full((100, 50, 3), BLUE, np.uint8), "PNG")
  out = I.preprocess(tall, I.Preprocess(20, resize="pad", normalize=normalize, pad_fill=WHITE))
  np.testing.assert_array_equal(as_uint8(out[:, :5], normalize), np.full((20, 5, 3), WHITE))
  np.testing.assert_array_equal(as_uint8(out[:, 5:15], normalize), np.full((20, 10, 3), BLUE))


def test_crop_takes_the_centre():
  image = np.zeros((50, 100, 3), np.uint8)
  image[:, :25], image[:, 25:75], image[:, 75:] = GREEN, RED, BLUE
  data = encode(image, "PNG")
  for size in (50, 20):  # 50: the centre square itself, no resampling.
    out = as_uint8(I.preprocess(data, I.Preprocess(size, resize="crop")))
    # Edge pixels may see a bicubic kernel's reach past the box; the inside is pure red.
    np.testing.assert_array_equal(out[:, 3:-3], np.full((size, size - 6, 3), RED, np.uint8))
  odd = smooth_picture(64, 81)
  got = I.preprocess(encode(odd, "PNG"), I.Preprocess(64, resize="crop"))
  np.testing.assert_array_equal(as_uint8(got), odd[8:72])  # Whole pixels, not resampled.


def test_resample_filters_differ_and_are_antialiased():
  stripes = np.zeros((64, 64, 3), np.uint8)
  stripes[:, ::2] = 255  # 1-pixel stripes: a plain point sample aliases them to one colour.
  data = encode(stripes, "PNG")
  outs = {r: as_uint8(I.preprocess(data, I.Preprocess(16, resample=r))) for r in I.RESAMPLES}
  for r in ("bicubic", "bilinear"):
    # Averaged to grey (the outer columns see the image edge, clamped, so are left out).
    assert np.abs(outs[r][:, 1:-1].astype(int) - 128).max() <= 2, r
  assert set(np.unique(outs["nearest"])) <= {0, 255}


# ----------------------------------------------------------------------------
# Normalisation.
# ----------------------------------------------------------------------------


def test_normalization_values():
  pixel = encode(np.array([[[255, 0, 128]]], np.uint8), "PNG")
  expected = {  # The published constants, written out independently of the module.
      "minus_one_to_one": [1.0, -1.0, 128 / 127.5 - 1],
      "imagenet": [(1 - 0.485) / 0.229, (0 - 0.456) / 0.224, (128 / 255 - 0.406) / 0.225],
      "clip": [(1 - 0.48145466) / 0.26862954, (0 - 0.4578275) / 0.26130258,
               (128 / 255 - 0.40821073) / 0.27577711],
  }
  assert set(expected) == set(I.NORMALIZATIONS)
  for name, want in expected.items():
    got = I.preprocess(pixel, I.Preprocess(1, normalize=name))
    assert got.dtype == np.float32
    np.testing.assert_allclose(got[0, 0], want, rtol=1e-6, atol=1e-6, err_msg=name)


def test_to_uint8_inverts_every_value():
  values = np.stack([np.arange(256, dtype=np.uint8)] * 3, -1)
  for name in I.NORMALIZATIONS:
    np.testing.assert_array_equal(I.to_uint8(I.normalize(values, name), name), values)


def test_bad_settings_name_the_field():
  with pytest.raises(ValueError, match="Preprocess.normalize='siglip'.*minus_one_to_one"):
    I.Preprocess(16, normalize="siglip")
  with pytest.raises(ValueError, match="Preprocess.resize='letterbox'"):
    I.Preprocess(16, resize="letterbox")
  with pytest.raises(ValueError, match="Preprocess.random_resized_crop"):
    I.Preprocess(16, random_resized_crop=(0.5, 1.5))
  with pytest.raises(ValueError, match="Preprocess.size"):
    I.Preprocess(0)
  assert I.Preprocess(16, random_resized_crop=[0.3, 1]).crop_scale == (0.3, 1.0)
  assert I.Preprocess(16, random_resized_crop=True).crop_scale == I.DEFAULT_CROP_SCALE
  assert I.Preprocess(16).crop_scale is None


# ----------------------------------------------------------------------------
# Augmentation.
# ----------------------------------------------------------------------------


def coordinate_picture() -> bytes:
  """256x192 PNG whose red channel is the column and green the row."""
  y, x = np.mgrid[0:192, 0:256]
  return encode(np.stack([x, y, 0 * x], -1).astype(np.uint8), "PNG")


def test_random_resized_crop_boxes():
  data = coordinate_picture()
  p = I.Preprocess(64, resample="nearest", random_resized_crop=True)
  eval_out = I.preprocess(data, p)
  np.testing.assert_array_equal(eval_out, I.preprocess(data, I.Preprocess(64, resample="nearest")))
  outs = []
  for seed in range(20):
    out = I.preprocess(data, p, np.random.default_rng(seed))
    np.testing.assert_array_equal(out, I.preprocess(data, p, np.random.default_rng(seed)))
    outs.append(out)
    # The sampled columns and rows tell the crop box.
    cols, rows = as_uint8(out)[..., 0].astype(int), as_uint8(out)[..., 1].astype(int)
    assert np.all(np.diff(cols, axis=1) >= 0)  # Not flipped: hflip is off.
    w, h = cols.max() - cols.min() + 1, rows.max() - rows.min() + 1
    assert 0.5 - 0.04 <= w * h / (256 * 192) <= 1, seed
    assert 3 / 4 - 0.05 <= w / h <= 4 / 3 + 0.05, seed
  assert len({o.tobytes() for o in outs}) == len(outs)
  assert not any(np.array_equal(o, eval_out) for o in outs)


def test_random_box_fallback_for_extreme_aspect():
  rng = np.random.default_rng(0)
  x0, y0, x1, y1 = I._random_box(1000, 10, (0.9, 1.0), (3 / 4, 4 / 3), rng)
  assert (x1 - x0) / (y1 - y0) == pytest.approx(4 / 3)
  assert 0 <= x0 and x1 <= 1000 and 0 <= y0 and y1 <= 10


def test_hflip():
  data = encode(smooth_picture(40, 30), "PNG")
  eval_out = I.preprocess(data, I.Preprocess(16))
  for seed in range(10):  # Off by default, even at train time.
    np.testing.assert_array_equal(I.preprocess(data, I.Preprocess(16), np.random.default_rng(seed)),
                                  eval_out)
  flipped = []
  for seed in range(20):
    out = I.preprocess(data, I.Preprocess(16, hflip=True), np.random.default_rng(seed))
    flipped.append(np.array_equal(out, eval_out[:, ::-1]))
    assert flipped[-1] or np.array_equal(out, eval_out)
  assert 3 <= sum(flipped) <= 17
