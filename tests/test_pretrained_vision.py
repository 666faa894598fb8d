"""Hugging Face vision towers (ViT, CLIP, SigLIP) load into our ViT with transformers' numbers.

Each family's tiny random transformers model (PyTorch, CPU) is saved with save_pretrained and
read back through its key map; our forward pass must give transformers' last_hidden_state
(SigLIP's head: pooler_output) within 1e-4 max-abs, preprocessing included: our
`images.preprocess` with `preprocess_from(dir)` must give the processor's pixel_values.
"""
import io
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import PIL.Image
import pytest

from gpt4v_jax.data import images
from gpt4v_jax.models import vit as vit_lib
from gpt4v_jax import pretrained
from gpt4v_jax.pretrained import families, vision

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")
safetensors_numpy = pytest.importorskip("safetensors.numpy")

TOL = 1e-4
TINY = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            image_size=32, patch_size=8)
TEXT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
            vocab_size=50)


def photo(w: int, h: int, seed: int = 0) -> np.ndarray:
  """uint8 [h, w, 3]: gradients, a hard-edged disc and pixel noise (every resample filter's
  taps matter)."""
  y, x = np.mgrid[0:h, 0:w]
  image = np.stack([40 + 150 * x / w, 30 + 180 * y / h, 200 - 120 * (x + y) / (w + h)], -1)
  image[(x - w / 3) ** 2 + (y - h / 2) ** 2 < (min(w, h) / 4) ** 2] = (230, 40, 60)
  image += np.random.default_rng(seed).normal(0, 12, image.shape)
  return np.clip(image, 0, 255).astype(np.uint8)


def png(image: np.ndarray) -> bytes:
  buf = io.BytesIO()
  PIL.Image.fromarray(image).save(buf, "PNG")
  return buf.getvalue()


def hf_pixels(processor, image: np.ndarray) -> np.ndarray:
  """The processor's pixel_values of one image, as [H, W, 3]."""
  out = processor(images=PIL.Image.fromarray(image), return_tensors="np")["pixel_values"]
  return out[0].transpose(1, 2, 0)


PHOTO = photo(61, 40)  # Landscape, shrunk to 32.


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
  """{name: (family, dir, hf_outputs)}: tiny random transformers models saved with
  save_pretrained (processors beside the vision-only ones), and their outputs on INPUTS_NCHW
  (random pixels, then PHOTO through the processor)."""
  torch.manual_seed(0)
  models = {
      "vit": (vision.VIT, transformers.ViTModel(transformers.ViTConfig(**TINY)),
              transformers.ViTImageProcessor(size={"height": 32, "width": 32})),
      "clip_vision": (vision.CLIP,
                      transformers.CLIPVisionModel(transformers.CLIPVisionConfig(**TINY)),
                      transformers.CLIPImageProcessor(size={"shortest_edge": 32},
                                                      crop_size={"height": 32, "width": 32})),
      "clip": (vision.CLIP, transformers.CLIPModel(transformers.CLIPConfig(
          vision_config=TINY, text_config=TEXT)), None),
      "siglip_vision": (vision.SIGLIP,
                        transformers.SiglipVisionModel(transformers.SiglipVisionConfig(**TINY)),
                        transformers.SiglipImageProcessor(size={"height": 32, "width": 32})),
      "siglip": (vision.SIGLIP, transformers.SiglipModel(transformers.SiglipConfig(
          vision_config=TINY, text_config=TEXT)), None),
  }
  noise = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
  out = {}
  for name, (family, model, processor) in models.items():
    # transformers' init (weights ~0.02, norms 1 and 0) keeps every activation near 0, where
    # GELU variants and a missing norm or bias hardly differ: perturb every tensor so that
    # each switch shows (a wrong activation is off by >= 7e-4, 7x the tolerance).
    with torch.no_grad():
      for tensor in model.parameters():
        tensor.add_(torch.randn_like(tensor) * 0.3)
    path = tmp_path_factory.mktemp(name)
    model.save_pretrained(path)
    tower = getattr(model, "vision_model", model)
    processor = processor or models[name + "_vision"][2]
    x = torch.cat([noise, torch.from_numpy(hf_pixels(processor, PHOTO).transpose(2, 0, 1))[None]])
    if processor is models[name][2]:
      processor.save_pretrained(path)
    with torch.no_grad():
      result = tower.eval()(pixel_values=x)
    out[name] = (family, str(path), result.last_hidden_state.numpy(),
                 None if result.pooler_output is None else result.pooler_output.numpy(), x.numpy())
  return out


def load(path, family, **options):
  """(config, module, params) through the family's key map alone, read with safetensors."""
  with open(f"{path}/config.json") as f:
    cfg = json.load(f)
  tensors = safetensors_numpy.load_file(f"{path}/model.safetensors")
  sources = family.sources(cfg, **options)
  return cfg, family.module(cfg, **options), families.params_from(sources, tensors.__getitem__)


