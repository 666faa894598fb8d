"""Image files as model inputs: decode any common file, resize, normalise (numpy + PIL only).

  decode(data, max_pixels) -> uint8 [H, W, 3]: the displayed picture (EXIF orientation applied,
      transparency composited onto BACKGROUND_RGB, any PIL mode mapped to 8-bit RGB).
  preprocess(data, Preprocess(size=...), rng) -> float32 [size, size, 3]: decoded, resized per
      the config and normalised. rng=None is eval (deterministic); a Generator is training
      (random resized crop and horizontal flip when configured; nothing random otherwise).
  to_uint8(x, normalize) -> uint8 [..., 3]: the inverse of the normalisation, for display.

Anything that cannot be used raises `pipeline.BadExample` with a short reason: empty or
non-image bytes, a corrupt or truncated file (PIL's LOAD_TRUNCATED_IMAGES must stay False, or
a cut-off JPEG would decode with its missing part filled grey), a zero-size image, or one over
`max_pixels` (checked from the header, before any pixel is decoded).

Speed: preprocess never touches a full-resolution image in float. It works out which source
box becomes the output first, asks libjpeg to decode JPEGs at 1/2, 1/4 or 1/8 scale when that
box still has at least the output's pixels (`draft`), resizes in uint8 with PIL (antialiased),
applies the EXIF rotation to the small result and only then converts to float.
"""
import dataclasses
import io
import math

import numpy as np
import PIL.Image
import PIL.ImageFile

from gpt4v_jax.data.pipeline import BadExample

# Sizes above this are refused (a 64M-pixel RGB image is 192 MB decoded); 8000x8000 fits.
DEFAULT_MAX_PIXELS = 64_000_000
# Transparent pixels are composited onto white: most transparent web images (logos, icons,
# product shots, diagrams) are drawn to be seen on a white page, and black would hide black
# line art. Fixed, so a picture always maps to the same input.
BACKGROUND_RGB = (255, 255, 255)

# Formats we open. PIL knows more, but some of those run external programs (EPS calls
# Ghostscript) or are not pictures at all; a dataset of photos needs only these.
_WANTED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "AVIF")
PIL.Image.init()
FORMATS = tuple(f for f in _WANTED_FORMATS if f in PIL.Image.OPEN)  # AVIF needs libavif.

RESIZES = ("squash", "pad", "crop", "resize_crop")
RESAMPLES = {"bicubic": PIL.Image.Resampling.BICUBIC,
             "bilinear": PIL.Image.Resampling.BILINEAR,
             "nearest": PIL.Image.Resampling.NEAREST}
# (mean, std) per RGB channel, in units of the [0, 1] range: x -> (x / 255 - mean) / std.
# "minus_one_to_one" (mean = std = 0.5) is also SigLIP's and PaliGemma's; the model's inputs
# so far are this, computed as x / 127.5 - 1 (see `normalize`).
NORMALIZATIONS = {
    "minus_one_to_one": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "clip": ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
}
# random_resized_crop=True takes 50-100% of the area: captions and questions name objects, and
# Inception's 8% crops would often cut out what the text talks about.
DEFAULT_CROP_SCALE = (0.5, 1.0)
_CROP_TRIES = 10

# EXIF orientation -> the transpose that shows the stored pixels upright (PIL's exif_transpose
# table), and whether it swaps width and height.
_ORIENT = {2: PIL.Image.Transpose.FLIP_LEFT_RIGHT, 3: PIL.Image.Transpose.ROTATE_180,
           4: PIL.Image.Transpose.FLIP_TOP_BOTTOM, 5: PIL.Image.Transpose.TRANSPOSE,
           6: PIL.Image.Transpose.ROTATE_270, 7: PIL.Image.Transpose.TRANSVERSE,
           8: PIL.Image.Transpose.ROTATE_90}
_SWAPS = (5, 6, 7, 8)
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
_16BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


