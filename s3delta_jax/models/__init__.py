"""Backbones (Flax T5), checkpoint conversion, tokenizers and hub access."""
