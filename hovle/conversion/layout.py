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
from .checkpoint_io import CheckpointError, name_keys

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
    """Raise a `CheckpointError` naming the unknown, missing or mis-shaped tensors of `shapes` (the first few of
    each, then how many more)."""
    unexpected = sorted(k for k in shapes if k not in expected)
    missing = sorted(k for k in expected if k not in shapes)
    wrong = [
        f"{k}: {list(shapes[k])} != expected {list(expected[k])}"
        for k in shapes
        if k in expected and shapes[k] != expected[k]
    ]
    problems = []
    if unexpected:
        problems.append(f"{len(unexpected)} unknown tensor(s) not in the HoVLE layout: {name_keys(unexpected)}")
    if missing:
        problems.append(f"{len(missing)} missing tensor(s): {name_keys(missing)}")
    if wrong:
        problems.append(f"{len(wrong)} wrong shape(s): {name_keys(wrong)}")
    if problems:
        raise CheckpointError(f"Cannot {action}: " + "; ".join(problems))


# What the config's sizes imply for tensors both layouts hold, checked from the tensor names and shapes alone before
# anything is built: (original key, axis, stack, config attribute). An absurd layer count would otherwise first build
# a meta model of that depth (minutes) and then list every missing tensor.
_SIZE_CARRIERS = (
    ("embedding_model.llm_text_embeddings.weight", 0, "embedding", "vocab_size"),
    ("embedding_model.llm_text_embeddings.weight", 1, "embedding", "hidden_size"),
    ("language_model.model.tok_embeddings.weight", 0, "text", "vocab_size"),
    ("language_model.output.weight", 0, "text", "vocab_size"),
    ("language_model.model.tok_embeddings.weight", 1, "text", "hidden_size"),
    ("language_model.output.weight", 1, "text", "hidden_size"),
    ("language_model.model.norm.weight", 0, "text", "hidden_size"),
)
# How each layout's config.json names those numbers.
_CONFIG_FIELDS = {
    "original": {
        ("embedding", "num_hidden_layers"): "embedding_config.num_hidden_layers",
        ("text", "num_hidden_layers"): "llm_config.num_hidden_layers",
        ("embedding", "hidden_size"): "embedding_config.hidden_size",
        ("text", "hidden_size"): "llm_config.hidden_size",
        ("embedding", "vocab_size"): "embedding_config.llm_vocab_size",
        ("text", "vocab_size"): "llm_config.vocab_size",
    },
    "ours": {
        (stack, attribute): f"{'embedding_config' if stack == 'embedding' else 'text_config'}.{attribute}"
        for stack in ("embedding", "text")
        for attribute in ("num_hidden_layers", "hidden_size", "vocab_size")
    },
}
_STACK_NAMES = {"embedding": "embedding-module", "text": "LLM"}
_SIZE_NAMES = {"hidden_size": "hidden size", "vocab_size": "vocabulary size"}


def check_config_against_tensors(shapes: dict[str, tuple[int, ...]], config: HoVLEConfig, layout: str) -> None:
    """The config's layer counts, hidden sizes and vocabulary sizes against what the tensor names and shapes of a
    checkpoint in `layout` ("original" or "ours") imply; a `CheckpointError` naming both numbers on a mismatch.

    A size is blamed on the config only when every tensor that carries it agrees on another value: tensors that
    disagree among themselves are a broken checkpoint, which `check_shapes` reports tensor by tensor."""
    fields = _CONFIG_FIELDS[layout]
    subs = {"embedding": config.embedding_config, "text": config.text_config}
    problems = []
    for stack, prefixes in _STACKS.items():
        prefix = prefixes[0] if layout == "original" else prefixes[1]
        pattern = re.compile(re.escape(prefix).replace(re.escape("{}"), r"(\d+)"))
        numbers = {key: int(match.group(1)) for key in shapes if (match := pattern.match(key))}
        held = max(numbers.values()) + 1 if numbers else 0
        expected = subs[stack].num_hidden_layers
        if held == expected:
            continue
        said = f"config.json: {fields[stack, 'num_hidden_layers']} is {expected}, but the checkpoint's tensors hold"
        if not numbers:
            problems.append(f"{said} no {_STACK_NAMES[stack]} layer (no {prefix.format('N')}* tensor)")
            continue
        found = f"{said} {held} {_STACK_NAMES[stack]} layer(s) ({prefix.format(0)}* .. {prefix.format(held - 1)}*)"
        beyond = sorted((k for k, n in numbers.items() if n >= expected), key=lambda k: (numbers[k], k))
        problems.append(f"{found}; tensors beyond the config's layers: {name_keys(beyond)}" if beyond else found)
    carriers = {}
    for original_key, axis, stack, attribute in _SIZE_CARRIERS:
        key = original_key if layout == "original" else _EXACT[original_key]
        if key in shapes and len(shapes[key]) > axis:
            carriers.setdefault((stack, attribute), []).append((key, shapes[key], shapes[key][axis]))
    for (stack, attribute), found in carriers.items():
        expected = getattr(subs[stack], attribute)
        values = {value for _, _, value in found}
        if len(values) == 1 and expected not in values:
            named = ", ".join(f"{key} has shape {list(shape)}" for key, shape, _ in found)
            problems.append(
                f"config.json: {fields[stack, attribute]} is {expected}, but {named} ({_SIZE_NAMES[attribute]} "
                f"{values.pop()})"
            )
    if problems:
        action = "convert" if layout == "original" else "export"
        raise CheckpointError(f"Cannot {action}: " + "; ".join(problems))


def validate_original(shapes: dict[str, tuple[int, ...]], config: HoVLEConfig) -> None:
    """An original-layout checkpoint holds exactly the tensors `config` implies."""
    check_config_against_tensors(shapes, config, "original")
    check_shapes(shapes, expected_original_shapes(config), "convert")


def validate_transformers(shapes: dict[str, tuple[int, ...]], config: HoVLEConfig) -> None:
    """A transformers-layout checkpoint holds exactly our model's tensors."""
    check_config_against_tensors(shapes, config, "ours")
    check_shapes(shapes, model_state_shapes(config), "export")
