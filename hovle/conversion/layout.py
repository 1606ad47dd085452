"""The HoVLE checkpoint layout: one key table between the original release's keys and ours, the shapes both sides
must have, and the validation every consumer (import, export, fixtures, benchmarks) goes through.

Original (InternVL code base, InternLM2 blocks with a fused `wqkv`)      ->  ours (transformers Llama blocks)
`{}` stands for a layer number. Keys not matched exactly, nor by a layer pattern, are errors: there is no
"skip unknown" path. Nothing in the original checkpoint is dropped on purpose (the unused class embedding and the
LLM's own token table are kept so the reverse export is bit-exact).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from ..configuration_hovle import HoVLEConfig
from ..modeling_hovle import HoVLEForConditionalGeneration
from .checkpoint_io import CheckpointError

# Whole-key renames.
_EXACT = {
    "embedding_model.vision_embeddings.patch_embedding.weight": "model.embedding_model.vision_embeddings.patch_embedding.weight",
    "embedding_model.vision_embeddings.patch_embedding.bias": "model.embedding_model.vision_embeddings.patch_embedding.bias",
    "embedding_model.vision_embeddings.position_embedding": "model.embedding_model.vision_embeddings.position_embedding",
    "embedding_model.vision_embeddings.class_embedding": "model.embedding_model.vision_embeddings.class_embedding",
    "embedding_model.llm_text_embeddings.weight": "model.embedding_model.embed_tokens.weight",
    "embedding_model.pixel_shuffle_proj.0.weight": "model.embedding_model.projector.linear_1.weight",
    "embedding_model.pixel_shuffle_proj.0.bias": "model.embedding_model.projector.linear_1.bias",
    "embedding_model.pixel_shuffle_proj.2.weight": "model.embedding_model.projector.linear_2.weight",
    "embedding_model.pixel_shuffle_proj.2.bias": "model.embedding_model.projector.linear_2.bias",
    "language_model.model.tok_embeddings.weight": "model.language_model.embed_tokens.weight",
    "language_model.model.norm.weight": "model.language_model.norm.weight",
    "language_model.output.weight": "lm_head.weight",
}

# Per-layer renames, identical for both stacks. A tuple target is a fused tensor split in that order.
_LAYER = {
    "attention.wqkv.weight": ("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight"),
    "attention.wo.weight": "self_attn.o_proj.weight",
    "feed_forward.w1.weight": "mlp.gate_proj.weight",
    "feed_forward.w3.weight": "mlp.up_proj.weight",
    "feed_forward.w2.weight": "mlp.down_proj.weight",
    "attention_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
}

# Stack prefixes: original -> ours. The stack name selects the attention geometry used to split `wqkv`.
_STACKS = {
    "embedding": ("embedding_model.encoder.{}.", "model.embedding_model.layers.{}."),
    "text": ("language_model.model.layers.{}.", "model.language_model.layers.{}."),
}


@dataclass(frozen=True)
class AttentionGeometry:
    """What it takes to split or fuse a `wqkv`: rows are grouped per KV head as [q_0..q_{g-1}, k, v]."""

    num_heads: int
    num_kv_heads: int
    head_dim: int

    @property
    def queries_per_kv(self) -> int:
        return self.num_heads // self.num_kv_heads

    def split_wqkv(self, wqkv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        hidden = wqkv.shape[-1]
        groups = wqkv.reshape(self.num_kv_heads, self.queries_per_kv + 2, self.head_dim, hidden)
        q = groups[:, : self.queries_per_kv].reshape(-1, hidden)  # query head = kv_head * g + slot
        k = groups[:, -2].reshape(-1, hidden)
        v = groups[:, -1].reshape(-1, hidden)
        return q.contiguous(), k.contiguous(), v.contiguous()

    def fuse_wqkv(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        hidden = q.shape[-1]
        groups = torch.cat(
            [
                q.reshape(self.num_kv_heads, self.queries_per_kv, self.head_dim, hidden),
                k.reshape(self.num_kv_heads, 1, self.head_dim, hidden),
                v.reshape(self.num_kv_heads, 1, self.head_dim, hidden),
            ],
            dim=1,
        )
        return groups.reshape(-1, hidden)


def geometries_from_config(config) -> dict[str, AttentionGeometry]:
    """`config` is a `HoVLEConfig`; one geometry per stack."""

    def geometry(sub) -> AttentionGeometry:
        return AttentionGeometry(sub.num_attention_heads, sub.num_key_value_heads, sub.head_dim)

    return {"embedding": geometry(config.embedding_config), "text": geometry(config.text_config)}


_LAYER_NUMBER = re.compile(r"\.(\d+)\.")


@dataclass(frozen=True)
class KeyMapping:
    original: str
    targets: tuple[str, ...]  # one ours-key, or q/k/v for a fused wqkv
    stack: str | None  # "embedding" / "text" for layer keys (selects the geometry), else None

    @property
    def is_fused(self) -> bool:
        return len(self.targets) > 1


def map_original_key(key: str) -> KeyMapping | None:
    """The mapping of one original key, or None when the key is not part of the layout."""
    if key in _EXACT:
        return KeyMapping(key, (_EXACT[key],), None)
    match = _LAYER_NUMBER.search(key)
    if match is None:
        return None
    number = match.group(1)
    pattern = key[: match.start()] + ".{}." + key[match.end() :]
    for stack, (original_prefix, ours_prefix) in _STACKS.items():
        if not pattern.startswith(original_prefix):
            continue
        suffix = pattern[len(original_prefix) :]
        target = _LAYER.get(suffix)
        if target is None:
            return None
        targets = target if isinstance(target, tuple) else (target,)
        return KeyMapping(key, tuple(ours_prefix.format(number) + t for t in targets), stack)
    return None


def original_keys_for(num_embedding_layers: int, num_text_layers: int) -> Iterator[str]:
    """Every original key of a model of this depth, in the table's order."""
    yield from (k for k in _EXACT if k.startswith("embedding_model."))
    for stack, layers in (("embedding", num_embedding_layers), ("text", num_text_layers)):
        prefix = _STACKS[stack][0]
        for layer in range(layers):
            for suffix in _LAYER:
                yield prefix.format(layer) + suffix
        if stack == "embedding":
            yield from (k for k in _EXACT if not k.startswith("embedding_model."))


