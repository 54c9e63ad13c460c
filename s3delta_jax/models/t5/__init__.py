"""The T5 family: Flax T5 (v1.0, v1.1 / FLAN), Hugging Face checkpoints, decoding, the paper's spaces.

    from s3delta_jax.models import t5
    model = t5.T5ForConditionalGeneration(t5.get_config("t5-small"))
"""

from s3delta_jax.models.t5.decoding import (
    IGNORE_INDEX,
    cross_entropy_loss,
    greedy_decode,
    sequence_log_likelihood,
    shift_right,
)
from s3delta_jax.models.t5.model import (
    PRESETS,
    T5Attention,
    T5Config,
    T5ConfigError,
    T5DenseReluDense,
    T5ForConditionalGeneration,
    T5LayerNorm,
    count_params,
    get_config,
    init_params,
    logical_axes,
    param_shapes,
    relative_position_bucket,
    scanned_layers,
)

__all__ = [
    "IGNORE_INDEX", "PRESETS", "T5Attention", "T5Config", "T5ConfigError", "T5DenseReluDense",
    "T5ForConditionalGeneration", "T5LayerNorm", "count_params", "cross_entropy_loss",
    "get_config", "greedy_decode", "init_params", "logical_axes", "param_shapes", "relative_position_bucket",
    "scanned_layers", "sequence_log_likelihood", "shift_right",
]
