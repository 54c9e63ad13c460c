"""Delta modules, where they go, and how they get into a frozen Flax model.

    positions  = discover_positions(model, *example_args)          # trace once, shapes only
    expansion  = expand(rules, positions)                          # candidates with sizes
    delta      = init_delta(key, expansion.candidates)             # the trainable pytree
    apply      = with_deltas(model.apply, expansion.candidates, delta, gate_values)
    logits     = apply({"params": params}, *batch)
"""

from s3delta_jax.deltas.budget import BudgetError, budget_params
from s3delta_jax.deltas.inject import InjectionError, candidate_params, delta_param_count, init_delta, with_deltas
from s3delta_jax.deltas.merge import merge_deltas
from s3delta_jax.deltas.scan import ScanError, ScannedLayers, stack_layers, unstack_layers
from s3delta_jax.deltas.modules import (
    DELTA_TYPES,
    DeltaType,
    DeltaTypeError,
    delta_type_for_reference,
    get_delta_type,
    register_delta_type,
)
from s3delta_jax.deltas.positions import (
    NormSpec,
    Position,
    PositionError,
    discover_positions,
    hf_module_name,
    position_table,
    register_norm,
)
from s3delta_jax.deltas.spaces import (
    Candidate,
    Expansion,
    Rule,
    RuleMatch,
    Space,
    SpaceError,
    expand,
    make_candidate,
    candidates_from_mask,
    type_breakdown,
)
from s3delta_jax.deltas.structure import (
    Structure,
    StructureEntry,
    StructureError,
    load_reference_structure,
    load_structure,
    save_reference_structure,
    save_structure,
    structure_from_candidates,
    structure_from_json,
    structure_from_reference,
    structure_to_json,
    structure_to_reference,
)

__all__ = [
    "DELTA_TYPES",
    "BudgetError", "Candidate", "DeltaType", "DeltaTypeError", "Expansion", "InjectionError", "NormSpec",
    "Position", "PositionError", "Rule", "RuleMatch", "ScanError", "ScannedLayers", "Space", "SpaceError",
    "Structure", "StructureEntry", "StructureError",
    "budget_params", "candidate_params",
    "delta_param_count", "delta_type_for_reference", "discover_positions", "expand", "get_delta_type",
    "hf_module_name", "init_delta", "load_reference_structure", "load_structure",
    "make_candidate", "merge_deltas", "position_table", "register_delta_type", "register_norm",
    "save_reference_structure", "save_structure", "candidates_from_mask", "structure_from_candidates",
    "stack_layers", "structure_from_json", "structure_from_reference", "structure_to_json",
    "structure_to_reference", "type_breakdown", "unstack_layers", "with_deltas",
]
