"""The converted fast tokenizer gives sentencepiece's ids and round-trips, with no custom tokenizer code."""

import shutil

import pytest
import sentencepiece
from transformers import AutoTokenizer

from hovle.conversion.tokenizer import build_fast_tokenizer, convert_tokenizer
from hovle.testing import CHAT_PIECES, TINY_ADDED_TOKENS, write_tiny_tokenizer

PLAIN = [
    "Hello world",
    "describe the picture",
    "  two leading spaces",
    "trailing spaces  ",
    "multiple   inner    spaces",
    "tab\tseparated\tvalues",
    "new\nlines\n\nand blank",
    "\n\tmixed \t\n whitespace ",
    "你好，世界。图片里有什么？",
    "日本語のテキスト",
    "emoji 🙂😀👍🏽 here",
    "accents: café naïve Zürich ß",
    "byte fallback: 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 ༀ ꙮ",
    " ",
    "",
]
WITH_SPECIALS = [
    "<|im_start|>system\nYou are helpful.<|im_end|><|im_start|>user\nhi<|im_end|><|im_start|>assistant\n",
    "x<|im_end|>y",
    "a <|im_end|> b",
    "".join(CHAT_PIECES),
]


def build(tmp_path, add_dummy_prefix):
    folder = write_tiny_tokenizer(tmp_path / "spm", add_dummy_prefix=add_dummy_prefix)
    tokenizer = convert_tokenizer(folder)
    saved = tmp_path / "fast"
    tokenizer.save_pretrained(saved)
    return sentencepiece.SentencePieceProcessor(model_file=str(folder / "tokenizer.model")), saved


@pytest.mark.parametrize("add_dummy_prefix", [False, True])
def test_ids_equal_sentencepiece_and_round_trip(tmp_path, add_dummy_prefix):
    spm, saved = build(tmp_path, add_dummy_prefix)
    assert not list(saved.glob("*.py")), "no custom tokenizer code"
    fast = AutoTokenizer.from_pretrained(saved)  # a folder with tokenizer files only: stock classes
    assert type(fast).__module__.startswith("transformers.")
    # With a dummy prefix, sentencepiece prefixes only the whole text while a split at special tokens prefixes
    # each chunk (the original slow tokenizer's behaviour), so special tokens are compared without it.
    corpus = PLAIN + (WITH_SPECIALS if not add_dummy_prefix else [])
    for text in corpus:
        expected = [spm.bos_id(), *spm.encode(text)]
        assert fast(text)["input_ids"] == expected, text
        assert fast.decode(expected[1:]) == text, text
    pieces = [fast.convert_ids_to_tokens(i) for i in fast("𝔘")["input_ids"][1:]]
    assert [p for p in pieces if p != "▁"] == ["<0xF0>", "<0x9D>", "<0x94>", "<0x98>"]  # byte fallback


def test_special_token_ids(tmp_path):
    spm, saved = build(tmp_path, False)
    fast = AutoTokenizer.from_pretrained(saved)
    for piece in CHAT_PIECES:
        assert fast.convert_tokens_to_ids(piece) == spm.piece_to_id(piece)
        assert fast(piece, add_special_tokens=False)["input_ids"] == [spm.piece_to_id(piece)]
    for offset, token in enumerate(TINY_ADDED_TOKENS):
        assert fast(token, add_special_tokens=False)["input_ids"] == [1020 + offset]
    assert (fast.unk_token_id, fast.bos_token_id, fast.eos_token_id) == (0, 1, 2)
    image = "<img>" + "<IMG_CONTEXT>" * 3 + "</img>"
    assert fast.decode(fast(image + "ok")["input_ids"], skip_special_tokens=True) == "ok"


def test_bad_sentencepiece_file(tmp_path):
    from hovle.conversion.checkpoint_io import CheckpointError

    bad = tmp_path / "tokenizer.model"
    bad.write_bytes(b"not a protobuf at all \xff\xfe")
    with pytest.raises(CheckpointError, match="tokenizer.model"):
        build_fast_tokenizer(bad)
    shutil.rmtree(tmp_path)
