"""CCExpert on transformers' LLaVA-OneVision classes: the Difference-aware Integration Module before the projector.

The module follows the authors' ``cc_expert.py`` (:class:`DifferenceAwareIntegrationModule`); what it computes and
where ours differs: docs/ccexpert.md.
"""

import math

import torch
from torch import nn
from torch.nn import functional as F
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.models.llava_onevision.modeling_llava_onevision import (
    LlavaOnevisionForConditionalGeneration,
    LlavaOnevisionModel,
    LlavaOnevisionPreTrainedModel,
)

from trainer.models.ccexpert.configuration_ccexpert import CCExpertConfig


def sine_positions(side: int, dim: int, *, temperature: float = 10000.0, device=None, dtype=None) -> torch.Tensor:
    """DETR-style 2-D sine positions of a ``side x side`` grid (``normalize=True``, offset -0.5, scale 2 pi).

    Args:
        side: Grid side (27 for SigLIP-so400m at 384 px).
        dim: Feature width; half encodes y, half x (a multiple of 4).
        temperature: Frequency base.
        device: Device of the result.
        dtype: Dtype of the result.

    Returns:
        ``(side * side, dim)``, row-major like the vision tokens.
    """
    feats = dim // 2
    coords = torch.arange(1, side + 1, dtype=torch.float32, device=device)
    coords = (coords - 0.5) / (side + 1e-6) * (2 * math.pi)
    freqs = temperature ** (2 * (torch.arange(feats, dtype=torch.float32, device=device) // 2) / feats)
    angles = coords[:, None] / freqs  # (side, feats)
    encoded = torch.stack((angles[:, 0::2].sin(), angles[:, 1::2].cos()), dim=-1).flatten(1)
    pos_y = encoded[:, None, :].expand(side, side, feats)
    pos_x = encoded[None, :, :].expand(side, side, feats)
    return torch.cat((pos_y, pos_x), dim=-1).reshape(side * side, dim).to(dtype)


class _Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, dim = x.shape
        return x.view(batch, tokens, self.num_heads, dim // self.num_heads).transpose(1, 2)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        out = F.scaled_dot_product_attention(
            self._heads(self.q_proj(q)), self._heads(self.k_proj(k)), self._heads(self.v_proj(v))
        )
        return self.out_proj(out.transpose(1, 2).flatten(2))


class ChangeFeatureInit(nn.Module):
    """Gated concatenation then difference: ``Linear([A*sigmoid(W[A;B]); B*sigmoid(W[B;A]); A'-B'])``.

    One linear ``W`` serves both orders, as in the authors' code (the paper's figure draws two).
    """

    def __init__(self, dim: int):
        super().__init__()
        self.gate = nn.Linear(2 * dim, dim)
        self.proj = nn.Linear(3 * dim, dim)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """The change tokens of a pair of token sequences ``(batch, tokens, dim)``."""
        a_gated = a * torch.sigmoid(self.gate(torch.cat((a, b), dim=-1)))
        b_gated = b * torch.sigmoid(self.gate(torch.cat((b, a), dim=-1)))
        return self.proj(torch.cat((a_gated, b_gated, a_gated - b_gated), dim=-1))


class ChangeAwareLayer(nn.Module):
    """One change-aware (two-way attention) layer: change tokens attend to the images, then images to change."""

    def __init__(self, dim: int, num_heads: int, mlp_dim: int):
        super().__init__()
        self.change_self_attn = _Attention(dim, num_heads)
        self.norm1 = nn.LayerNorm(dim)
        self.change_to_images = _Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_dim), nn.GELU(), nn.Linear(mlp_dim, dim))
        self.norm3 = nn.LayerNorm(dim)
        self.images_to_change = _Attention(dim, num_heads)
        self.flag_a = nn.Embedding(1, dim)
        self.flag_b = nn.Embedding(1, dim)
        self.flag_change = nn.Embedding(1, dim)

    def forward(
        self, change: torch.Tensor, a: torch.Tensor, b: torch.Tensor, pos: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Refine ``change`` against ``a`` and ``b``, then ``a`` and ``b`` against it; all ``(n, tokens, dim)``.

        Returns:
            ``(a, b, change)`` refined.
        """
        flag_a, flag_b, flag_c = self.flag_a.weight, self.flag_b.weight, self.flag_change.weight
        change = self.norm1(change + self.change_self_attn(change + pos, change + pos, change))
        keys = torch.cat((a + pos + flag_a, b + pos + flag_b, change + pos + flag_c), dim=1)
        change = self.norm2(change + self.change_to_images(change + pos + flag_c, keys, torch.cat((a, b, change), 1)))
        change = self.norm3(change + self.mlp(change))
        # A and B share the weights of this attention: run them as one batch.
        queries = torch.cat((a + pos + flag_a, b + pos + flag_b), dim=0)
        change_keys = change + pos + flag_c
        keys = torch.cat((queries, torch.cat((change_keys, change_keys), dim=0)), dim=1)
        values = torch.cat((torch.cat((a, b), dim=0), torch.cat((change, change), dim=0)), dim=1)
        refined = queries + self.images_to_change(queries, keys, values)
        a, b = refined.chunk(2, dim=0)
        return a, b, change


class DifferenceAwareIntegrationModule(nn.Module):
    """CCExpert's Diff Expert + Adaptive Adjustment, with a learnable output gate on the residual branch.

    As the authors' ``cc_expert.py`` computes it (every sample holds one pair, A before B, and the vision tower has
    run once on all images):

    1. the outputs of the tapped blocks are stacked along the batch axis, so one set of weights serves every level;
    2. each change-aware layer recomputes the Change Feature Init from the current A and B (one shared gate
       ``sigmoid(W[A;B])``, ``sigmoid(W[B;A])``, then ``Linear([A'; B'; A'-B'])``), refines the change tokens (self
       attention, cross attention to ``[A; B; change]``, MLP, each with a residual and a post-LayerNorm) and then
       lets A and B attend to ``[itself; change]`` (residual, no norm); 2-D sine positions go on queries and keys,
       learned flag embeddings mark A, B and change;
    3. Adaptive Adjustment weighs the levels with one sigmoid scalar per level and sample, from mean-pooled
       ``[A; B; change]``, and takes the normalised weighted sum of A (and of B);
    4. ``output_gate * fused`` is added onto the last tapped level, which then goes through the usual projector.
       The fused change tokens are not given to the language model (as in the authors' code).

    Args:
        dim: Width of the vision features.
        num_levels: Number of tapped vision blocks.
        depth: Change-aware layers (shared across levels).
        num_heads: Attention heads.
        mlp_ratio: MLP width over ``dim``.
    """

    def __init__(self, dim: int, num_levels: int, depth: int = 2, num_heads: int = 1, mlp_ratio: float = 4.0):
        super().__init__()
        self.num_levels = num_levels
        self.change_init = ChangeFeatureInit(dim)
        self.layers = nn.ModuleList(ChangeAwareLayer(dim, num_heads, int(dim * mlp_ratio)) for _ in range(depth))
        self.level_gate = nn.Sequential(nn.Linear(3 * dim, dim), nn.GELU(), nn.Linear(dim, 1))
        self.output_gate = nn.Parameter(torch.ones(()))

    def forward(self, levels_a: list[torch.Tensor], levels_b: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """Fuse the tapped levels of a batch of pairs.

        Args:
            levels_a: One ``(pairs, tokens, dim)`` tensor per tapped block, image A; tokens a square grid.
            levels_b: The same for image B.

        Returns:
            ``enhanced_a``, ``enhanced_b`` (the last level plus ``output_gate *`` the fused A / B, what the projector
            receives), ``change`` (the fused change tokens), ``level_weights`` (``(pairs, levels)``, the gates).
        """
        if len(levels_a) != self.num_levels or len(levels_b) != self.num_levels:
            raise ValueError(f"expected {self.num_levels} tapped levels, got {len(levels_a)} and {len(levels_b)}")
        pairs, tokens, dim = levels_a[0].shape
        side = math.isqrt(tokens)
        if side * side != tokens:
            raise ValueError(f"the module needs a square token grid, got {tokens} tokens per image")
        pos = sine_positions(side, dim, device=levels_a[0].device, dtype=levels_a[0].dtype)
        a, b = torch.cat(levels_a, dim=0), torch.cat(levels_b, dim=0)
        change = None
        for layer in self.layers:
            init_change = self.change_init(a, b)
            change = init_change if change is None else change + init_change
            a, b, change = layer(change, a, b, pos)
        per_level = [t.view(self.num_levels, pairs, tokens, dim) for t in (a, b, change)]
        pooled = torch.cat([t.mean(dim=2) for t in per_level], dim=-1)  # (levels, pairs, 3 dim)
        weights = torch.sigmoid(self.level_gate(pooled))[..., None]  # (levels, pairs, 1, 1)
        total = weights.sum(dim=0) + 1e-6
        fused_a, fused_b, fused_change = ((t * weights).sum(dim=0) / total for t in per_level)
        return {
            "enhanced_a": levels_a[-1] + self.output_gate * fused_a,
            "enhanced_b": levels_b[-1] + self.output_gate * fused_b,
            "change": fused_change,
            "level_weights": weights[..., 0, 0].transpose(0, 1),
        }


class CCExpertPreTrainedModel(LlavaOnevisionPreTrainedModel):
    """Weight init of the module as the authors': truncated normal linears, unit flags, the configured gate."""

    config: CCExpertConfig

    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, DifferenceAwareIntegrationModule):
            init.constant_(module.output_gate, self.config.integration_gate_init)
            for sub in module.modules():
                if isinstance(sub, nn.Linear):
                    init.trunc_normal_(sub.weight, std=self.config.integration_init_std)
                    init.zeros_(sub.bias)
                elif isinstance(sub, nn.Embedding):
                    init.normal_(sub.weight, std=1.0)  # nn.Embedding's own init, which the authors keep
        elif isinstance(module, CCExpertModel):
            init.normal_(module.image_newline, std=1 / math.sqrt(self.config.text_config.hidden_size))