@dataclasses.dataclass(frozen=True)
class Preprocess:
  """How an image file becomes a float32 [size, size, 3] model input.

  size: output height and width.
  resize: "squash" (the whole image to size x size, aspect ignored), "pad" (the longer side to
    size, centred on a square of pad_fill), "crop" (the shorter side to size, centre crop) or
    "resize_crop" (the same in Hugging Face's CLIPImageProcessor's order, to its pixel: the
    shorter side resized to size and the longer to floor(size * longer / shorter), then the
    centre crop of that grid; "crop" cuts the square first, sampling slightly other points).
  resample: "bicubic", "bilinear" or "nearest" (antialiased when shrinking, as PIL does).
  normalize: a key of NORMALIZATIONS.
  pad_fill: RGB 0..255 of the padding for resize="pad"; None pads with exact zeros after
    normalisation, i.e. the normalisation's mean colour, so padding carries no signal (black
    would be a strong -1/-2 border the model has to learn to ignore).
  max_pixels: larger images are BadExample, refused from the header before decoding. (PIL's
    own limit, 2 * PIL.Image.MAX_IMAGE_PIXELS = 179M, also applies.)
  random_resized_crop: training only (an rng is given): instead of `resize`, a random box of
    area fraction in this range (True = DEFAULT_CROP_SCALE) and width/height ratio
    log-uniform in crop_aspect is squashed to size x size. False: off.
  hflip: training only: mirror half of the images. Off by default, as captions and questions
    say "left" and "right".
  jpeg_draft: decode JPEGs at 1/2, 1/4 or 1/8 scale when the output still gets at least as
    many source pixels (1.5-2x faster from 640x480 to 224, 6x from a 4000x3000 photo; the
    result differs from a full decode by about 40 dB PSNR). False: always decode in full,
    e.g. to match another implementation's preprocessing exactly.
  """
  size: int
  resize: str = "squash"
  resample: str = "bicubic"
  normalize: str = "minus_one_to_one"
  pad_fill: tuple[int, int, int] | None = None
  max_pixels: int = DEFAULT_MAX_PIXELS
  random_resized_crop: bool | tuple[float, float] = False
  crop_aspect: tuple[float, float] = (3 / 4, 4 / 3)
  hflip: bool = False
  jpeg_draft: bool = True

  def __post_init__(self):
    def bad(field, value, fix):
      raise ValueError(f"Preprocess.{field}={value!r}: {fix}.")

    if not isinstance(self.size, int) or self.size < 1:
      bad("size", self.size, "expected a positive int")
    if self.resize not in RESIZES:
      bad("resize", self.resize, f"expected one of {RESIZES}")
    if self.resample not in RESAMPLES:
      bad("resample", self.resample, f"expected one of {tuple(RESAMPLES)}")
    if self.normalize not in NORMALIZATIONS:
      hint = " (SigLIP's 0.5/0.5 is 'minus_one_to_one')" if "sig" in str(self.normalize) else ""
      bad("normalize", self.normalize, f"expected one of {tuple(NORMALIZATIONS)}{hint}")
    if self.pad_fill is not None:
      if len(self.pad_fill) != 3 or not all(0 <= int(c) <= 255 for c in self.pad_fill):
        bad("pad_fill", self.pad_fill, "expected None or 3 ints in 0..255 (R, G, B)")
      object.__setattr__(self, "pad_fill", tuple(int(c) for c in self.pad_fill))
    if not isinstance(self.max_pixels, int) or self.max_pixels < 1:
      bad("max_pixels", self.max_pixels, "expected a positive int")
    crop = self.random_resized_crop
    if not isinstance(crop, bool):
      if len(crop) != 2 or not 0 < crop[0] <= crop[1] <= 1:
        bad("random_resized_crop", crop, "expected a bool or (lo, hi) with 0 < lo <= hi <= 1")
      object.__setattr__(self, "random_resized_crop", tuple(float(c) for c in crop))
    if len(self.crop_aspect) != 2 or not 0 < self.crop_aspect[0] <= self.crop_aspect[1]:
      bad("crop_aspect", self.crop_aspect, "expected (lo, hi) with 0 < lo <= hi")
    object.__setattr__(self, "crop_aspect", tuple(float(c) for c in self.crop_aspect))

  @property
  def crop_scale(self) -> tuple[float, float] | None:
    """The random resized crop's area range, or None when it is off."""
    crop = self.random_resized_crop
    if crop is True:
      return DEFAULT_CROP_SCALE
    return crop or None


# ----------------------------------------------------------------------------
# Decoding.
# ----------------------------------------------------------------------------


