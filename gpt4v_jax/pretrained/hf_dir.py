"""A local Hugging Face-format model directory: config.json and safetensors weights.

  HFDir(path).config          the parsed config.json
  HFDir(path).keys()          every tensor name in the weights
  HFDir(path).info(key)       (shape, numpy dtype, file) from the safetensors header
  HFDir(path).read(key)       the tensor as a read-only numpy array over a memory map

Weights are `model.safetensors`, or the shards listed by `model.safetensors.index.json`.
Only safetensors are read: a `pytorch_model.bin` is a pickle (loading one runs code from the
file), so it is refused with the command that converts it. The format is parsed here (an
8-byte header length, a JSON header, the raw little-endian bytes) rather than through the
`safetensors` package, whose numpy reader has no bfloat16: arrays come straight from a
memory map, so a tensor's bytes are read from disk only when something touches them.
"""
import json
import mmap
import os
import struct
from typing import Any

import ml_dtypes
import numpy as np

from gpt4v_jax.pretrained.families import UnsupportedCheckpoint

_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
    "BOOL": np.bool_,
}
INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"
_PICKLES = ("pytorch_model.bin", "pytorch_model.bin.index.json")

CONVERT_HINT = (
    "Convert it once with transformers (on a machine where it is installed): python -c "
    "\"from transformers import AutoModel; m = AutoModel.from_pretrained('{path}'); "
    "m.save_pretrained('{path}_safetensors', safe_serialization=True)\" and point the "
    "config at the new directory.")


class CheckpointError(ValueError):
  """A checkpoint directory that cannot be read as asked: missing files or tensors, an
  unexpected tensor, a shape or dtype that does not fit."""


class HFDir:
  """See the module docstring. Raises CheckpointError for a directory it cannot read."""

  def __init__(self, path: str):
    self.path = os.fspath(path)
    config_path = os.path.join(self.path, "config.json")
    if not os.path.isdir(self.path):
      raise CheckpointError(f"{self.path}: no such directory (a Hugging Face model directory "
                            "with config.json and *.safetensors was expected).")
    if not os.path.exists(config_path):
      raise CheckpointError(f"{config_path}: missing; a Hugging Face model directory has a "
                            "config.json next to its weights.")
    with open(config_path) as f:
      self.config: dict[str, Any] = json.load(f)
    self._files = self._weight_files()
    self._headers: dict[str, dict] = {}
    self._maps: dict[str, mmap.mmap] = {}
    self._where: dict[str, str] = {}
    for name in self._files:
      for key in self._header(name):
        if key in self._where:
          raise CheckpointError(f"{key} is stored twice: in {self._where[key]} and {name} "
                                f"of {self.path}.")
        self._where[key] = name

  def _weight_files(self) -> list[str]:
    index = os.path.join(self.path, INDEX)
    if os.path.exists(index):
      with open(index) as f:
        weight_map = json.load(f).get("weight_map")
      if not isinstance(weight_map, dict):
        raise CheckpointError(f"{index}: no 'weight_map' of tensor name -> file.")
      files = sorted(set(weight_map.values()))
      missing = [f for f in files if not os.path.exists(os.path.join(self.path, f))]
      if missing:
        raise CheckpointError(f"{index} lists {', '.join(missing)}, which "
                              f"{'is' if len(missing) == 1 else 'are'} not in {self.path}.")
      return files
    if os.path.exists(os.path.join(self.path, SINGLE)):
      return [SINGLE]
    found = sorted(f for f in os.listdir(self.path) if f.endswith(".safetensors"))
    if found:
      return found
    pickles = [f for f in _PICKLES if os.path.exists(os.path.join(self.path, f))]
    if pickles:
      raise UnsupportedCheckpoint(
          f"{os.path.join(self.path, pickles[0])}: PyTorch pickles are not read (unpickling "
          "runs code from the file); only safetensors are. "
          + CONVERT_HINT.format(path=self.path))
    raise CheckpointError(f"{self.path}: no {SINGLE}, {INDEX} or *.safetensors file.")

  def _header(self, name: str) -> dict:
    if name not in self._headers:
      path = os.path.join(self.path, name)
      with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
          raise CheckpointError(f"{path}: truncated (no safetensors header).")
        (size,) = struct.unpack("<Q", raw)
        if size > os.path.getsize(path) - 8:
          raise CheckpointError(f"{path}: not a safetensors file (header size {size} is past "
                                "the end of the file).")
        try:
          header = json.loads(f.read(size))
        except ValueError as e:
          raise CheckpointError(f"{path}: unreadable safetensors header ({e}).") from None
      header.pop("__metadata__", None)
      self._headers[name] = dict(offset=8 + size, tensors=header)
    return self._headers[name]["tensors"]

  def keys(self) -> list[str]:
    return list(self._where)

  def __contains__(self, key: str) -> bool:
    return key in self._where

  def file_of(self, key: str) -> str:
    """The path of the file that holds `key` (for messages)."""
    return os.path.join(self.path, self._where[key])

  def info(self, key: str) -> tuple[tuple[int, ...], np.dtype]:
    """(shape, numpy dtype) of `key`, from the header alone."""
    if key not in self._where:
      raise CheckpointError(f"{key}: missing from {self.path} (files: "
                            f"{', '.join(self._files)}).")
    entry = self._header(self._where[key])[key]
    if entry["dtype"] not in _DTYPES:
      raise CheckpointError(f"{key} in {self.file_of(key)} has dtype {entry['dtype']}, which "
                            f"is not one of {', '.join(_DTYPES)}.")
    return tuple(entry["shape"]), np.dtype(_DTYPES[entry["dtype"]])

  def read(self, key: str) -> np.ndarray:
    """`key` as a read-only array backed by the file's memory map (no copy)."""
    shape, dtype = self.info(key)
    name = self._where[key]
    if name not in self._maps:
      with open(os.path.join(self.path, name), "rb") as f:
        self._maps[name] = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    begin, end = self._header(name)[key]["data_offsets"]
    count = int(np.prod(shape, dtype=np.int64))
    if end - begin != count * dtype.itemsize:
      raise CheckpointError(f"{key} in {self.file_of(key)}: {end - begin} bytes stored for "
                            f"shape {list(shape)} of {dtype}.")
    offset = self._headers[name]["offset"] + begin
    return np.frombuffer(self._maps[name], dtype, count, offset).reshape(shape)


_NAMES = {np.dtype(v): k for k, v in _DTYPES.items()}


def write_safetensors(path: str, tensors: dict[str, np.ndarray],
                      metadata: dict[str, str] | None = None) -> None:
  """Writes `tensors` as one safetensors file (the layout `HFDir` reads and transformers
  writes: a JSON header of dtype, shape and byte offsets, 8-byte aligned, then the bytes)."""
  header: dict[str, Any] = {"__metadata__": dict(metadata or {"format": "pt"})}
  offset = 0
  for name, x in tensors.items():
    if x.dtype not in _NAMES:
      raise ValueError(f"{name}: dtype {x.dtype} cannot be written to safetensors.")
    header[name] = dict(dtype=_NAMES[x.dtype], shape=list(x.shape),
                        data_offsets=[offset, offset + x.nbytes])
    offset += x.nbytes
  raw = json.dumps(header, separators=(",", ":")).encode()
  raw += b" " * (-len(raw) % 8)
  with open(path, "wb") as f:
    f.write(struct.pack("<Q", len(raw)))
    f.write(raw)
    for x in tensors.values():
      f.write(np.ascontiguousarray(x).astype(x.dtype.newbyteorder("<"), copy=False).tobytes())
