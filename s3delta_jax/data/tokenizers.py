"""Tokenizers with one small interface: `encode(text) -> ids + [eos]`, `decode(ids) -> text`.

Two implementations:
  * `ByteTokenizer`: the ByT5 scheme (pad 0, eos 1, unk 2, byte b -> b + 3); needs no files, so it
    drives the offline smoke runs and ByT5 checkpoints.
  * `SentencePieceTokenizer`: the T5 SentencePiece vocabulary through `transformers`, from a local
    directory holding `spiece.model`, a bare `spiece.model` file, or a hub id when online.
"""

from __future__ import annotations

import os
import tempfile
from typing import Protocol, Sequence

from s3delta_jax.errors import UserError

PAD_ID = 0
EOS_ID = 1
UNK_ID = 2
SPIECE_FILE = "spiece.model"
BYTE_TOKENIZERS = ("bytes", "byt5")  # names of the byte tokenizer


class TokenizerError(UserError, ValueError):
    """A tokenizer whose files are missing."""


class Tokenizer(Protocol):
    """What the data pipeline and the programs need of a tokenizer."""

    pad_id: int
    eos_id: int
    vocab_size: int

    def encode(self, text: str) -> list[int]:
        """Token ids of `text` followed by the EOS id; no truncation."""

    def decode(self, ids: Sequence[int]) -> str:
        """Text of `ids` up to the first EOS, special tokens skipped, stripped."""


class ByteTokenizer:
    """ByT5 byte-level tokenizer: UTF-8 byte b -> id b + 3; ids 0/1/2 are pad/eos/unk."""

    pad_id = PAD_ID
    eos_id = EOS_ID
    unk_id = UNK_ID
    offset = 3
    vocab_size = 256 + offset

    def encode(self, text: str) -> list[int]:
        return [b + self.offset for b in text.encode("utf-8")] + [self.eos_id]

    def decode(self, ids: Sequence[int]) -> str:
        out = bytearray()
        for i in ids:
            i = int(i)
            if i == self.eos_id:
                break
            if self.offset <= i < self.vocab_size:
                out.append(i - self.offset)
        return out.decode("utf-8", errors="replace").strip()


class SentencePieceTokenizer:
    """The T5 tokenizer (32,000 pieces + 100 sentinel ids = 32,100 ids) via `transformers`."""

    pad_id = PAD_ID
    eos_id = EOS_ID

    def __init__(self, name_or_path: str):
        from transformers import T5Tokenizer

        from s3delta_jax.hub import resolve_offline

        spiece = local_spiece_file(name_or_path)
        if spiece is not None:
            self._tok = _tokenizer_from_spiece_file(spiece)
        else:
            resolve_offline(name_or_path, what="tokenizer")
            self._tok = T5Tokenizer.from_pretrained(name_or_path)
        self.vocab_size = len(self._tok)

    def encode(self, text: str) -> list[int]:
        return list(self._tok(text).input_ids)

    def decode(self, ids: Sequence[int]) -> str:
        ids = [int(i) for i in ids]
        if self.eos_id in ids:
            ids = ids[: ids.index(self.eos_id)]
        return self._tok.decode(ids, skip_special_tokens=True).strip()


def local_spiece_file(name_or_path: str) -> str | None:
    """The SentencePiece file a T5 tokenizer name points at: the file itself, or a directory's
    spiece.model (TokenizerError if it has none); None for a hub id."""
    if os.path.isfile(name_or_path):
        return name_or_path
    if not os.path.isdir(name_or_path):
        return None
    spiece = os.path.join(name_or_path, SPIECE_FILE)
    if not os.path.isfile(spiece):
        raise TokenizerError(f"no {SPIECE_FILE} in {name_or_path!r}: copy the model's SentencePiece file "
                             "there, or pass one as --config.model.tokenizer=/path/to/spiece.model")
    return spiece


def _tokenizer_from_spiece_file(path: str):
    """Builds a T5Tokenizer from a bare `spiece.model` (transformers wants a directory)."""
    from transformers import T5Tokenizer

    with tempfile.TemporaryDirectory() as tmp:
        os.symlink(os.path.abspath(path), os.path.join(tmp, "spiece.model"))
        return T5Tokenizer.from_pretrained(tmp)


def get_tokenizer(name: str) -> Tokenizer:
    """`"bytes"` for the byte tokenizer; anything else is a SentencePiece path or hub id."""
    if name in BYTE_TOKENIZERS:
        return ByteTokenizer()
    return SentencePieceTokenizer(name)
