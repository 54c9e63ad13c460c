"""Backbones: the `Backbone` interface (backbone.py), the model families (t5/, bert/), the registry
that picks a family for a config (registry.py), and what the families share (checkpoint files,
tokenizers, hub access, dtypes, the hashed dropout, the layer rematerialisation policies). Importing
this package loads no model family."""
