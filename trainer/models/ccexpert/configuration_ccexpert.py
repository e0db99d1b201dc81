"""Configuration of CCExpert: LLaVA-OneVision plus the Difference-aware Integration Module.

The authors tap the outputs of SigLIP encoder blocks 17, 20, 23 and 26 (1-based) of the full 27-block tower
(``--mm_vision_select_layer "[-11,-8,-5,-2]"``). Here the taps are stored as those absolute block indices, which
index ``hidden_states`` directly (``hidden_states[0]`` is the patch embedding), so they mean the same blocks whether
a checkpoint keeps all 27 blocks or, like the ``llava-hf`` conversions, drops the last one (26 blocks).
"""

from huggingface_hub.dataclasses import strict
from transformers import LlavaOnevisionConfig


# The authors' taps in the 27-block SigLIP-so400m tower.
PAPER_TAPS = (17, 20, 23, 26)
PAPER_TOWER_DEPTH = 27


def proportional_taps(num_blocks: int, paper_taps=PAPER_TAPS, paper_depth: int = PAPER_TOWER_DEPTH) -> list[int]:
    """The paper's taps placed at the same relative depths of a tower with ``num_blocks`` blocks.

    A tower of 26 or more blocks gets the paper's absolute indices. A smaller (tiny) tower gets
    ``round(b * num_blocks / 27)`` for each paper block ``b``, made strictly increasing and ending at the last
    block, so that the residual base (the last tap) is the feature plain LLaVA-OneVision feeds its projector.

    Args:
        num_blocks: Encoder blocks of the vision tower.
        paper_taps: The authors' 1-based block indices.
        paper_depth: Depth of the authors' tower.

    Returns:
        Strictly increasing 1-based block indices, each in ``[1, num_blocks]``.
    """
    if num_blocks >= max(paper_taps):
        return list(paper_taps)
    taps: list[int] = []
    for block in paper_taps:
        tap = min(num_blocks, max(1, round(block * num_blocks / paper_depth)))
        if not taps or tap > taps[-1]:
            taps.append(tap)
    taps[-1] = num_blocks
    return taps


@strict
class CCExpertConfig(LlavaOnevisionConfig):
    r"""LLaVA-OneVision with CCExpert's Difference-aware Integration Module in front of the projector.

    Every LLaVA-OneVision field keeps its meaning; ``vision_feature_layer`` is the feature the plain path feeds the
    projector, and must be the last tapped block (the module adds its output onto that level).

    Args:
        tapped_vision_layers: 1-based encoder blocks whose outputs (``hidden_states[i]``) the module reads, in
            increasing order. ``None``: the paper's 17/20/23/26, or the same relative depths in a smaller tower.
        integration_depth: Change-aware transformer layers (shared across levels). Paper: 2.
        integration_num_heads: Attention heads of those layers. ``None``: ``hidden // 128`` as the authors (9 for
            SigLIP-so400m), at least 1.
        integration_mlp_ratio: MLP width over the vision width. Paper: 4.
        integration_gate_init: Initial value of the learnable scalar that scales the module's output before the
            residual add. 1.0 reproduces the authors' plain residual add; 0.0 starts exactly at LLaVA-OneVision.
        integration_init_std: Std of the truncated-normal init of the module's linear layers (authors: 0.02).
    """

    model_type = "ccexpert"

    tapped_vision_layers: list[int] | None = None
    integration_depth: int = 2
    integration_num_heads: int | None = None
    integration_mlp_ratio: float = 4.0
    integration_gate_init: float = 1.0
    integration_init_std: float = 0.02

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        blocks = self.vision_config.num_hidden_layers
        if self.tapped_vision_layers is None:
            self.tapped_vision_layers = proportional_taps(blocks)
        taps = [int(t) for t in self.tapped_vision_layers]
        if not taps or any(b <= a for a, b in zip(taps, taps[1:], strict=False)):
            raise ValueError(f"tapped_vision_layers {taps}: must be a non-empty, strictly increasing list")
        if taps[0] < 1 or taps[-1] > blocks:
            raise ValueError(
                f"tapped_vision_layers {taps}: 1-based block indices must lie in [1, {blocks}] "
                f"(vision_config.num_hidden_layers={blocks}; the llava-hf conversions keep 26 of SigLIP's 27 blocks)"
            )
        self.tapped_vision_layers = taps
        plain = self.vision_feature_layer
        if not isinstance(plain, int):
            raise ValueError(f"vision_feature_layer {plain!r}: CCExpert needs one layer (an int), the residual base")
        if (plain if plain >= 0 else blocks + 1 + plain) != taps[-1]:
            raise ValueError(
                f"vision_feature_layer {plain}: must select the last tapped block {taps[-1]} "
                f"(hidden_states index {taps[-1]} or {taps[-1] - blocks - 1}), onto which the module's output is added"
            )
        width = self.vision_config.hidden_size
        if self.integration_num_heads is None:
            self.integration_num_heads = max(1, width // 128)
        if self.integration_num_heads < 1 or width % self.integration_num_heads:
            raise ValueError(
                f"integration_num_heads {self.integration_num_heads}: must divide the vision width {width}"
            )
        if width % 4:
            raise ValueError(f"vision_config.hidden_size {width}: the 2-D sine positions need a multiple of 4")
        if self.integration_depth < 1:
            raise ValueError(f"integration_depth {self.integration_depth}: must be at least 1")
        if self.integration_mlp_ratio <= 0:
            raise ValueError(f"integration_mlp_ratio {self.integration_mlp_ratio}: must be positive")


__all__ = ["CCExpertConfig", "proportional_taps"]