def _open(data: bytes, max_pixels: int) -> PIL.Image.Image:
  """Reads the header only (size, mode, EXIF); the pixels are decoded later, on load."""
  if PIL.ImageFile.LOAD_TRUNCATED_IMAGES:
    raise RuntimeError("PIL.ImageFile.LOAD_TRUNCATED_IMAGES is True (something in this process "
                       "set it): truncated images would decode with grey filling their missing "
                       "part. Set it back to False.")
  if not isinstance(data, (bytes, bytearray, memoryview)):
    raise BadExample(f"image is {type(data).__name__}, expected encoded bytes")
  if not len(data):
    raise BadExample("empty image bytes")
  try:
    im = PIL.Image.open(io.BytesIO(data), formats=FORMATS)
  except PIL.Image.DecompressionBombError as e:
    raise BadExample(f"image too large ({e})") from None
  except PIL.UnidentifiedImageError:
    raise BadExample(f"not an image in a known format ({', '.join(FORMATS)})") from None
  except Exception as e:  # PIL raises OSError, SyntaxError, ValueError... for bad headers.
    raise BadExample(f"image header does not parse ({type(e).__name__}: {e})") from None
  w, h = im.size
  if w < 1 or h < 1:
    raise BadExample(f"image is {w}x{h} pixels")
  # PIL.Image.open already warned (DecompressionBombWarning) above its own 89M-pixel limit; the
  # default max_pixels is lower, so such images end here rather than decoding.
  if w * h > max_pixels:
    raise BadExample(f"image is {w}x{h} = {w * h} pixels, more than max_pixels={max_pixels} "
                     "(raise Preprocess.max_pixels to accept it)")
  return im


def _orientation(im: PIL.Image.Image) -> int:
  """EXIF orientation 1..8 (1: stored upright); 1 when absent, unknown or unreadable."""
  try:
    orientation = im.getexif().get(0x0112, 1)
  except Exception:  # A corrupt EXIF block is common in camera files; the pixels are fine.
    return 1
  return orientation if orientation in _ORIENT else 1


