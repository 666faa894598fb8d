"""GPT-4V-style model: ViT -> Projector -> decoder-only LM.

The decoder sees one sequence, [image tokens, text tokens]. Image tokens are
always valid and part of the fully visible prefix; text tokens follow with
their own autoregressive flags (see `fusion.prefix_lm_mask`). Padding is on
the right, so RoPE positions are simply 0..seq-1.

Inference uses an explicit KV cache with max_len slots:

  slots [0, n)              image tokens
  slots [n, n + p)          prompt tokens (right-padded; padded slots stay
                            invisible)
  slot  n + p + step        token fed at decode step `step`, shared by the
                            whole batch

while each example's RoPE position continues from its own valid prefix
length, so decoding equals the full forward pass of the unpadded sequence.
"""
import jax.numpy as jnp
import flax.linen as nn

from gpt4v_jax.models.contrastive import ContrastiveHead
from gpt4v_jax.models.decoder import Decoder
from gpt4v_jax.models.fusion import (IMAGE_POSITIONS, PerceiverResampler, Projector,
                                     prefix_lm_mask, sincos_2d)
from gpt4v_jax.models.vit import ViT, vit_variant
from gpt4v_jax.pretrained import compose


class GPT4V(nn.Module):
  """Vision encoder + projector + decoder.

  Attributes:
    vit: unbound `ViT`; its settings (dtype, remat, ...) are its own.
    decoder: unbound `Decoder`.
    projector_kind: "linear" or "mlp", see `Projector`. Runs in the decoder's
      dtype.
    projector_merge: vision tokens merged per side into one decoder token,
      see `Projector`.
    fusion: "prefix" (PaliGemma/LLaVA: the image tokens lead the decoder's sequence) or
      "cross_attention" (Flamingo: the sequence is text only, and the decoder's
      `GatedCrossAttention` blocks attend to the image tokens; the decoder must have
      cross_attention_every > 0).
    resampler: optional unbound `PerceiverResampler` after the projector; its latents
      replace the image tokens.
    projector_activation: the "mlp" projector's activation (see `Projector`).
    causal_prefix: False (PaliGemma's prefix-LM: image and prompt tokens see each other);
      True: every token attends causally, the image's and the prompt's too (LLaVA).
    contrastive: optional unbound `ContrastiveHead`: image and text embeddings for the
      contrastive objective (`contrastive_outputs`), the decoder serving as the text tower.
    image_positions: "none" (image tokens carry what the encoder leaves of its own position
      embedding; their decoder positions are 1D RoPE over the raster order) or "sincos2d"
      (`fusion.sincos_2d` of the projector's token grid is added to its output, before any
      resampler).
  """
  vit: ViT
  decoder: Decoder
  projector_kind: str = "mlp"
  projector_merge: int = 1
  fusion: str = "prefix"
  resampler: PerceiverResampler | None = None
  projector_activation: str = "gelu_tanh"
  causal_prefix: bool = False
  contrastive: ContrastiveHead | None = None
  image_positions: str = "none"

  def __post_init__(self):
    if self.image_positions not in IMAGE_POSITIONS:
      raise ValueError(f"config.model.image_positions={self.image_positions!r}: expected one "
                       f"of {IMAGE_POSITIONS}.")
    if self.fusion not in ("prefix", "cross_attention"):
      raise ValueError(f"config.model.fusion={self.fusion!r}: expected 'prefix' or "
                       "'cross_attention'.")
    if (self.fusion == "cross_attention") != (self.decoder.cross_attention_every > 0):
      raise ValueError(f"fusion={self.fusion!r} needs a decoder with cross-attention blocks "
                       "exactly when it is 'cross_attention'.")
    super().__post_init__()

  def setup(self):
    self.projector = Projector(self.projector_kind, self.decoder.width,
                               self.projector_merge, self.decoder.dtype,
                               self.projector_activation)

  @property
  def num_vision_tokens(self):
    """Image tokens out of the projector (and resampler)."""
    if self.resampler is not None:
      return self.resampler.num_latents
    return self.vit.num_patches // self.projector_merge ** 2

  @property
  def num_image_tokens(self):
    """Image tokens in the decoder's sequence: all of them with prefix fusion, none with
    cross-attention."""
    return self.num_vision_tokens if self.fusion == "prefix" else 0

  def image_tokens_in_sequence(self, images) -> int:
    """How many decoder slots the images take: none without images (`images` None)."""
    return 0 if images is None else self.num_image_tokens

  def forward_flops(self, text_len: int, causal_halving: bool = True,
                    images: bool = True) -> dict[str, float]:
    """Matmul FLOPs of one example's teacher-forced forward pass per top-level param tree:
    {"vit", "projector", "decoder" (blocks over image and text tokens, the text's logits)};
    images=False: the pass without images (`__call__(None, ...)`), the decoder's alone."""
    if not images:  # Cross-attention then attends to one hidden token.
      return dict(decoder=self.decoder.forward_flops(
          text_len, text_len, causal_halving, context_len=int(self.fusion != "prefix")))
    projector = Projector(self.projector_kind, self.decoder.width, self.projector_merge,
                          parent=None)
    flops = dict(vit=self.vit.forward_flops(),
                 projector=projector.forward_flops(self.vit.num_patches, self.vit.width))
    if self.resampler is not None:
      flops["resampler"] = self.resampler.forward_flops(
          self.vit.num_patches // self.projector_merge ** 2, self.decoder.width)
    return dict(**flops, decoder=self.decoder.forward_flops(
                    self.num_image_tokens + text_len, text_len, causal_halving,
                    context_len=self.num_vision_tokens - self.num_image_tokens))

  def encode_images(self, images, deterministic=True):
    """[batch, H, W, 3] normalised -> [batch, num_vision_tokens, width]."""
    tokens = self.vit(images, deterministic)
    if self.vit.class_token:  # The patch tokens only (LLaVA's "default" feature selection).
      tokens = tokens[:, 1:]
    tokens = self.projector(tokens)
    if self.image_positions == "sincos2d":
      side = round(tokens.shape[1] ** 0.5)
      tokens = tokens + sincos_2d(side, tokens.shape[-1]).astype(tokens.dtype)
    return tokens if self.resampler is None else self.resampler(tokens)

  def __call__(self, images, text, ar_mask, input_mask, deterministic=True,
               image_mask=None):
    """Teacher-forced forward pass.

    Args:
      images: [batch, H, W, 3] float in [-1, 1], or None: no example has an image (a batch
        of text-to-image rows only). The sequence is then the text alone, which with RoPE
        (relative positions) equals hiding every image, up to rounding, without running
        the encoder.
      text: [batch, t] int32 tokens, right-padded.
      ar_mask: [batch, t] int/bool; 0 = prefix (prompt), 1 = causal (target).
      input_mask: [batch, t] bool, False at padding.
      deterministic: disables dropout.
      image_mask: optional [batch] bool; False hides that example's image
        tokens from every query (text-to-image rows, where the image is the
        answer). They keep their slots and positions, so text positions do
        not depend on it. Default: all visible.

    Returns:
      [batch, t, vocab] float32 logits at the text positions; logits at
      position i predict text token i + 1.
    """
    b, t = text.shape
    n = self.image_tokens_in_sequence(images)
    image_tokens, image_mask = self._encode_or_hide(images, b, image_mask, deterministic)
    x, context = self._fuse(image_tokens, self.decoder.embed(text), image_mask)
    ar_mask = jnp.concatenate(
        [jnp.zeros((b, n), jnp.int32), ar_mask.astype(jnp.int32)], axis=1)
    if self.causal_prefix:
      ar_mask = jnp.ones_like(ar_mask)
    input_mask = jnp.concatenate(
        [_image_valid(image_mask, b, n), input_mask.astype(bool)], axis=1)
    positions = jnp.broadcast_to(jnp.arange(n + t), (b, n + t))
    logits, _ = self.decoder(x, positions,
                             prefix_lm_mask(ar_mask, input_mask),
                             deterministic=deterministic, **context)
    if self.contrastive is not None and self.is_initializing():
      # A mixture initialises through this pass: the head's params are created here too.
      self.contrastive(jnp.zeros((1, self.vit.num_tokens, self.vit.width)),
                       jnp.zeros((1, 1, self.decoder.width)), jnp.ones((1, 1), bool))
    return logits[:, n:]

  def embed_images(self, images, deterministic=True):
    """[batch, H, W, 3] normalised -> the contrastive head's L2-normalised image embeddings
    [batch, embed_dim] float32."""
    return self.contrastive.embed_image(self.vit(images, deterministic))

  def embed_texts(self, text, input_mask, deterministic=True):
    """The decoder as a text tower, without the image: [batch, t] int32 right-padded ids and
    input_mask [batch, t] bool -> L2-normalised [batch, embed_dim] float32. The text reads
    causally when the head pools its last token (which then has seen the whole text), and
    bidirectionally when it pools the mean."""
    b, t = text.shape
    causal = jnp.full((b, t), int(self.contrastive.text_pool == "last"), jnp.int32)
    x, context = self._fuse(None, self.decoder.embed(text), jnp.zeros((b,), bool))
    states, _ = self.decoder.hidden_states(
        x, jnp.broadcast_to(jnp.arange(t), (b, t)), prefix_lm_mask(causal, input_mask),
        deterministic=deterministic, **context)
    return self.contrastive.embed_text(states, input_mask)

  def contrastive_outputs(self, images, text, input_mask, deterministic=True):
    """(image embeddings [batch, embed_dim], text embeddings [batch, embed_dim], logit scale
    [], logit bias []) of `contrastive.contrastive_loss`."""
    return (self.embed_images(images, deterministic),
            self.embed_texts(text, input_mask, deterministic),
            *self.contrastive.logit_scale_and_bias())

  def _encode_or_hide(self, images, batch, image_mask, deterministic):
    """(image tokens, image_mask): `encode_images` and the given mask, or without images
    (None) no tokens and every image hidden."""
    if images is None:
      return None, jnp.zeros((batch,), bool)
    return self.encode_images(images, deterministic), image_mask

  def _fuse(self, image_tokens, text_embeds, image_mask):
    """(decoder input, decoder keyword args): with prefix fusion the image tokens
    [batch, n, width] lead the text [batch, t, width] in one sequence; with cross-attention
    the sequence is the text and they are the `context` (hidden where image_mask is False).
    image_tokens None: no images; the sequence is the text (and the context one hidden
    token).
    """
    b = text_embeds.shape[0]
    if self.fusion == "prefix":
      if image_tokens is None:
        return text_embeds, {}
      return jnp.concatenate([image_tokens, text_embeds], axis=1), {}
    if image_tokens is None:
      image_tokens = jnp.zeros((b, 1, text_embeds.shape[-1]), text_embeds.dtype)
    visible = jnp.ones((b,), bool) if image_mask is None else image_mask.astype(bool)
    return text_embeds, dict(context=image_tokens, context_visible=visible)

  def prefill(self, images, prompt, prompt_mask, max_len, image_mask=None):
    """Encodes [image tokens, prompt] into a fresh cache of max_len slots.

    Args:
      images: [batch, H, W, 3], or None for no images (see `__call__`).
      prompt: [batch, p] int32, right-padded.
      prompt_mask: [batch, p] bool, False at padding.
      max_len: static int >= num_image_tokens + p; slots for decoded tokens.
      image_mask: optional [batch] bool, see `__call__`.

    Returns:
      (logits [batch, vocab] float32 at each example's last valid prefix
       token, cache, state), where state = dict(
         index: scalar int32, next cache slot (shared by the batch),
         positions: [batch] int32, next RoPE position of each example,
         visible: [batch, max_len] bool, cache slots holding valid tokens,
         codes: [batch] int32, image-code tokens so far (see `Decoder.code_index`),
         and with cross-attention fusion context and context_visible, see `_fuse`).
    """
    b, p = prompt.shape
    n = self.image_tokens_in_sequence(images)
    image_tokens, image_mask = self._encode_or_hide(images, b, image_mask, True)
    if max_len < n + p:
      raise ValueError(f"max_len={max_len} < {n} image tokens + {p} prompt "
                       "tokens.")
    x, context = self._fuse(image_tokens, self.decoder.embed(prompt), image_mask)
    valid = jnp.concatenate(
        [_image_valid(image_mask, b, n), prompt_mask.astype(bool)], axis=1)
    # The whole prefix is ar=0 (full attention among valid tokens; ar=1, causal, with
    # causal_prefix). [b, n + p, n + p]: the
    # cache is fresh, so the prefix attends among itself, not over all max_len slots.
    mask = prefix_lm_mask(jnp.full((b, n + p), int(self.causal_prefix), jnp.int32), valid)
    positions = jnp.broadcast_to(jnp.arange(n + p), (b, n + p))
    logits, cache = self.decoder(x, positions, mask,
                                 cache=self.decoder.init_cache(b, max_len),
                                 cache_index=jnp.int32(0), **context)
    # Image slots count even when hidden, as in `__call__`.
    lengths = n + jnp.sum(prompt_mask, axis=1, dtype=jnp.int32)
    # With cross-attention the image tokens ride along in the state: each step's
    # cross-attention recomputes their keys and values (n tokens: cheap next to the cache).
    state = dict(index=jnp.int32(n + p),
                 positions=lengths,
                 visible=jnp.pad(valid, ((0, 0), (0, max_len - n - p))),
                 codes=jnp.sum((self.decoder.code_index(prompt) >= 0) & prompt_mask, axis=1,
                             dtype=jnp.int32),
                 **context)
    return logits[jnp.arange(b), lengths - 1], cache, state

  def decode_step(self, token, cache, state):
    """Feeds one token per example.

    Args:
      token: [batch] int32, the token that follows the current sequence.
      cache, state: from `prefill` or the previous `decode_step`.

    Returns:
      (logits [batch, vocab] float32 for the next token, cache, state).
    """
    index = state["index"]
    slots = jnp.arange(state["visible"].shape[1])
    visible = state["visible"] | (slots == index)[None, :]
    context = {k: state[k] for k in ("context", "context_visible") if k in state}
    token = token[:, None]
    logits, cache = self.decoder(self.decoder.embed(token, state["codes"]),
                                 state["positions"][:, None],
                                 visible[:, None, :],
                                 cache=cache, cache_index=index, **context)
    codes = state["codes"] + (self.decoder.code_index(token)[:, 0] >= 0)
    state = dict(index=index + 1, positions=state["positions"] + 1,
                 visible=visible, codes=codes, **context)
    return logits[:, 0], cache, state


def _image_valid(image_mask, batch, n):
  """[batch, n] bool: which image-token slots are visible."""
  if image_mask is None:
    return jnp.ones((batch, n), bool)
  return jnp.broadcast_to(image_mask.astype(bool)[:, None], (batch, n))


def build_model(cfg, code_ids=(0, 0), num_code_positions=0, *, image_size: int = 64):
  """Builds a `GPT4V` from `config.model` (see configs/shapes_caption.py) for square images
  of `image_size` pixels (config.data.image_size); code_ids and num_code_positions: see
  `Decoder` (text-to-image objectives set them). The contrastive objective adds its head
  (`ContrastiveObjective.attach_head`)."""
  dtype = jnp.dtype(cfg.dtype)
  ours = dict(remat=cfg.remat, scan_layers=cfg.scan_layers, dtype=dtype, dropout=cfg.dropout)
  if cfg.get("vision_checkpoint"):
    vit = compose.vision_tower(cfg.vision_checkpoint, **ours)
    if vit.image_size != image_size:
      raise ValueError(f"config.model.vision_checkpoint={cfg.vision_checkpoint!r} takes "
                       f"{vit.image_size}x{vit.image_size} images; set "
                       f"--config.data.image_size={vit.image_size} (it is {image_size}).")
  else:
    if cfg.encoder not in ("vit", "cnn"):
      raise ValueError(f"config.model.encoder={cfg.encoder!r}: expected 'vit' or 'cnn'.")
    encoder = vit_variant(cfg.vit_variant)
    stem = cfg.vit_stem
    if cfg.encoder == "cnn":  # The ResNet stem alone: a CNN with the variant's width, stride.
      encoder["depth"], stem = 0, "resnet"
    vit = ViT(**encoder, image_size=image_size, stem=stem, stem_blocks=cfg.vit_stem_blocks,
              **ours)
  ours.update(vocab_size=cfg.vocab_size,
              cross_attention_every=(cfg.cross_attention_every
                                     if cfg.fusion == "cross_attention" else 0),
              code_ids=tuple(code_ids), num_code_positions=num_code_positions)
  if cfg.get("language_checkpoint"):
    decoder = compose.language_decoder(cfg.language_checkpoint, **ours)
  else:
    decoder = Decoder(width=cfg.width, depth=cfg.depth, mlp_dim=cfg.mlp_dim,
                      num_heads=cfg.num_heads, num_kv_heads=cfg.num_kv_heads,
                      mlp_type=cfg.mlp_type, tie_embeddings=cfg.tie_embeddings,
                      rope_base=cfg.rope_base, **ours)
  resampler = (PerceiverResampler(cfg.resampler_latents, cfg.resampler_depth, cfg.num_heads,
                                  cfg.mlp_dim, dtype) if cfg.resampler_latents else None)
  settings = dict(projector_kind=cfg.projector)
  # A whole vision-language checkpoint fixes its projector and prefix attention.
  settings.update(compose.gpt4v_settings(cfg))
  return GPT4V(vit=vit, decoder=decoder, projector_merge=cfg.projector_merge,
               fusion=cfg.fusion, resampler=resampler,
               image_positions=cfg.get("image_positions", "none"), **settings)