def original_to_ours(mapping: KeyMapping, tensor: torch.Tensor, geometries: dict[str, AttentionGeometry]):
    """(our key, tensor) pairs for one original tensor."""
    if mapping.is_fused:
        return list(zip(mapping.targets, geometries[mapping.stack].split_wqkv(tensor), strict=True))
    return [(mapping.targets[0], tensor)]


def ours_to_original(mapping: KeyMapping, tensors: list[torch.Tensor], geometries: dict[str, AttentionGeometry]):
    """The original tensor rebuilt from its targets' tensors (in `mapping.targets` order)."""
    if mapping.is_fused:
        return geometries[mapping.stack].fuse_wqkv(*tensors)
    return tensors[0]


def model_state_shapes(config: HoVLEConfig) -> dict[str, tuple[int, ...]]:
    """Our model's tensors and shapes, from a model built on the meta device (no memory, any size)."""
    with torch.device("meta"):
        model = HoVLEForConditionalGeneration(config)
    return {key: tuple(tensor.shape) for key, tensor in model.state_dict().items()}


def expected_original_shapes(config: HoVLEConfig) -> dict[str, tuple[int, ...]]:
    """Every original key this config implies, with its shape: our meta tensors pushed back through the table.

    Also checks the table itself: every model tensor is produced by exactly one original key.
    """
    ours = model_state_shapes(config)
    meta = {key: torch.empty(shape, device="meta") for key, shape in ours.items()}
    geometries = geometries_from_config(config)
    expected, produced = {}, []
    for key in original_keys_for(config.embedding_config.num_hidden_layers, config.text_config.num_hidden_layers):
        mapping = map_original_key(key)
        expected[key] = tuple(ours_to_original(mapping, [meta[t] for t in mapping.targets], geometries).shape)
        produced.extend(mapping.targets)
    if sorted(produced) != sorted(ours):
        raise AssertionError(f"key table out of sync with the model: {sorted(set(produced) ^ set(ours))}")
    return expected


def check_shapes(shapes: dict[str, tuple[int, ...]], expected: dict[str, tuple[int, ...]], action: str) -> None:
    """Raise a `CheckpointError` naming every unknown, missing or mis-shaped tensor of `shapes`."""
    unexpected = sorted(k for k in shapes if k not in expected)
    missing = sorted(k for k in expected if k not in shapes)
    wrong = [
        f"{k}: {list(shapes[k])} != expected {list(expected[k])}"
        for k in shapes
        if k in expected and shapes[k] != expected[k]
    ]
    problems = []
    if unexpected:
        problems.append(f"unknown tensor(s) not in the HoVLE layout: {unexpected}")
    if missing:
        problems.append(f"missing tensor(s): {missing}")
    if wrong:
        problems.append(f"wrong shape(s): {wrong}")
    if problems:
        raise CheckpointError(f"Cannot {action}: " + "; ".join(problems))


def validate_original(shapes: dict[str, tuple[int, ...]], config: HoVLEConfig) -> None:
    """An original-layout checkpoint holds exactly the tensors `config` implies."""
    check_shapes(shapes, expected_original_shapes(config), "convert")


def validate_transformers(shapes: dict[str, tuple[int, ...]], config: HoVLEConfig) -> None:
    """A transformers-layout checkpoint holds exactly our model's tensors."""
    check_shapes(shapes, model_state_shapes(config), "export")
