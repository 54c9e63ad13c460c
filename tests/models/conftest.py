"""Session fixtures: the tiny reference HF T5 of each family (saved once) and a padded batch."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from t5_reference import FAMILIES, TINY, HFCheckpoint, build_hf_t5  # noqa: E402


@pytest.fixture(scope="session", params=list(FAMILIES))
def hf_checkpoint(request, tmp_path_factory) -> HFCheckpoint:
    model = build_hf_t5(request.param)
    directory = tmp_path_factory.mktemp(request.param)
    model.save_pretrained(directory)
    return HFCheckpoint(request.param, model, directory)


@pytest.fixture(scope="session")
def padded_batch() -> dict[str, np.ndarray]:
    """Encoder inputs with right and left padding, decoder inputs with right padding, labels with -100."""
    rng = np.random.default_rng(0)
    vocab = TINY["vocab_size"]
    input_ids = rng.integers(2, vocab, (3, 25))
    attention_mask = np.ones((3, 25), np.int64)
    attention_mask[0, 19:] = 0
    attention_mask[1, :4] = 0
    decoder_input_ids = rng.integers(2, vocab, (3, 9))
    decoder_attention_mask = np.ones((3, 9), np.int64)
    decoder_attention_mask[2, 6:] = 0
    labels = rng.integers(2, vocab, (3, 7))
    labels[0, 5:] = -100
    labels[2, 3:] = -100
    return dict(
        input_ids=input_ids,
        attention_mask=attention_mask,
        decoder_input_ids=decoder_input_ids,
        decoder_attention_mask=decoder_attention_mask,
        labels=labels,
    )