def _to_rgb(im: PIL.Image.Image) -> PIL.Image.Image:
  """Any decoded mode -> 8-bit "RGB" (transparency composited onto BACKGROUND_RGB)."""
  if im.mode == "RGB":
    return im
  if im.mode in _16BIT_MODES:
    # PIL's own convert clips 16-bit values at 255; scale the range instead: round(x / 257)
    # maps 0..65535 onto 0..255.
    x = np.asarray(im)
    if im.mode == "I" and x.size and (x.min() < 0 or x.max() > 65535):
      raise BadExample("32-bit integer image with values outside 0..65535 (unknown range)")
    x = ((x.astype(np.uint32) + 128) // 257).astype(np.uint8)
    return PIL.Image.fromarray(x, "L").convert("RGB")
  if im.mode == "F":
    raise BadExample("floating-point image (unknown value range)")
  if im.mode in _ALPHA_MODES or "transparency" in im.info:
    rgba = im.convert("RGBA")  # P, L and RGB carry transparency as a palette index or colour.
    background = PIL.Image.new("RGBA", rgba.size, BACKGROUND_RGB + (255,))
    return PIL.Image.alpha_composite(background, rgba).convert("RGB")
  return im.convert("RGB")  # 1, L, P, CMYK, YCbCr, ...


def _load_rgb(im: PIL.Image.Image) -> PIL.Image.Image:
  try:
    im.load()
    return _to_rgb(im)
  except BadExample:
    raise
  except PIL.Image.DecompressionBombError as e:
    raise BadExample(f"image too large ({e})") from None
  except Exception as e:  # Truncated or corrupt pixel data, an unconvertible mode, ...
    raise BadExample(f"image does not decode ({type(e).__name__}: {e})") from None


def decode(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
  """An encoded image file (JPEG, PNG, WebP, GIF's first frame, BMP, TIFF, AVIF) -> the
  picture as displayed, uint8 [H, W, 3] (H, W after the EXIF rotation). Raises BadExample."""
  im = _open(data, max_pixels)
  orientation = _orientation(im)
  rgb = _load_rgb(im)
  if orientation != 1:
    rgb = rgb.transpose(_ORIENT[orientation])
  return np.asarray(rgb)


# ----------------------------------------------------------------------------
# Geometry: which box of the displayed picture becomes which output size.
# ----------------------------------------------------------------------------

Box = tuple[float, float, float, float]  # (x0, y0, x1, y1), continuous pixel coordinates.


def _plan(w: int, h: int, p: Preprocess, rng: np.random.Generator | None
          ) -> tuple[Box, tuple[int, int]]:
  """Displayed size (w, h) -> (source box, (out_w, out_h)): the box is resized to out."""
  s = p.size
  if rng is not None and p.crop_scale is not None:
    return _random_box(w, h, p.crop_scale, p.crop_aspect, rng), (s, s)
  if p.resize == "squash":
    return (0, 0, w, h), (s, s)
  if p.resize == "pad":
    longer = max(w, h)
    return (0, 0, w, h), (max(1, round(w * s / longer)), max(1, round(h * s / longer)))
  if p.resize == "resize_crop":
    # The whole picture resized (`preprocess` then crops the centre). Resampling only the
    # crop's box would save the cropped side's work but not give transformers' pixels: PIL
    # takes the box in float32, which moves the taps enough to change pixels by 1-7 levels.
    short, long = min(w, h), max(w, h)
    resized_long = int(s * long / short)  # As transformers computes it (truncated).
    return (0, 0, w, h), ((s, resized_long) if w <= h else (resized_long, s))
  side = min(w, h)  # crop: whole source pixels, so an image already `size` wide is not resampled.
  x0, y0 = (w - side) // 2, (h - side) // 2
  return (x0, y0, x0 + side, y0 + side), (s, s)


def _random_box(w: int, h: int, scale: tuple[float, float], aspect: tuple[float, float],
                rng: np.random.Generator) -> Box:
  """Inception-style crop: area fraction uniform in `scale`, width/height log-uniform in
  `aspect`, position uniform; after _CROP_TRIES misfits, the largest centred box whose aspect
  is in range."""
  log_aspect = (math.log(aspect[0]), math.log(aspect[1]))
  for _ in range(_CROP_TRIES):
    area = w * h * rng.uniform(*scale)
    ratio = math.exp(rng.uniform(*log_aspect))
    cw, ch = math.sqrt(area * ratio), math.sqrt(area / ratio)
    if cw <= w and ch <= h:
      x0, y0 = rng.uniform(0, w - cw), rng.uniform(0, h - ch)
      return (x0, y0, x0 + cw, y0 + ch)
  ratio = min(max(w / h, aspect[0]), aspect[1])
  cw, ch = (h * ratio, h) if w / h > ratio else (w, w / ratio)
  x0, y0 = (w - cw) / 2, (h - ch) / 2
  return (x0, y0, x0 + cw, y0 + ch)


def _to_stored(box: Box, orientation: int, stored_w: int, stored_h: int) -> Box:
  """A box in displayed coordinates -> the same pixels' box in the file's stored layout."""
  x0, y0, x1, y1 = box
  W, H = stored_w, stored_h
  # Each maps displayed (x, y) to stored (X, Y): the inverse of the transpose in _ORIENT.
  to_stored = {
      1: lambda x, y: (x, y), 2: lambda x, y: (W - x, y), 3: lambda x, y: (W - x, H - y),
      4: lambda x, y: (x, H - y), 5: lambda x, y: (y, x), 6: lambda x, y: (y, H - x),
      7: lambda x, y: (W - y, H - x), 8: lambda x, y: (W - y, x),
  }[orientation]
  (a0, b0), (a1, b1) = to_stored(x0, y0), to_stored(x1, y1)
  return (min(a0, a1), min(b0, b1), max(a0, a1), max(b0, b1))


def _draft(im: PIL.Image.Image, box: Box, out: tuple[int, int]) -> float:
  """For a JPEG, decode at the smallest 1/2^k scale that keeps at least `out` pixels across
  `box` (libjpeg skips the work in the DCT); returns the scale taken (1 = full size)."""
  if im.format != "JPEG":
    return 1.0
  k = min((box[2] - box[0]) / out[0], (box[3] - box[1]) / out[1])
  s = next(s for s in (8, 4, 2, 1) if s <= k) if k >= 1 else 1
  if s == 1:
    return 1.0
  # PIL takes the largest 1/2^k not above min(W // request_w, H // request_h); for a request
  # of (W // s, H // s) both ratios are in [s, 2 s), so that is s.
  stored_w = im.size[0]
  drafted = im.draft(None, (im.size[0] // s, im.size[1] // s))
  return 1.0 if drafted is None else stored_w / drafted[1][2]  # drafted box: (0, 0, W/s, H/s).


def _resize(im: PIL.Image.Image, box: Box, out: tuple[int, int], resample: int
            ) -> PIL.Image.Image:
  """The `box` of `im` resampled to `out`; a plain crop when that is exact (no resampling)."""
  if all(float(c).is_integer() for c in box) and (box[2] - box[0], box[3] - box[1]) == out:
    box = tuple(int(c) for c in box)
    return im if box == (0, 0) + im.size else im.crop(box)
  return im.resize(out, resample, box=box)


# ----------------------------------------------------------------------------
# Normalisation.
# ----------------------------------------------------------------------------


def _stats(name: str) -> tuple[np.ndarray, np.ndarray]:
  if name not in NORMALIZATIONS:
    raise ValueError(f"normalize={name!r}: expected one of {tuple(NORMALIZATIONS)}.")
  mean, std = NORMALIZATIONS[name]
  return np.asarray(mean, np.float32), np.asarray(std, np.float32)


def normalize(image: np.ndarray, name: str) -> np.ndarray:
  """uint8 [..., 3] -> float32 [..., 3], (x / 255 - mean) / std per NORMALIZATIONS[name]."""
  mean, std = _stats(name)
  x = np.asarray(image, np.float32)
  if name == "minus_one_to_one":
    return x / 127.5 - 1.0  # Bit for bit what the model has been trained on.
  return (x / 255 - mean) / std


def to_uint8(x: np.ndarray, name: str) -> np.ndarray:
  """The inverse of `normalize`, for display: float [..., 3] -> uint8 [..., 3] (rounded,
  clipped to 0..255)."""
  mean, std = _stats(name)
  return np.clip(np.rint((np.asarray(x, np.float32) * std + mean) * 255), 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------
# The whole path.
# ----------------------------------------------------------------------------


def _from_array(image: np.ndarray, max_pixels: int) -> PIL.Image.Image:
  """An already decoded uint8 [H, W, 3] (as the shapes data source stores it) as an image."""
  if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
    raise BadExample(f"image array is {image.dtype} {image.shape}, expected uint8 [H, W, 3]")
  h, w = image.shape[:2]
  if w < 1 or h < 1 or w * h > max_pixels:
    raise BadExample(f"image array is {w}x{h} pixels (max_pixels={max_pixels})")
  return PIL.Image.fromarray(image)


def preprocess(data: bytes | np.ndarray, p: Preprocess,
               rng: np.random.Generator | None = None) -> np.ndarray:
  """An encoded image file (or a decoded uint8 [H, W, 3]) -> float32 [p.size, p.size, 3].

  rng None: eval, deterministic (p.resize). A Generator: training, p's random resized crop and
  horizontal flip when configured (drawn from rng, so the same rng state gives the same
  output); without them the result equals eval's. Raises BadExample for unusable input.
  """
  if isinstance(data, np.ndarray):
    im, orientation = _from_array(data, p.max_pixels), 1
  else:
    im = _open(data, p.max_pixels)
    orientation = _orientation(im)
  swaps = orientation in _SWAPS
  stored_w, stored_h = im.size
  box, out = _plan(*((stored_h, stored_w) if swaps else (stored_w, stored_h)), p, rng)
  # Resize in the file's stored layout, then turn only the small result upright.
  box = _to_stored(box, orientation, stored_w, stored_h)
  stored_out = (out[1], out[0]) if swaps else out
  scale = _draft(im, box, stored_out) if p.jpeg_draft else 1.0
  rgb = _resize(_load_rgb(im), tuple(c / scale for c in box), stored_out,
                RESAMPLES[p.resample])
  if orientation != 1:
    rgb = rgb.transpose(_ORIENT[orientation])
  image = np.asarray(rgb)
  if out != (p.size, p.size) and p.resize == "resize_crop":
    # transformers' center_crop: the offset rounds down, in the resized grid.
    top, left = (out[1] - p.size) // 2, (out[0] - p.size) // 2
    image, out = image[top:top + p.size, left:left + p.size], (p.size, p.size)
  if rng is not None and p.hflip and rng.random() < 0.5:
    image = image[:, ::-1]
  x = normalize(image, p.normalize)
  if out == (p.size, p.size):
    return x
  # resize="pad": centre the picture on a square of the fill.
  fill = 0.0 if p.pad_fill is None else normalize(np.asarray(p.pad_fill, np.uint8), p.normalize)
  square = np.empty((p.size, p.size, 3), np.float32)
  square[...] = fill
  top, left = (p.size - out[1]) // 2, (p.size - out[0]) // 2
  square[top:top + out[1], left:left + out[0]] = x
  return square
