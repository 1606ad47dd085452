"""The release's InternLM2 tokenizer files -> a fast tokenizer (`tokenizer.json`) that `AutoTokenizer` loads with no
custom code and that gives the ids and texts of the release's slow `InternLM2Tokenizer`.

What the slow tokenizer (sentencepiece under transformers 4.x's `PreTrainedTokenizer`) does, and how the fast one
reproduces it:
* Ids: the sentencepiece model's pieces, overlaid by `tokenizer_config.json`'s `added_tokens_decoder` and by
  `added_tokens.json`. An entry at an id inside the model RENAMES that piece (InternLM2's ids 92538-92543 are pieces
  `[UNUSED_TOKEN_141..146]` that the release names `<|plugin|>` .. `<|im_start|>`); entries past it append tokens
  (HoVLE's `<img>` 92544, `</img>`, `<IMG_CONTEXT>`, ...). Every source must agree: a token given two ids, an id
  given two tokens, or an id past the model's vocabulary is a `CheckpointError` naming the token and both ids.
* Encoding: the text is split at the added tokens, each chunk goes through `SentencePieceProcessor.encode`, and
  `<s>` comes first (`add_bos_token`; `</s>` last with `add_eos_token`). The fast tokenizer matches the added tokens
  and sentencepiece's user-defined pieces atomically (sentencepiece never merges those either). A renamed
  user-defined piece is still matched by sentencepiece under its old name inside a chunk, so the old name is
  normalised to the new one.
* Pieces sentencepiece never emits (type UNUSED, and a literal NUL piece under byte fallback, which sentencepiece
  >= 0.2.1 treats as unused: InternLM2's id 354) keep their ids under a name no text produces, so "\\x00" goes
  through byte fallback (`<0x00>`, id 3) as in sentencepiece.
* Decoding: sentencepiece's join, then the slow tokenizer's `clean_up_tokenization` (" ." -> ".", " 's" -> "'s",
  ...), which its `convert_tokens_to_string` applies unconditionally: replies read as the release's `chat()` gave
  them. The clean-up runs inside the tokenizer's decoder (after the pieces are fused), so every consumer of
  `tokenizer.json` gets it, whatever its transformers version.

transformers' own sentencepiece conversion (5.2x) is not used because on InternLM2's real file it maps "\\x00" to
the unused piece 354, splits `[UNUSED_TOKEN_146]` into pieces and skips the clean-up.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, processors
from transformers import PreTrainedTokenizerFast
from transformers.convert_slow_tokenizer import import_protobuf
from transformers.tokenization_utils_base import generate_merges

from ..processing_hovle import build_processor, exact_decoder
from .checkpoint_io import CheckpointError, read_json_object
from .config_map import check_setting

# sentencepiece's piece types (sentencepiece_model.proto).
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
SPECIAL_ROLES = ("bos_token", "eos_token", "unk_token", "pad_token")
# The release's slow tokenizer's defaults for the roles its files do not name.
DEFAULT_SPECIAL_TOKENS = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "</s>"}
# transformers 4.x `PreTrainedTokenizerBase.clean_up_tokenization`, in its order.
CLEAN_UP_REPLACEMENTS = (
    (" .", "."),
    (" ?", "?"),
    (" !", "!"),
    (" ,", ","),
    (" ' ", "'"),
    (" n't", "n't"),
    (" 'm", "'m"),
    (" 's", "'s"),
    (" 've", "'ve"),
    (" 're", "'re"),
)
TOKENIZER_FILES = ("tokenizer.model", "tokenizer_config.json", "added_tokens.json", "special_tokens_map.json")


def exact_decoding_backend(tokenizer: PreTrainedTokenizerFast) -> Tokenizer:
    """A copy of a converted tokenizer's backend whose decoder leaves out the release's clean-up (" ." -> "."):
    its `decode` gives back the very text that encodes to the ids (`encode(decode(ids)) == ids`), which a consumer
    needs when it edits a tokenized prompt as text and encodes it again (vLLM's placeholder replacement does). Which
    decoder steps are the clean-up is the processor's rule (`exact_decoder`), not repeated here."""
    backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    exact = exact_decoder(tokenizer)
    if exact is not None:
        backend.decoder = exact
    return backend


@dataclass(frozen=True)
class TokenEntry:
    """One added token as `added_tokens_decoder` describes it."""

    content: str
    special: bool = True
    lstrip: bool = False
    rstrip: bool = False
    single_word: bool = False


@dataclass
class TokenizerFiles:
    """What a release's tokenizer files say, merged the way the slow tokenizer merges them, every conflict refused."""

    added: dict[int, TokenEntry] = field(default_factory=dict)  # id -> token
    special_tokens: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_SPECIAL_TOKENS))  # role -> content
    additional_special_tokens: list[str] = field(default_factory=list)
    add_bos_token: bool = True
    add_eos_token: bool = False
    _origin: dict[int, str] = field(default_factory=dict, repr=False)  # id -> the file that gave it

    @classmethod
    def read(cls, folder: str | Path) -> TokenizerFiles:
        folder = Path(folder)
        config = _read_json(folder / "tokenizer_config.json")
        files = cls(add_bos_token=check_setting(config, "add_bos_token", "bool", True, "tokenizer_config.json"))
        files.add_eos_token = check_setting(config, "add_eos_token", "bool", False, "tokenizer_config.json")
        for raw_id, entry in (config.get("added_tokens_decoder") or {}).items():
            token_id = _as_id(raw_id, "tokenizer_config.json added_tokens_decoder")
            if not isinstance(entry, dict) or not isinstance(entry.get("content"), str):
                raise CheckpointError(f"tokenizer_config.json: added_tokens_decoder[{raw_id!r}] has no 'content'")
            fields = {k: entry[k] for k in TokenEntry.__dataclass_fields__ if k in entry}
            files._add(token_id, TokenEntry(**fields), "tokenizer_config.json")
        for content, raw_id in _read_json(folder / "added_tokens.json").items():
            token_id = _as_id(raw_id, f"added_tokens.json[{content!r}]")
            files._add(token_id, TokenEntry(content, special=False), "added_tokens.json")
        special_map = _read_json(folder / "special_tokens_map.json")
        for role in SPECIAL_ROLES:
            named = {
                source: _content(settings[role])
                for source, settings in (("tokenizer_config.json", config), ("special_tokens_map.json", special_map))
                if settings.get(role) is not None
            }
            if len(set(named.values())) > 1:
                (first, a), (second, b) = named.items()
                raise CheckpointError(f"{role} is {a!r} in {first} but {b!r} in {second}")
            if named:
                files.special_tokens[role] = next(iter(named.values()))
        for settings in (config, special_map):
            for key in ("additional_special_tokens", "extra_special_tokens"):
                listed = settings.get(key) or []
                for token in listed if isinstance(listed, list) else []:
                    if _content(token) not in files.additional_special_tokens:
                        files.additional_special_tokens.append(_content(token))
        return files

    def _add(self, token_id: int, entry: TokenEntry, where: str) -> None:
        for other_id, other in self.added.items():
            if other.content == entry.content and other_id != token_id:
                raise CheckpointError(
                    f"token {entry.content!r} has id {other_id} in {self._origin[other_id]} but {token_id} in {where}"
                )
        known = self.added.get(token_id)
        if known is not None and known.content != entry.content:
            raise CheckpointError(
                f"id {token_id} is token {known.content!r} in {self._origin[token_id]} but {entry.content!r} in {where}"
            )
        if known is None:
            self.added[token_id] = entry
            self._origin[token_id] = where

    def special_names(self) -> list[str]:
        names = [self.special_tokens[role] for role in SPECIAL_ROLES]
        return list(dict.fromkeys(names + self.additional_special_tokens))


