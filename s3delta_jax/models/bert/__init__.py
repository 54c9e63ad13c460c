"""The BERT family: Flax BERT / MiniLM and RoBERTa encoders and their Hugging Face checkpoints.

    from s3delta_jax.models import bert
    config, params = bert.load_checkpoint(directory)
    last_hidden = bert.BertModel(config).apply({"params": params}, input_ids, attention_mask)
"""

from s3delta_jax.models.bert.convert import (
    CheckpointError,
    flax_path,
    hf_name,
    load_checkpoint,
    params_from_state_dict,
    read_state_dict,
    save_checkpoint,
    state_dict_from_params,
)
from s3delta_jax.models.bert.model import (
    ACTIVATIONS,
    MODEL_TYPES,
    PRESETS,
    BertConfig,
    BertConfigError,
    BertEmbeddings,
    BertLayer,
    BertModel,
    count_params,
    get_config,
    hidden_states,
    init_params,
    logical_axes,
    param_shapes,
    position_ids,
)

__all__ = [
    "ACTIVATIONS", "MODEL_TYPES", "PRESETS", "BertConfig", "BertConfigError", "BertEmbeddings", "BertLayer",
    "BertModel", "CheckpointError", "count_params", "flax_path", "get_config", "hf_name", "hidden_states",
    "init_params", "load_checkpoint", "logical_axes", "param_shapes", "params_from_state_dict", "position_ids",
    "read_state_dict", "save_checkpoint", "state_dict_from_params",
]
