"""InternLM2's sentencepiece `tokenizer.model` (+ HoVLE's added tokens) -> a fast tokenizer (`tokenizer.json`)
that `AutoTokenizer` loads with no custom code.

The BPE vocabulary and merges come from the sentencepiece model (merges ranked by piece score, via transformers'
`generate_merges`); normalisation follows the model's own `normalizer_spec`; user-defined pieces (`<|im_start|>`,
`<|im_end|>`, ...) are atomic special tokens with their sentencepiece ids; byte fallback is kept. With
`add_dummy_prefix=false` (assumed for InternLM2) the ids equal `SentencePieceProcessor.encode` on any text; with
`add_dummy_prefix=true` they equal it on text without special tokens, and around special tokens follow the
original slow tokenizer's convention (each text chunk between special tokens is encoded on its own).
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, processors
from transformers import PreTrainedTokenizerFast
from transformers.convert_slow_tokenizer import generate_merges, import_protobuf

from .checkpoint_io import CheckpointError

# HoVLE's tokens after InternLM2's 92544-piece vocabulary, in id order (HOVLE.md section 7).
HOVLE_ADDED_TOKENS = ("<img>", "</img>", "<IMG_CONTEXT>", "<quad>", "</quad>", "<ref>", "</ref>", "<box>", "</box>")
USER_DEFINED, CONTROL = 4, 3


def _load_proto(model_file: Path):
    proto = import_protobuf().ModelProto()
    try:
        proto.ParseFromString(model_file.read_bytes())
    except Exception as error:  # protobuf's DecodeError and friends
        raise CheckpointError(f"{model_file.name} is not a sentencepiece model: {error}") from error
    if proto.trainer_spec.model_type != 2:
        raise CheckpointError(f"{model_file.name} is not a BPE sentencepiece model (InternLM2's is)")
    return proto


def added_tokens_from_config(config_file: Path | None, base_vocab_size: int) -> list[str]:
    """Tokens beyond the sentencepiece vocabulary, in id order: from `tokenizer_config.json` when it lists them
    (`added_tokens_decoder`), else HoVLE's published list."""
    if config_file is None or not config_file.exists():
        return list(HOVLE_ADDED_TOKENS)
    decoder = json.loads(config_file.read_text()).get("added_tokens_decoder") or {}
    extra = {int(i): entry["content"] for i, entry in decoder.items() if int(i) >= base_vocab_size}
    if not extra:
        return list(HOVLE_ADDED_TOKENS)
    expected_ids = list(range(base_vocab_size, base_vocab_size + len(extra)))
    if sorted(extra) != expected_ids:
        raise CheckpointError(
            f"tokenizer_config.json: added token ids {sorted(extra)} are not contiguous from {base_vocab_size}"
        )
    return [extra[i] for i in expected_ids]