def _read_json(path: Path) -> dict:
    """An optional tokenizer file's JSON object ({} when the file is absent)."""
    return read_json_object(path) if path.exists() else {}


def _as_id(value, where: str) -> int:
    try:
        token_id = int(value)
    except (TypeError, ValueError):
        raise CheckpointError(f"{where}: {value!r} is not a token id") from None
    if token_id < 0:
        raise CheckpointError(f"{where}: negative token id {token_id}")
    return token_id


def _content(token) -> str:
    """A special token as the files write it: a string, or an `AddedToken` dict."""
    return token["content"] if isinstance(token, dict) else str(token)


def load_sentencepiece(model_file: Path):
    proto = import_protobuf().ModelProto()
    try:
        proto.ParseFromString(model_file.read_bytes())
    except Exception as error:  # protobuf's DecodeError and friends
        raise CheckpointError(f"{model_file.name} is not a sentencepiece model: {error}") from error
    if proto.trainer_spec.model_type != 2 or not proto.pieces:
        raise CheckpointError(f"{model_file.name} is not a BPE sentencepiece model (InternLM2's is)")
    return proto


def _never_emitted(proto, index: int) -> bool:
    """Pieces sentencepiece never produces from text (its `IsUnused` pieces, NUL under byte fallback included)."""
    piece = proto.pieces[index]
    return piece.type == UNUSED or (piece.piece == "\x00" and proto.trainer_spec.byte_fallback)


