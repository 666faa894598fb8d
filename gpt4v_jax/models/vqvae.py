"""VQ-VAE image tokenizer: 64x64 RGB images <-> a grid of discrete codes.

van den Oord et al. 2017, "Neural Discrete Representation Learning". A conv
encoder maps an image to an [h, w] grid of code_dim-vectors, each replaced by
its nearest codebook entry (its "code"); a conv decoder maps the quantised grid
back to pixels. The codes are the image tokens of text-to-image generation.

The quantiser's gradient is straight-through: the decoder's gradient at a
quantised vector is passed to the encoder output unchanged. The codebook
learns either by gradient on the codebook loss (codebook_update="loss") or as
an exponential moving average of the encoder outputs assigned to each code
(codebook_update="ema", Sec. A.1 of the paper), which needs no learning rate
and is more stable. EMA statistics and the EMA codebook live in the "vq_stats"
collection, outside "params", so the optimizer (and its weight decay) never
touches them; apply with mutable=["vq_stats"] in training to update them.

Shapes: B batch, H = W = 64 pixels, h = w = 64 / downsample codes per side,
K codebook size, D code_dim, N = B * h * w latent vectors.
"""
import math

import jax
import jax.numpy as jnp
import flax.linen as nn

_CONV = ("conv_height", "conv_width", "conv_in", "conv_out")
# New logical axis names, both unsharded: a codebook is small, and nearest-
# neighbour search wants all of it on every device.
_CODEBOOK = ("codebook", "code_dim")


def _conv(features, kernel, stride, dtype, name):
  """A biased convolution with logically named params."""
  return nn.Conv(
      features, (kernel, kernel), strides=(stride, stride), padding="SAME",
      dtype=dtype, param_dtype=jnp.float32,
      kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(),
                                               _CONV),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(),
                                             _CONV[-1:]),
      name=name)


