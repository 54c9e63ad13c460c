"""The heatmap (chosen marks, grey cells where a type cannot act, panels whose labels do not overlap)
and the final summary's lines."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from s3delta_jax.train.loop import PhaseResult
from s3delta_jax.train.outputs import heatmap_figure, heatmap_panels, write_heatmap
from s3delta_jax.train.summary import summary_lines


def candidate(index: int, path: tuple[str, ...], key: str) -> SimpleNamespace:
    return SimpleNamespace(index=index, key=key, size=10, position=SimpleNamespace(path=path))


SUBLAYER = "layer_0/SelfAttention_with_a_long_name/output_projection"
LORA_ROW = "layer_0/SelfAttention/q:lora"


def t5_like_candidates() -> list[SimpleNamespace]:
    """Two layers per stack (cross-attention only in the decoder), LoRA only on q of layer 0, so its row
    has cells where it cannot act; long labels, as T5's are. Encoder indices: 0 adapter, 1 bitfit,
    2 lora (layer 0), 3 adapter, 4 bitfit (layer 1), 5 lnfit (final)."""
    candidates = []
    for stack, sublayers in (("encoder", ("SelfAttention",)), ("decoder", ("SelfAttention", "EncDecAttention"))):
        for layer in range(2):
            for sublayer in sublayers:
                for key in ("adapter", "bitfit"):
                    path = (stack, f"block_{layer}", f"layer_0/{sublayer}_with_a_long_name", "output_projection")
                    candidates.append(candidate(len(candidates), path, key))
            if layer == 0:
                candidates.append(candidate(len(candidates), (stack, "block_0", "layer_0/SelfAttention", "q"), "lora"))
        candidates.append(candidate(len(candidates), (stack, "final_layer_norm"), "lnfit"))
    return candidates


@pytest.fixture
def heatmap_inputs():
    candidates = t5_like_candidates()
    p = np.linspace(0.0, 1.0, len(candidates))
    chosen = np.zeros(len(candidates), bool)
    chosen[[1, 2, len(candidates) - 1]] = True
    return candidates, p, chosen


def test_panels_hold_p_nan_where_a_type_cannot_act_and_the_chosen_cells(heatmap_inputs):
    candidates, p, chosen = heatmap_inputs
    encoder, decoder = heatmap_panels(candidates, p, chosen)
    assert (encoder.name, decoder.name) == ("encoder", "decoder")
    assert encoder.rows == [f"{SUBLAYER}:adapter", f"{SUBLAYER}:bitfit", LORA_ROW, "final_layer_norm:lnfit"]
    assert encoder.columns == ["0", "1", "final"]
    assert encoder.p[0, 0] == 0.0 and encoder.p[1, 1] == p[4] and encoder.p[3, 2] == p[5]
    assert encoder.p[2, 0] == p[2] and np.isnan(encoder.p[2, 1:]).all() and np.isnan(encoder.p[0, 2])
    assert sorted(zip(*np.nonzero(encoder.chosen))) == [(1, 0), (2, 0)]
    assert list(zip(*np.nonzero(decoder.chosen))) == [(decoder.rows.index("final_layer_norm:lnfit"), 2)]


def test_the_figure_marks_chosen_cells_greys_missing_ones_and_keeps_panel_labels_apart(heatmap_inputs):
    candidates, p, chosen = heatmap_inputs
    fig = heatmap_figure(candidates, p, "test", chosen)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    encoder_ax, decoder_ax = fig.axes[:2]
    marks = encoder_ax.collections[0].get_offsets()
    assert len(marks) == 2 and len(decoder_ax.collections[0].get_offsets()) == 1
    image = encoder_ax.images[0]
    assert np.ma.getmaskarray(image.get_array())[2, 1]  # LoRA cannot act on layer 1
    bad, zero = image.cmap.get_bad(), image.cmap(0.0)
    assert bad[0] == pytest.approx(bad[1]) == pytest.approx(bad[2]) and max(bad[:3]) < 0.75  # a grey
    assert min(zero[:3]) > 0.9  # p = 0 stays near white
    encoder_extents = [encoder_ax.get_window_extent(renderer)] + [
        label.get_window_extent(renderer) for label in encoder_ax.get_xticklabels() + encoder_ax.get_yticklabels()]
    decoder_labels = [label.get_window_extent(renderer) for label in decoder_ax.get_yticklabels()]
    assert decoder_labels and not any(label.overlaps(extent) for label in decoder_labels for extent in encoder_extents)


def test_write_heatmap_writes_a_png(tmp_path, heatmap_inputs):
    candidates, p, chosen = heatmap_inputs
    path = tmp_path / "heatmap.png"
    write_heatmap(str(path), candidates, p, "test", chosen=chosen)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    write_heatmap(str(path), candidates, p, "without a structure")  # chosen is optional
    assert path.stat().st_size > 0


def test_summary_lines_carry_the_numbers_and_paths(tmp_path):
    result = PhaseResult(state=None, best_score=0.8125, best_step=120, best_metrics={"accuracy": 0.8125, "f1": 0.9},
                         start_step=100, seconds=3725.0, phase="search", total_steps=200)
    lines = summary_lines(result, paths=[str(tmp_path / "structure.json")], modules=64, trainable_params=102458,
                          backbone_params=737639424)
    assert lines[0] == ("search finished in 1:02:05, resumed from step 100: best validation accuracy 0.8125, "
                        "f1 0.9 at step 120 of 200")
    assert lines[1] == ("structure: 64 modules, 102,458 trainable parameters = 1.39 per ten-thousand of the "
                        "backbone's 737,639,424")
    assert lines[2] == f"wrote {tmp_path / 'structure.json'}"