def resolve_vocabulary(proto, files: TokenizerFiles, model_vocab_size: int | None) -> dict[int, TokenEntry]:
    """Every added or special token with its id, checked against the sentencepiece model and the model's vocabulary.

    Returns id -> entry for the tokens the fast tokenizer adds (the files' added tokens, the special tokens they
    name, and sentencepiece's user-defined pieces, which are atomic)."""
    pieces = [piece.piece for piece in proto.pieces]
    piece_ids = {piece: index for index, piece in enumerate(pieces)}
    limit = model_vocab_size if model_vocab_size is not None else float("inf")
    for token_id, entry in sorted(files.added.items()):
        if token_id >= limit:
            raise CheckpointError(
                f"token {entry.content!r} has id {token_id}, beyond the model's vocabulary of {model_vocab_size}"
            )
        at = piece_ids.get(entry.content)
        if at is not None and at != token_id and files.added.get(at, TokenEntry(pieces[at])).content == pieces[at]:
            raise CheckpointError(
                f"token {entry.content!r} has id {token_id} in the tokenizer files but {at} in tokenizer.model"
            )
        if token_id < len(pieces) and entry.content != pieces[token_id]:
            if proto.pieces[token_id].type in (NORMAL, BYTE):
                raise CheckpointError(
                    f"the tokenizer files rename piece {token_id} of tokenizer.model ({pieces[token_id]!r}, which "
                    f"BPE merges build) to {entry.content!r}; only special and user-defined pieces can be renamed"
                )
    appended = sorted(i for i in files.added if i >= len(pieces))
    if appended != list(range(len(pieces), len(pieces) + len(appended))):
        missing = next(i for i in range(len(pieces), appended[-1]) if i not in files.added)
        raise CheckpointError(
            f"added token ids must follow tokenizer.model's {len(pieces)} pieces without a gap: no token has id "
            f"{missing} but {files.added[appended[-1]].content!r} has {appended[-1]}"
        )

    table = {i: TokenEntry(pieces[i], special=False) for i, p in enumerate(proto.pieces) if p.type == USER_DEFINED}
    table.update(files.added)
    content_ids = {entry.content: token_id for token_id, entry in table.items()}
    spec = proto.trainer_spec
    sentencepiece_roles = {"bos_token": spec.bos_id, "eos_token": spec.eos_id, "unk_token": spec.unk_id}
    for name in files.special_names():
        token_id = content_ids.get(name, piece_ids.get(name))
        if token_id is None:
            raise CheckpointError(f"special token {name!r} is neither in tokenizer.model nor an added token")
        if token_id not in table and proto.pieces[token_id].type == NORMAL:
            raise CheckpointError(f"special token {name!r} is an ordinary BPE piece of tokenizer.model")
        table[token_id] = replace(table.get(token_id, TokenEntry(name)), special=True)
    # The slow tokenizer takes BOS/EOS/UNK ids from the sentencepiece model, whatever the files name them.
    for role, model_id in sentencepiece_roles.items():
        name = files.special_tokens[role]
        if model_id >= 0 and content_ids.get(name, piece_ids.get(name)) != model_id:
            raise CheckpointError(
                f"{role} {name!r} has id {content_ids.get(name, piece_ids.get(name))} but tokenizer.model's "
                f"{role.split('_')[0].upper()} is id {model_id} ({pieces[model_id]!r})"
            )
    return table