def our_inputs(name: str, checkpoints) -> np.ndarray:
  """The same batch as transformers', [batch, H, W, 3]; the last image is PHOTO through our
  own preprocessing."""
  _, path, _, _, x = checkpoints[name]
  ours = images.preprocess(png(PHOTO), vision.preprocess_from(
      path if "vision" in name or name == "vit" else checkpoints[name + "_vision"][1]))
  return np.concatenate([x[:-1].transpose(0, 2, 3, 1), ours[None]])


@pytest.mark.parametrize("name", ["vit", "clip_vision", "clip", "siglip_vision", "siglip"])
def test_last_hidden_state_matches_transformers(name, checkpoints):
  family, path, expected, _, _ = checkpoints[name]
  assert pretrained.family_of(json.load(open(f"{path}/config.json"))) is family
  module, params = pretrained.load_hf(path)
  # The key map gives exactly the module's own param tree (names and shapes).
  shapes = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))["params"]
  assert (jax.tree.map(lambda a: a.shape, nn.unbox(shapes))
          == jax.tree.map(np.shape, params))
  got = np.asarray(module.apply({"params": params}, our_inputs(name, checkpoints)))
  assert got.shape == expected.shape == (3, module.num_tokens, 32)
  assert np.abs(got - expected).max() <= TOL


def test_siglip_pooling_head_matches_pooler_output(checkpoints):
  _, path, _, expected, _ = checkpoints["siglip_vision"]
  module, params = pretrained.load_hf(path, head="map")
  got = np.asarray(module.apply({"params": params}, our_inputs("siglip_vision", checkpoints)))
  assert got.shape == expected.shape == (3, 32)
  assert np.abs(got - expected).max() <= TOL


@pytest.mark.parametrize("name", ["vit", "clip", "siglip"])
def test_key_maps_cover_the_checkpoint_and_invert_exactly(name, checkpoints):
  family, path, _, _, _ = checkpoints[name]
  with open(f"{path}/config.json") as f:
    cfg = json.load(f)
  tensors = safetensors_numpy.load_file(f"{path}/model.safetensors")
  options = dict(head="map") if family is vision.SIGLIP else {}
  sources = family.sources(cfg, **options)
  read = {k for s in sources.values() for k in s.keys}
  assert read <= set(tensors)
  # Whatever is not read is declared ignorable: a text tower, CLIP's post-layernorm, a pooler.
  unread = set(tensors) - read
  assert all(family.ignored(k, cfg) for k in unread)
  assert not any(family.ignored(k, cfg) for k in read if ".head." not in k)
  assert any(k.startswith("text_model.") for k in unread) == (name != "vit")
  for path_, source in sources.items():
    original = tuple(tensors[k] for k in source.keys)
    back = source.to_hf(source.to_ours(*original))
    assert len(back) == len(original), path_
    for a, b in zip(back, original):
      assert a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b), path_


def test_scanned_and_rematerialised_towers_agree(checkpoints):
  """CLIP (every switch off its default) with scan_layers and remat gives the same output."""
  _, path, expected, _, x = checkpoints["clip_vision"]
  module, params = pretrained.load_hf(path, scan_layers=True, remat="full")
  assert params["blocks"]["attn"]["query_kernel"].shape == (2, 32, 4, 8)
  got = module.apply({"params": params}, x[:-1].transpose(0, 2, 3, 1))
  assert np.abs(np.asarray(got) - expected[:-1]).max() <= TOL


@pytest.mark.parametrize("family,config", [
    (vision.VIT, "ViTConfig"), (vision.CLIP, "CLIPVisionConfig"), (vision.CLIP, "CLIPConfig"),
    (vision.SIGLIP, "SiglipVisionConfig"), (vision.SIGLIP, "SiglipConfig")])
def test_a_config_json_without_defaults_means_transformers_defaults(family, config):
  """config.json leaves out values equal to transformers' defaults; ours must be the same."""
  full = getattr(transformers, config)().to_dict()
  assert family.module({"model_type": full["model_type"]}) == family.module(full)
  assert family.module(full).width == 768


def test_new_params_carry_logical_axes():
  """The class token, pre-norm and pooling head shard by the same rules as the rest."""
  module = vit_lib.ViT(width=32, depth=1, mlp_dim=64, num_heads=4, patch_size=8, image_size=32,
                       class_token=True, patch_bias=False, pre_norm=True, head="map")
  variables = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
  leaves = jax.tree.leaves(variables, is_leaf=lambda x: isinstance(x, nn.Partitioned))
  assert all(isinstance(x, nn.Partitioned) and len(x.names) == x.value.ndim for x in leaves)
  params = variables["params"]
  assert {"cls_token", "ln_pre", "head"} <= set(params) and "bias" not in params["embedding"]
  assert params["pos_embedding"].value.shape == (module.num_tokens, 32) == (17, 32)


