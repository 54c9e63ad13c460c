"""The T5 SentencePiece tokenizer (from the shared spiece.model) and the byte tokenizer."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from s3delta_jax.data.tokenizers import get_tokenizer

SPIECE_MODEL = Path(__file__).parents[2] / ".." / "shared" / "data" / "t5" / "spiece.model"


@pytest.mark.skipif(not SPIECE_MODEL.is_file(), reason="needs ../shared/data/t5/spiece.model")
def test_t5_sentencepiece_ids():
    tokenizer = get_tokenizer(str(SPIECE_MODEL))
    text = "translate English to German: The house is wonderful."
    ids = tokenizer.encode(text)
    assert ids == [13959, 1566, 12, 2968, 10, 37, 629, 19, 1627, 5, 1]
    assert tokenizer.decode(ids + [0, 0]) == text
    assert (tokenizer.pad_id, tokenizer.eos_id, tokenizer.vocab_size) == (0, 1, 32100)


def test_byte_tokenizer_round_trips_random_utf8():
    tokenizer = get_tokenizer("bytes")
    assert (tokenizer.pad_id, tokenizer.eos_id, tokenizer.vocab_size) == (0, 1, 259)
    alphabet = "abcXYZ019 .,!?\t\n\x00é߷ßñ中文字日本語한국어🙂🚀👩‍🔬\U0010fffd"
    rng = random.Random(0)
    for _ in range(200):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
        ids = tokenizer.encode(text)
        assert ids[-1] == tokenizer.eos_id and len(ids) == len(text.encode("utf-8")) + 1
        assert all(3 <= i < 259 for i in ids[:-1])
        assert tokenizer.decode(ids) == text.strip()  # decode strips surrounding whitespace


def test_a_directory_without_spiece_model_is_refused(tmp_path):
    """transformers would build a 104-id fallback vocabulary from an empty directory without a word."""
    from s3delta_jax.data.tokenizers import TokenizerError

    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(TokenizerError, match=f"no spiece.model in '{tmp_path}'"):
        get_tokenizer(str(tmp_path))