def _piece_names(proto, table: dict[int, TokenEntry]) -> tuple[list[str], list[tuple[str, str]]]:
    """The fast vocabulary's name per sentencepiece id, and (old name, new name) of the renamed user-defined pieces."""
    names = [piece.piece for piece in proto.pieces]
    aliases = []
    for index, piece in enumerate(proto.pieces):
        if index in table and table[index].content != piece.piece:
            if piece.type == USER_DEFINED:
                aliases.append((piece.piece, table[index].content))
            names[index] = table[index].content
        elif _never_emitted(proto, index):
            names[index] = f"<never emitted: piece {index}>"
    return names, aliases


def _bpe_backend(proto, names: list[str], vocab: dict[str, int], aliases: list[tuple[str, str]]) -> Tokenizer:
    """sentencepiece's BPE as a `tokenizers` backend: model, normaliser and decoder (the release's clean-up last)."""
    spec, norm = proto.trainer_spec, proto.normalizer_spec
    # Only normal pieces are merged, from normal pieces, ranked by score (sentencepiece's BPE).
    normal = {
        names[i]: p.score for i, p in enumerate(proto.pieces) if p.type == NORMAL and not _never_emitted(proto, i)
    }
    merges = generate_merges(vocab, normal, skip_tokens=set(vocab) - set(normal))
    backend = Tokenizer(
        models.BPE(
            vocab=vocab, merges=merges, unk_token=names[spec.unk_id], fuse_unk=True, byte_fallback=spec.byte_fallback
        )
    )
    steps = [normalizers.Replace(old, new) for old, new in aliases]
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
        + [decoders.Replace(old, new) for old, new in CLEAN_UP_REPLACEMENTS]
    )
    return backend


def build_fast_tokenizer(
    model_file: str | Path,
    files: TokenizerFiles | None = None,
    model_vocab_size: int | None = None,
    model_max_length: int | None = None,
    chat_template: str | None = None,
) -> PreTrainedTokenizerFast:
    """The fast tokenizer for a sentencepiece `tokenizer.model` and what the release's other files say of it."""
    proto = load_sentencepiece(Path(model_file))
    files = files if files is not None else TokenizerFiles()
    table = resolve_vocabulary(proto, files, model_vocab_size)
    names, aliases = _piece_names(proto, table)
    vocab = {name: index for index, name in enumerate(names)}
    backend = _bpe_backend(proto, names, vocab, aliases)
    bos, eos = names[proto.trainer_spec.bos_id], names[proto.trainer_spec.eos_id]
    prefix = [bos] if files.add_bos_token else []
    suffix = [eos] if files.add_eos_token else []
    # As the slow tokenizer's `build_inputs_with_special_tokens`: [BOS] A [B] [EOS]. (The release's tokenizer adds
    # the BOS; whether a prompt takes it is the processor's decision, `HoVLEProcessor.tokenize_prompts`.)
    backend.post_processor = processors.TemplateProcessing(
        single=" ".join([*prefix, "$A", *suffix]),
        pair=" ".join([*prefix, "$A", "$B", *suffix]),
        special_tokens=[(token, vocab[token]) for token in dict.fromkeys(prefix + suffix)],
    )
    # Ids in order: tokens inside the model take their piece's id, appended ones the next free id. A renamed
    # user-defined piece is matched after normalisation, so that its old name (normalised to the new) matches too.
    aliased = {new for _, new in aliases}
    backend.add_tokens(
        [
            AddedToken(
                entry.content,
                special=entry.special,
                lstrip=entry.lstrip,
                rstrip=entry.rstrip,
                single_word=entry.single_word,
                normalized=entry.content in aliased,
            )
            for _, entry in sorted(table.items())
        ]
    )
    return _wrap_backend(backend, files, table, aliased, model_max_length, chat_template)