class CCExpertModel(CCExpertPreTrainedModel, LlavaOnevisionModel):
    """LLaVA-OneVision's model whose image features come from the vision tower, the module, then the projector."""

    def __init__(self, config: CCExpertConfig):
        LlavaOnevisionModel.__init__(self, config)
        self.integration_module = DifferenceAwareIntegrationModule(
            config.vision_config.hidden_size,
            num_levels=len(config.tapped_vision_layers),
            depth=config.integration_depth,
            num_heads=config.integration_num_heads,
            mlp_ratio=config.integration_mlp_ratio,
        )
        self.post_init()

    def get_image_features(
        self,
        pixel_values: torch.Tensor,
        image_sizes: torch.Tensor | None = None,
        vision_feature_layer: int | list[int] | None = None,
        vision_feature_select_strategy: str | None = None,
        vision_aspect_ratio: str | None = None,
        batch_num_images: torch.LongTensor | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPooling:
        """Image features of a batch of pairs (A then B in every sample), enhanced by the module and projected.

        Each image is one square tile (no anyres), as in CCExpert (``image_aspect_ratio="square"``).

        Args:
            pixel_values: ``(images, C, H, W)`` or the processor's ``(images, tiles, C, H, W)`` (the first tile, the
                whole image resized, is used).
            image_sizes: Unused (kept for the LLaVA-OneVision signature).
            vision_feature_layer: Unused: the module reads ``config.tapped_vision_layers``.
            vision_feature_select_strategy: ``"default"`` drops a CLS token; ``None``: the config's.
            vision_aspect_ratio: Unused.
            batch_num_images: Images per sample; each must be 2.
            **kwargs: Passed to the vision tower (``output_hidden_states`` is forced on).

        Returns:
            ``pooler_output``: one ``(tokens + 1, text_width)`` tensor per image (the +1 is LLaVA-OneVision's
            image newline of multi-image prompts); ``change_features`` and ``level_weights`` from the module.
        """
        if batch_num_images is not None and any(int(n) != 2 for n in batch_num_images):
            raise ValueError(
                f"CCExpert takes exactly 2 images per sample (before, after), got {batch_num_images.tolist()}"
            )
        if pixel_values.dim() == 5:
            pixel_values = pixel_values[:, 0]
        if pixel_values.dim() != 4 or pixel_values.shape[0] % 2:
            raise ValueError(f"CCExpert needs an even number of images (A, B per sample), got {pixel_values.shape}")
        strategy = vision_feature_select_strategy or self.config.vision_feature_select_strategy
        kwargs.pop("return_dict", None)
        kwargs["output_hidden_states"] = True
        outputs = self.vision_tower(pixel_values, return_dict=True, **kwargs)
        levels = [outputs.hidden_states[i] for i in self.config.tapped_vision_layers]
        if strategy == "default":
            levels = [level[:, 1:] for level in levels]
        mixed = self.integration_module([lv[0::2] for lv in levels], [lv[1::2] for lv in levels])
        enhanced = torch.stack((mixed["enhanced_a"], mixed["enhanced_b"]), dim=1).flatten(0, 1)  # A0, B0, A1, ...
        projected = self.multi_modal_projector(enhanced)
        newline = self.image_newline[None, None].to(projected).expand(projected.shape[0], 1, -1)
        outputs.pooler_output = tuple(torch.cat((projected, newline), dim=1).unbind(0))
        outputs["change_features"] = mixed["change"]
        outputs["level_weights"] = mixed["level_weights"]
        return outputs


class CCExpertForConditionalGeneration(CCExpertPreTrainedModel, LlavaOnevisionForConditionalGeneration):
    """LLaVA-OneVision for generation with CCExpert's image path; everything else (text, video) unchanged."""

    config_class = CCExpertConfig

    def __init__(self, config: CCExpertConfig):
        CCExpertPreTrainedModel.__init__(self, config)
        self.model = CCExpertModel(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        self.post_init()


__all__ = [
    "CCExpertForConditionalGeneration",
    "CCExpertModel",
    "CCExpertPreTrainedModel",
    "ChangeAwareLayer",
    "ChangeFeatureInit",
    "DifferenceAwareIntegrationModule",
    "sine_positions",
]