def convert_sentencepiece(
    model_file: str | Path, added_tokens: list[str] | None = None, chat_template: str | None = None
) -> PreTrainedTokenizerFast:
    model_file = Path(model_file)
    proto = _load_proto(model_file)
    vocab = {piece.piece: index for index, piece in enumerate(proto.pieces)}
    scores = {piece.piece: piece.score for piece in proto.pieces}
    spec = proto.trainer_spec
    unk = proto.pieces[spec.unk_id].piece
    backend = Tokenizer(
        models.BPE(
            vocab=vocab,
            merges=generate_merges(vocab, scores),
            unk_token=unk,
            fuse_unk=True,
            byte_fallback=spec.byte_fallback,
        )
    )
    norm = proto.normalizer_spec
    steps = []
    if norm.precompiled_charsmap:
        steps.append(normalizers.Precompiled(norm.precompiled_charsmap))
    if norm.remove_extra_whitespaces:
        steps += [normalizers.Replace(Regex(r"\A +| +\z"), ""), normalizers.Replace(Regex(" {2,}"), " ")]
    if norm.add_dummy_prefix:
        steps.append(normalizers.Prepend("▁"))
    steps.append(normalizers.Replace(" ", "▁"))
    backend.normalizer = normalizers.Sequence(steps)
    backend.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
        + ([decoders.Strip(" ", 1, 0)] if norm.add_dummy_prefix else [])
    )
    bos = proto.pieces[spec.bos_id].piece
    # BOS added, no EOS (as the original tokenizer).
    backend.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, spec.bos_id)]
    )
    # Control and user-defined pieces are atomic: matched on the raw text, never merged, kept at their ids.
    atomic = [p.piece for p in proto.pieces if p.type in (CONTROL, USER_DEFINED)]
    backend.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in atomic])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=bos,
        eos_token=proto.pieces[spec.eos_id].piece,
        unk_token=unk,
        pad_token=proto.pieces[spec.eos_id].piece,  # InternLM2 pads with </s> (pad_token_id 2)
        padding_side="left",
        chat_template=chat_template,
    )
    extra = added_tokens if added_tokens is not None else list(HOVLE_ADDED_TOKENS)
    tokenizer.add_special_tokens({"additional_special_tokens": extra}, replace_extra_special_tokens=False)
    for index, token in enumerate(extra):
        if tokenizer.convert_tokens_to_ids(token) != len(proto.pieces) + index:
            raise CheckpointError(f"added token {token!r} did not get id {len(proto.pieces) + index}")
    return tokenizer


IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


def build_processor(tokenizer: PreTrainedTokenizerFast, config):
    """The HoVLE processor for a converted model: InternVL tiling through transformers' GotOcr2 PIL image
    processor, configured from the model config (tile size, tile limits)."""
    from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil

    from hovle.processing_hovle import CHAT_TEMPLATE, HoVLEProcessor

    side = config.embedding_config.image_size
    image_processor = GotOcr2ImageProcessorPil(
        size={"height": side, "width": side},
        crop_to_patches=True,
        min_patches=config.min_dynamic_patch,
        max_patches=config.max_dynamic_patch,
        image_mean=IMAGENET_MEAN,
        image_std=IMAGENET_STD,
        do_convert_rgb=True,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return HoVLEProcessor(image_processor=image_processor, tokenizer=tokenizer, tokens_per_tile=config.tokens_per_tile)


def write_processor_files(source: Path, output: Path, config) -> dict[str, int] | None:
    """Convert the source tokenizer (if any) and save tokenizer, processor and chat template into `output`.

    Returns the ids the generation config needs, or None when the source has no tokenizer."""
    model_file = source / "tokenizer.model"
    if not model_file.exists():
        return None
    proto_size = len(_load_proto(model_file).pieces)
    tokenizer = convert_sentencepiece(
        model_file, added_tokens_from_config(source / "tokenizer_config.json", proto_size)
    )
    expected = {
        "<IMG_CONTEXT>": config.image_token_id,
        "<img>": config.image_start_token_id,
        "</img>": config.image_end_token_id,
    }
    wrong = {
        t: (tokenizer.convert_tokens_to_ids(t), i)
        for t, i in expected.items()
        if tokenizer.convert_tokens_to_ids(t) != i
    }
    if wrong:
        raise CheckpointError(f"Tokenizer and model disagree on image token ids (tokenizer, model): {wrong}")
    if len(tokenizer) > config.text_config.vocab_size:
        raise CheckpointError(
            f"Tokenizer has {len(tokenizer)} tokens, more than the model's {config.text_config.vocab_size}"
        )
    processor = build_processor(tokenizer, config)
    processor.register_for_auto_class("AutoProcessor")
    processor.save_pretrained(output)
    # The tokenizer is a stock fast tokenizer: keep the processor's remote-code pointer out of its config.
    tokenizer_config = output / "tokenizer_config.json"
    settings = json.loads(tokenizer_config.read_text())
    settings.pop("auto_map", None)
    tokenizer_config.write_text(json.dumps(settings, indent=2, ensure_ascii=False) + "\n")
    return {"im_end": tokenizer.convert_tokens_to_ids("<|im_end|>"), "pad": tokenizer.pad_token_id}