def _wrap_backend(
    backend: Tokenizer,
    files: TokenizerFiles,
    table: dict[int, TokenEntry],
    aliased: set[str],
    model_max_length: int | None,
    chat_template: str | None,
) -> PreTrainedTokenizerFast:
    """The transformers tokenizer around a finished backend, its special tokens named, every id checked."""
    special = files.special_tokens
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=special["bos_token"],
        eos_token=special["eos_token"],
        unk_token=special["unk_token"],
        pad_token=special["pad_token"],
        padding_side="left",
        model_max_length=model_max_length if model_max_length is not None else int(1e30),
        clean_up_tokenization_spaces=False,  # done by the decoder, exactly as the release did
        chat_template=chat_template,
    )
    extra = [name for name in files.additional_special_tokens if name not in special.values()]
    if extra:
        tokenizer.add_special_tokens({"additional_special_tokens": extra}, replace_extra_special_tokens=False)
    # transformers re-adds special tokens as un-normalised: restore the renamed pieces' normalised matching.
    tokenizer.backend_tokenizer.add_tokens(
        [AddedToken(new, special=True, normalized=True) for new in aliased if tokenizer.convert_tokens_to_ids(new)]
    )
    for token_id, entry in table.items():
        if tokenizer.convert_tokens_to_ids(entry.content) != token_id:
            raise CheckpointError(
                f"token {entry.content!r} got id {tokenizer.convert_tokens_to_ids(entry.content)} instead of {token_id}"
            )
    return tokenizer


def convert_tokenizer(
    folder: str | Path, model_vocab_size: int | None = None, model_max_length: int | None = None
) -> PreTrainedTokenizerFast | None:
    """The fast tokenizer for a release folder's tokenizer files, or None when it has no `tokenizer.model`."""
    folder = Path(folder)
    if not (folder / "tokenizer.model").exists():
        return None
    if not (folder / "tokenizer_config.json").exists():
        # It names the added tokens (<img>, </img>, <IMG_CONTEXT>, ...) and the tokenizer class: the release's
        # tokenizer does not load without it, and tokenizer.model alone lacks the image tokens.
        raise CheckpointError(
            f"{folder} has tokenizer.model but no tokenizer_config.json (the release's file that lists the added "
            "tokens <img>, </img>, <IMG_CONTEXT>): copy it from the release next to tokenizer.model, or pass "
            "--tokenizer DIR_OR_HUB_ID (tokenizer_source=) with the release's tokenizer files"
        )
    return build_fast_tokenizer(
        folder / "tokenizer.model", TokenizerFiles.read(folder), model_vocab_size, model_max_length
    )


def tokenizer_for_model(source: Path, config) -> PreTrainedTokenizerFast | None:
    """The source folder's tokenizer, checked against the model config (image token ids, vocabulary size), or None
    when the source has no tokenizer. Runs before any weight is converted, so a bad tokenizer fails fast."""
    tokenizer = convert_tokenizer(
        source, config.text_config.vocab_size, model_max_length=config.text_config.max_position_embeddings
    )
    if tokenizer is None:
        return None
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
    return tokenizer


def write_processor_files(tokenizer: PreTrainedTokenizerFast, output: Path, config) -> dict[str, int]:
    """Save tokenizer, processor and chat template into `output`; returns the ids the generation config needs."""
    # `auto_map` and the remote code come later, from `to_transformers.copy_remote_code` (one rule for every folder).
    build_processor(tokenizer, config).save_pretrained(output)
    return {"im_end": tokenizer.convert_tokens_to_ids("<|im_end|>"), "pad": tokenizer.pad_token_id}