def _depth_to_space(x):
  """[B, h, w, 4 * C] -> [B, 2h, 2w, C]: each pixel's channels become 2x2."""
  b, h, w, c = x.shape
  x = x.reshape(b, h, w, 2, 2, c // 4).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, 2 * h, 2 * w, c // 4)


def _num_halvings(downsample):
  """log2(downsample), checked to be a positive integer."""
  n = int(round(math.log2(downsample))) if downsample > 1 else 0
  if n < 1 or 2 ** n != downsample:
    raise ValueError(
        f"downsample must be a power of two >= 2, got {downsample}.")
  return n


def _width(channels, min_channels, k):
  """Conv width k halvings above the latent grid: channels / 2^k, floored."""
  return max(channels // 2 ** k, min_channels)


class ResBlock(nn.Module):
  """x + conv1x1(relu(conv3x3(relu(x)))), the original VQ-VAE block (kernel=1: both 1x1)."""
  dtype: jnp.dtype = jnp.float32
  kernel: int = 3

  @nn.compact
  def __call__(self, x):
    """[B, h, w, C] -> [B, h, w, C]."""
    channels = x.shape[-1]
    y = _conv(channels, self.kernel, 1, self.dtype, "conv3x3")(nn.relu(x))
    return x + _conv(channels, 1, 1, self.dtype, "conv1x1")(nn.relu(y))


class Encoder(nn.Module):
  """Images -> latent grid: stride-2 4x4 convs, a 3x3 conv, residual blocks.

  Channels double with each halving (from at least min_channels) and reach
  `channels` at the grid.

  local: each latent sees only its own downsample x downsample patch (2x2 stride-2
  convs, 1x1 convs at the grid), so equal patches get equal codes wherever they are.
  The default 4x4 and 3x3 kernels see neighbouring patches too, and their codes carry that
  context: on `shapes`, pure-background patches then spread over hundreds of codes, entropy
  a text-to-image decoder has to model and, when it samples a context-carrying code in the
  wrong context, that the VQ decoder draws as a stray fragment.
  """
  channels: int
  min_channels: int
  num_res_blocks: int
  downsample: int
  code_dim: int
  dtype: jnp.dtype = jnp.float32
  local: bool = False

  def _kernels(self) -> tuple[int, int]:
    """(the halvings' kernel, the grid convs' kernel)."""
    return (2, 1) if self.local else (4, 3)

  def forward_flops(self, image_size: int) -> float:
    """Conv FLOPs of one image's encoding (2 per multiply-add)."""
    n = _num_halvings(self.downsample)
    down, mid = self._kernels()
    flops, cin, grid = 0.0, 3, image_size
    for i in range(n):
      cout, grid = _width(self.channels, self.min_channels, n - 1 - i), grid // 2
      flops += 2 * grid**2 * down**2 * cin * cout
      cin = cout
    c = self.channels
    flops += 2 * grid**2 * mid**2 * cin * c
    flops += self.num_res_blocks * 2 * grid**2 * (mid**2 + 1) * c * c  # kxk and 1x1 convs.
    return flops + 2 * grid**2 * c * self.code_dim

  @nn.compact
  def __call__(self, images):
    """[B, 64, 64, 3] in [-1, 1] -> [B, h, w, D]."""
    n = _num_halvings(self.downsample)
    down, mid = self._kernels()
    x = images.astype(self.dtype)
    for i in range(n):
      x = _conv(_width(self.channels, self.min_channels, n - 1 - i), down, 2,
                self.dtype, f"down_{i}")(x)
      x = nn.relu(x)
    x = _conv(self.channels, mid, 1, self.dtype, "conv_mid")(x)
    for i in range(self.num_res_blocks):
      x = ResBlock(self.dtype, mid, name=f"res_{i}")(x)
    return _conv(self.code_dim, 1, 1, self.dtype, "to_code")(nn.relu(x))


class Decoder(nn.Module):
  """Quantised grid -> images, the encoder mirrored.

  Each upsampling is a 3x3 conv to 4x the channels, rearranged into a 2x
  larger grid (sub-pixel convolution, Shi et al. 2016): it can express any
  4x4 stride-2 transposed conv and runs ~5x faster on CPU, where XLA computes
  transposed convs on a zero-dilated input.
  """
  channels: int
  min_channels: int
  num_res_blocks: int
  downsample: int
  dtype: jnp.dtype = jnp.float32

  def forward_flops(self, image_size: int, code_dim: int) -> float:
    """Conv FLOPs of one image's decoding (2 per multiply-add)."""
    n = _num_halvings(self.downsample)
    grid, c = image_size // self.downsample, self.channels
    flops = 2 * grid**2 * 9 * code_dim * c + self.num_res_blocks * 2 * grid**2 * 10 * c * c
    cin = c
    for i in range(n):
      cout = _width(self.channels, self.min_channels, i + 1)
      flops += 2 * grid**2 * 9 * cin * 4 * cout
      cin, grid = cout, grid * 2
    return flops + 2 * grid**2 * 9 * cin * 3

  @nn.compact
  def __call__(self, quantized):
    """[B, h, w, D] -> [B, 64, 64, 3], unbounded (trained towards [-1, 1])."""
    n = _num_halvings(self.downsample)
    x = _conv(self.channels, 3, 1, self.dtype, "from_code")(
        quantized.astype(self.dtype))
    for i in range(self.num_res_blocks):
      x = ResBlock(self.dtype, name=f"res_{i}")(x)
    for i in range(n):
      x = nn.relu(x)
      x = _conv(4 * _width(self.channels, self.min_channels, i + 1), 3, 1,
                self.dtype, f"up_{i}")(x)
      x = _depth_to_space(x)
    x = _conv(3, 3, 1, self.dtype, "to_rgb")(nn.relu(x))
    return x.astype(jnp.float32)


# ----------------------------------------------------------------------------
# Quantisation, as pure functions of arrays (tested against numpy).
# ----------------------------------------------------------------------------


def nearest_codes(latents, codebook):
  """Nearest codebook entry (squared Euclidean distance) of each latent.

  Args:
    latents: [N, D] float32.
    codebook: [K, D] float32.

  Returns:
    (codes [N] int32, squared distance to the chosen entry [N]).
  """
  # |z - e|^2 = |z|^2 - 2 z.e + |e|^2, without materialising [N, K, D].
  dist = (jnp.sum(latents ** 2, axis=1, keepdims=True)
          - 2 * latents @ codebook.T
          + jnp.sum(codebook ** 2, axis=1)[None, :])
  codes = jnp.argmin(dist, axis=1).astype(jnp.int32)
  return codes, jnp.take_along_axis(dist, codes[:, None], axis=1)[:, 0]


def straight_through(latents, quantized):
  """quantized in the forward pass; identity gradient to latents.

  Args:
    latents, quantized: [..., D] alike.
  """
  return latents + jax.lax.stop_gradient(quantized - latents)


def code_statistics(codes, num_codes):
  """Perplexity and usage of the codes of one batch.

  Args:
    codes: int [...] in [0, num_codes).

  Returns:
    (counts [K] float32, perplexity: exp(entropy) of the batch's code
     distribution, from 1 (one code) to K (all equally often),
     usage: the fraction of the K codes used at least once).
  """
  counts = jnp.zeros(num_codes, jnp.float32).at[codes.reshape(-1)].add(1.0)
  probs = counts / codes.size
  entropy = -jnp.sum(jnp.where(probs > 0, probs * jnp.log(probs), 0.0))
  return counts, jnp.exp(entropy), jnp.mean(counts > 0)


def ema_update(ema_count, ema_sum, latents, codes, decay, epsilon):
  """One EMA step of the codebook (van den Oord et al. 2017, Sec. A.1).

    n_k <- decay * n_k + (1 - decay) * #{i : code_i = k}
    m_k <- decay * m_k + (1 - decay) * sum_{i : code_i = k} z_i
    e_k <- m_k / n~_k,  n~_k = (n_k + eps) / (sum_j n_j + K eps) * sum_j n_j

  n~ is n with Laplace smoothing, so an unused code never divides by zero.

  Args:
    ema_count: [K] float32, n.
    ema_sum: [K, D] float32, m.
    latents: [N, D] float32 encoder outputs z.
    codes: [N] int32, their nearest codes.
    decay, epsilon: floats.

  Returns:
    (new ema_count [K], new ema_sum [K, D], new codebook [K, D]).
  """
  num_codes = ema_count.shape[0]
  onehot = jax.nn.one_hot(codes, num_codes, dtype=jnp.float32)
  ema_count = decay * ema_count + (1 - decay) * onehot.sum(axis=0)
  ema_sum = decay * ema_sum + (1 - decay) * onehot.T @ latents
  total = ema_count.sum()
  smoothed = (ema_count + epsilon) / (total + num_codes * epsilon) * total
  return ema_count, ema_sum, ema_sum / smoothed[:, None]


def restart_dead_codes(ema_count, ema_sum, codebook, latents, distances,
                       threshold):
  """Moves codes whose EMA count fell below `threshold` onto batch latents.

  A code the encoder never picks gets no EMA updates and is wasted. Dead
  codes take the latents worst served by the codebook (largest distance to
  their code), the i-th dead code the i-th worst (cycling when there are more
  dead codes than latents); each restarts with a count of 1 at that latent.

  Args:
    ema_count: [K]; ema_sum, codebook: [K, D]; latents: [N, D];
    distances: [N], each latent's squared distance to its code.
    threshold: float.

  Returns:
    (ema_count, ema_sum, codebook), with the dead rows replaced.
  """
  dead = ema_count < threshold
  worst_first = jnp.argsort(-distances)
  rank = jnp.cumsum(dead) - 1
  new_rows = latents[worst_first[rank % latents.shape[0]]]
  ema_count = jnp.where(dead, 1.0, ema_count)
  ema_sum = jnp.where(dead[:, None], new_rows, ema_sum)
  codebook = jnp.where(dead[:, None], new_rows, codebook)
  return ema_count, ema_sum, codebook


class VectorQuantizer(nn.Module):
  """Nearest-neighbour quantisation onto a learned codebook.

  Attributes:
    num_codes: K.
    code_dim: D.
    codebook_update: "ema" (the codebook is an EMA of assigned latents, in
      "vq_stats") or "loss" (a param, learned from the codebook loss).
    decay, epsilon: EMA decay and Laplace smoothing ("ema" only).
    dead_code_threshold: with "ema", codes whose EMA count (assignments per
      batch, smoothed) drops below this restart at batch latents; 0 = never.
  """
  num_codes: int
  code_dim: int
  codebook_update: str = "ema"
  decay: float = 0.99
  epsilon: float = 1e-5
  dead_code_threshold: float = 0.0

  def setup(self):
    # |e| ~ 1: of the order of the initial encoder outputs, so the first
    # assignments spread over many codes.
    init = nn.with_logical_partitioning(
        nn.initializers.variance_scaling(1.0, "fan_out", "uniform"), _CODEBOOK)
    shape = (self.num_codes, self.code_dim)
    if self.codebook_update == "loss":
      if self.dead_code_threshold:
        raise ValueError("Dead-code restarts need codebook_update='ema'.")
      self.codebook = self.param("codebook", init, shape)
    elif self.codebook_update == "ema":
      # Lambdas: the init RNG is only drawn when the variable is created.
      codebook = self.variable("vq_stats", "codebook",
                               lambda: init(self.make_rng("params"), shape))
      self.ema_codebook = codebook
      # n = 1, m = e: the codebook starts as initialised, and a code stays put
      # while unused (n and m decay alike).
      self.ema_count = self.variable(
          "vq_stats", "ema_count",
          nn.with_logical_partitioning(lambda: jnp.ones(shape[:1]),
                                       _CODEBOOK[:1]))
      self.ema_sum = self.variable(
          "vq_stats", "ema_sum",
          nn.with_logical_partitioning(lambda: codebook.value, _CODEBOOK))
    else:
      raise ValueError(f"codebook_update must be 'ema' or 'loss', got "
                       f"{self.codebook_update!r}.")

  def _codebook(self):
    if self.codebook_update == "loss":
      return self.codebook
    return self.ema_codebook.value

  def __call__(self, latents, train):
    """Quantises a latent grid.

    Args:
      latents: [B, h, w, D].
      train: update the EMA codebook (needs mutable=["vq_stats"]).

    Returns:
      (quantized [B, h, w, D] with a straight-through gradient, aux dict:
       codes [B, h, w] int32; commitment_loss: mean |z - sg(e)|^2, trains
       the encoder to commit to its codes; codebook_loss: mean |sg(z) - e|^2
       with "loss", 0 with "ema" (the EMA does its job); perplexity, usage:
       see `code_statistics`).
    """
    codebook = self._codebook()
    flat = latents.reshape(-1, self.code_dim).astype(jnp.float32)
    codes, distances = nearest_codes(flat, codebook)
    quantized = codebook[codes]
    commitment = jnp.mean((flat - jax.lax.stop_gradient(quantized)) ** 2)
    if self.codebook_update == "loss":
      codebook_loss = jnp.mean((jax.lax.stop_gradient(flat) - quantized) ** 2)
    else:
      codebook_loss = jnp.zeros((), jnp.float32)
      # Not at init: the initial codebook should be the initializer's.
      if train and not self.is_initializing():
        stats = ema_update(self.ema_count.value, self.ema_sum.value,
                           jax.lax.stop_gradient(flat), codes, self.decay,
                           self.epsilon)
        if self.dead_code_threshold:
          stats = restart_dead_codes(*stats, jax.lax.stop_gradient(flat),
                                     distances, self.dead_code_threshold)
        self.ema_count.value, self.ema_sum.value, self.ema_codebook.value = (
            stats)
    _, perplexity, usage = code_statistics(codes, self.num_codes)
    aux = {"codes": codes.reshape(latents.shape[:-1]),
           "commitment_loss": commitment, "codebook_loss": codebook_loss,
           "perplexity": perplexity, "usage": usage}
    return straight_through(flat, quantized).reshape(latents.shape), aux

  def lookup(self, codes):
    """[...] int codes -> [..., D] codebook entries."""
    return self._codebook()[codes]


class VQVAE(nn.Module):
  """Encoder, vector quantiser and decoder for 64x64 RGB images.

  Attributes:
    channels: conv width at the latent grid, halved per upsampling layer...
    min_channels: ...down to this width at most.
    num_res_blocks: residual blocks in the encoder and in the decoder.
    downsample: 8 -> 8x8 codes per image, 4 -> 16x16.
    num_codes, code_dim, codebook_update, decay, epsilon,
      dead_code_threshold: see `VectorQuantizer`.
    dtype: conv compute dtype; params, quantisation and outputs are float32.
    local_encoder: codes of patches alone, not of their neighbourhood (`Encoder.local`).
  """
  channels: int = 64
  min_channels: int = 8
  num_res_blocks: int = 2
  downsample: int = 8
  num_codes: int = 512
  code_dim: int = 64
  codebook_update: str = "ema"
  decay: float = 0.99
  epsilon: float = 1e-5
  dead_code_threshold: float = 0.0
  dtype: jnp.dtype = jnp.float32
  local_encoder: bool = False  # See Encoder.local.

  def setup(self):
    self.encoder = Encoder(self.channels, self.min_channels,
                           self.num_res_blocks, self.downsample, self.code_dim,
                           self.dtype, self.local_encoder)
    self.quantizer = VectorQuantizer(
        self.num_codes, self.code_dim, self.codebook_update, self.decay,
        self.epsilon, self.dead_code_threshold)
    self.decoder = Decoder(self.channels, self.min_channels,
                           self.num_res_blocks, self.downsample, self.dtype)

  def __call__(self, images, train=False):
    """[B, 64, 64, 3] in [-1, 1] -> (reconstruction [B, 64, 64, 3], aux).

    aux: see `VectorQuantizer.__call__`. With train and "ema", apply with
    mutable=["vq_stats"] to get the updated codebook.
    """
    quantized, aux = self.quantizer(self.encoder(images), train)
    return self.decoder(quantized), aux

  def forward_flops(self, image_size: int = 64, decode: bool = True) -> float:
    """Conv and matmul FLOPs of one image's encoding, nearest-code search, and (with
    `decode`) decoding. Unbound: builds its parts anew to count them."""
    encoder = Encoder(self.channels, self.min_channels, self.num_res_blocks, self.downsample,
                      self.code_dim, local=self.local_encoder, parent=None)
    grid = image_size // self.downsample
    flops = encoder.forward_flops(image_size) + 2 * grid**2 * self.code_dim * self.num_codes
    if decode:
      decoder = Decoder(self.channels, self.min_channels, self.num_res_blocks,
                        self.downsample, parent=None)
      flops += decoder.forward_flops(image_size, self.code_dim)
    return flops

  def encode(self, images):
    """[B, 64, 64, 3] in [-1, 1] -> codes [B, h, w] int32."""
    _, aux = self.quantizer(self.encoder(images), train=False)
    return aux["codes"]

  def decode_codes(self, codes):
    """Codes [B, h, w] int -> images [B, 64, 64, 3] (about [-1, 1])."""
    return self.decoder(self.quantizer.lookup(codes))


def vqvae_loss(model, params, stats, images, beta=0.25, train=True):
  """Reconstruction MSE + beta * commitment loss + codebook loss.

  For a gradient step:
    def loss_fn(params):
      loss, metrics, new_stats = vqvae_loss(model, params, stats, images)
      return loss, (metrics, new_stats)
    (loss, (metrics, new_stats)), grads = jax.value_and_grad(
        loss_fn, has_aux=True)(params)

  Args:
    model: a VQVAE.
    params: its "params".
    stats: its "vq_stats" ({} with codebook_update="loss").
    images: [B, 64, 64, 3] float in [-1, 1].
    beta: commitment loss weight.
    train: update the EMA codebook.

  Returns:
    (loss, metrics: reconstruction_mse, psnr (dB, of that MSE over the
     [-1, 1] range), commitment_loss, codebook_loss, perplexity,
     codebook_usage (distinct codes in the batch / K), new_stats (`stats`
     after this batch's EMA update; unchanged unless train and "ema")).
  """
  variables = {"params": params, "vq_stats": stats} if stats else {
      "params": params}
  (reconstruction, aux), updates = model.apply(
      variables, images, train=train, mutable=["vq_stats"])
  mse = jnp.mean((reconstruction - images) ** 2)
  loss = mse + beta * aux["commitment_loss"] + aux["codebook_loss"]
  metrics = {
      "reconstruction_mse": mse,
      # Peak-to-peak 2 for images in [-1, 1].
      "psnr": 10 * jnp.log10(4.0 / mse),
      "commitment_loss": aux["commitment_loss"],
      "codebook_loss": aux["codebook_loss"],
      "perplexity": aux["perplexity"],
      "codebook_usage": aux["usage"],
  }
  return loss, metrics, updates.get("vq_stats", stats)