@pytest.mark.parametrize("name,size", [("vit", (61, 40)), ("clip_vision", (61, 40)),
                                       ("clip_vision", (27, 50)), ("clip_vision", (32, 45)),
                                       ("siglip_vision", (27, 50))])
def test_preprocessing_matches_the_processor(name, size, checkpoints):
  """Squash (ViT bilinear, SigLIP bicubic) and CLIP's shorter-side resize + centre crop, on
  landscape and portrait images, shrinking, enlarging and crop-only."""
  path = checkpoints[name][1]
  image = photo(*size, seed=size[0])
  processor = transformers.AutoImageProcessor.from_pretrained(path, use_fast=False)
  expected = hf_pixels(processor, image)
  got = images.preprocess(png(image), vision.preprocess_from(path))
  assert got.shape == expected.shape == (32, 32, 3)
  assert np.abs(got - expected).max() <= TOL


@pytest.mark.parametrize("config,expected", [
    # The public checkpoints' files (older ones by the feature extractors, ints for sizes).
    (dict(feature_extractor_type="ViTFeatureExtractor", do_normalize=True, do_resize=True,
          image_mean=[0.5] * 3, image_std=[0.5] * 3, resample=2, size=224),  # google/vit-base
     images.Preprocess(224, "squash", "bilinear", "minus_one_to_one", jpeg_draft=False)),
    (dict(feature_extractor_type="CLIPFeatureExtractor", crop_size=224, do_center_crop=True,
          do_normalize=True, do_resize=True, image_mean=[0.48145466, 0.4578275, 0.40821073],
          image_std=[0.26862954, 0.26130258, 0.27577711], resample=3, size=224),  # openai/clip
     images.Preprocess(224, "resize_crop", "bicubic", "clip", jpeg_draft=False)),
    (dict(image_processor_type="SiglipImageProcessor", do_normalize=True, do_rescale=True,
          do_resize=True, image_mean=[0.5] * 3, image_std=[0.5] * 3, resample=3,
          rescale_factor=0.00392156862745098, size={"height": 384, "width": 384}),
     images.Preprocess(384, "squash", "bicubic", "minus_one_to_one", jpeg_draft=False)),
])
def test_public_processor_files(config, expected, tmp_path):
  (tmp_path / "preprocessor_config.json").write_text(json.dumps(config))
  assert vision.preprocess_from(str(tmp_path)) == expected


def test_refuses_what_it_cannot_represent(checkpoints, tmp_path):
  clip = json.load(open(f"{checkpoints['clip'][1]}/config.json"))
  vit = json.load(open(f"{checkpoints['vit'][1]}/config.json"))
  siglip = json.load(open(f"{checkpoints['siglip_vision'][1]}/config.json"))
  cases = [
      (vision.VIT, {**vit, "hidden_act": "mish"}, "hidden_act='mish'"),
      (vision.VIT, {**vit, "qkv_bias": False}, "qkv_bias"),
      (vision.VIT, {**vit, "image_size": [32, 48]}, "image_size"),
      (vision.CLIP, {**clip, "vision_config": {**clip["vision_config"], "num_channels": 1}},
       "vision_config.num_channels=1"),
      (vision.SIGLIP, vit, "model_type='vit'"),
  ]
  for family, cfg, message in cases:
    for build in (family.module, family.sources):
      with pytest.raises(families.UnsupportedCheckpoint, match=message):
        build(cfg)
  no_head = {**siglip, "vision_use_head": False}
  with pytest.raises(families.UnsupportedCheckpoint, match="vision_use_head"):
    vision.SIGLIP.sources(no_head, head="map")
  with pytest.raises(ValueError, match="activation"):
    vision.VIT.module(vit, activation="gelu_tanh")  # Would silently change the numbers.
  with pytest.raises(ValueError, match="head"):
    vision.CLIP.module(clip, head="map")  # CLIP has no pooling head to load.

  processor = json.load(open(f"{checkpoints['clip_vision'][1]}/preprocessor_config.json"))
  for change, message in (({"resample": 1}, "resample=1: PIL LANCZOS"),
                          ({"crop_size": {"height": 28, "width": 28}}, "crop_size"),
                          ({"image_mean": [0.1, 0.2, 0.3]}, "image_mean"),
                          ({"image_processor_type": "DetrImageProcessor"}, "image_processor_type")):
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({**processor, **change}))
    with pytest.raises(families.UnsupportedCheckpoint, match=message):
      vision.preprocess_from(str(tmp_path))
