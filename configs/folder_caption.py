"""Image captioning on your own images: a Hugging Face `imagefolder` directory.

  python -m gpt4v_jax.main --config=configs/folder_caption.py --config.data.path=DIR \
      --workdir=workdirs/folder_caption

DIR/<split>/metadata.jsonl names each image (`file_name`) and its `caption` or `captions`
(README, "Your own data"); it is converted once into config.data.data_dir and reused. Model,
optimizer and run length are shapes_caption's; what differs is the data and the text: byte
tokens read any UTF-8 caption without a vocabulary file (train a SentencePiece model on your
captions with `python -m gpt4v_jax.data.train_tokenizer` and pass
`--config.tokenizer=sentencepiece:PREFIX.model` for shorter rows), and images of any size are
padded to a square, keeping their aspect. The argument: "" (default) or "tiny".
"""
import ml_collections

from configs import shapes_caption


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = shapes_caption.get_config(arg)
  c.data.update(name="folder", path="", builder_config="", resize="pad")
  c.tokenizer = "bytes"
  c.model.vocab_size = 384  # 272 byte-tokenizer ids, padded to a multiple of 128.
  # BOS, task token, a caption of up to 125 bytes, EOS: longer ones are cut and counted.
  c.objective.max_text_len = 128
  c.evals.update(during_splits=("validation",), final_splits=("test",))
  return c
