"""The release's REAL tokenizer files (InternLM2's `tokenizer.model` + the release's json files, vendored in
`fixtures/internlm2/`): the converted fast tokenizer gives the slow tokenizer's ids and texts, the chat template's
prompts tokenize as the release's, replies stop at `<|im_end|>`, and contradicting files are refused."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image
from reference_internlm2_tokenizer import ReferenceInternLM2Tokenizer
from transformers import AutoTokenizer, LogitsProcessor, LogitsProcessorList

from hovle.conversion.checkpoint_io import CheckpointError
from hovle.conversion.to_transformers import convert
from hovle.conversion.tokenizer import TOKENIZER_FILES, convert_tokenizer, exact_decoding_backend
from hovle.processing_hovle import DEFAULT_SYSTEM_MESSAGE, build_processor
from hovle.testing import tiny_config_real_vocab, write_original_checkpoint

RELEASE_TOKENIZER = Path(__file__).parent / "fixtures" / "internlm2"
# The release's ids (HOVLE.md section 7), independent of both the converter and the reference.
RELEASE_IDS = {
    "<unk>": 0,
    "<s>": 1,
    "</s>": 2,
    "<|plugin|>": 92538,
    "<|interpreter|>": 92539,
    "<|action_end|>": 92540,
    "<|action_start|>": 92541,
    "<|im_end|>": 92542,
    "<|im_start|>": 92543,
    "<img>": 92544,
    "</img>": 92545,
    "<IMG_CONTEXT>": 92546,
    "<quad>": 92547,
    "</quad>": 92548,
    "<ref>": 92549,
    "</ref>": 92550,
    "<box>": 92551,
    "</box>": 92552,
}
TILE_TOKENS = 256


def image_block(tiles: int) -> str:
    return "<img>" + "<IMG_CONTEXT>" * (TILE_TOKENS * tiles) + "</img>"


def chat_prompt(turns, system=DEFAULT_SYSTEM_MESSAGE, images=()):
    """The release's `internlm2-chat` prompt, written out by hand (HOVLE.md section 7)."""
    text = f"<|im_start|>system\n{system}<|im_end|>"
    for index, (question, answer) in enumerate(turns):
        if index == 0 and images:
            prefix = (
                "<image>\n" if len(images) == 1 else "".join(f"Image-{n}: <image>\n" for n in range(1, len(images) + 1))
            )
            question = prefix + question
        text += f"<|im_start|>user\n{question}<|im_end|>"
        if answer is not None:
            text += f"<|im_start|>assistant\n{answer}<|im_end|>"
    text += "<|im_start|>assistant\n"
    for tiles in images:
        text = text.replace("<image>", image_block(tiles), 1)
    return text


PLAIN = [
    "Hello world",
    " Hello",
    "The quick brown fox jumps over the lazy dog.",
    "What is in this picture? Describe it in detail.",
    "I can't say it 's wrong , isn't it ?",
    "Numbers: 3.14159, 2026-11-27, 1,000,000 and 0x1F.",
    "你好，世界。图片里有什么？",
    "上海人工智能实验室联合商汤科技开发的书生多模态大模型",
    "日本語のテキストとカタカナ、ひらがな。",
    "한국어 문장입니다.",
    "Русский текст с буквой ё.",
    "Ελληνικά γράμματα",
    "النص العربي من اليمين إلى اليسار",
    "हिन्दी पाठ",
    "ภาษาไทย",
    "emoji 🙂😀👍🏽 and flags 🇫🇷",
    "accents: café naïve Zürich ß Å",
    "full-width Ｅｘａｍｐｌｅ ＡＢＣ １２３",
    "math: ∑_{i=1}^{n} x_i ≤ ∞ → ∀ε>0",
    "byte fallback: 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 ༀ ꙮ 𓀀",
]
WHITESPACE = [
    "",
    " ",
    "  ",
    "   three leading",
    "trailing   ",
    "multiple   inner    spaces",
    "tab\tseparated\tvalues",
    "\t\t",
    "new\nlines\n\nand\n\n\nblank",
    "\r\nwindows\r\n",
    "\n\tmixed \t\n whitespace ",
    "\u3000ideographic\u3000space",
    "non\u00a0breaking",
]
CONTROL = [
    "\x00",
    "a\x00b",
    "\x00\x00\x00",
    "\x01\x02\x03\x1b[31mred\x1b[0m",
    "bell\x07 and delete\x7f",
    "zero\u200bwidth\u200djoiner\ufeff",
    "\ufffd replacement",
]
CODE = [
    "def f(x):\n    return x ** 2  # square\n",
    'import json\nprint(json.dumps({"a": [1, 2, 3]}, indent=2))',
    "for (int i = 0; i < n; ++i) { sum += a[i]; }",
    "<html><body><p class='x'>Hi &amp; bye</p></body></html>",
    "SELECT * FROM users WHERE name = 'O''Brien';",
    "$ ls -la | grep '\\.py$' && echo \"done\"",
    "```python\nx = [i for i in range(10)]\n```",
]
SPECIALS_ALONE = list(RELEASE_IDS)
SPECIALS_IN_TEXT = [f"before {token} after" for token in RELEASE_IDS] + [
    "x<|im_end|>y",
    "a <|im_end|> b",
    "<|im_start|><|im_end|><s></s><unk>",
    "text </s> inside <s> text <unk>",
    "[UNUSED_TOKEN_146]user\n[UNUSED_TOKEN_145]",  # the pieces' own names, which sentencepiece still matches
    "a [UNUSED_TOKEN_141] b",
    "<|im_start|",
    "<img",
    "<IMG_CONTEXT><IMG_CONTEXT>text<IMG_CONTEXT>",
    "<ref>the cat</ref><box>[[10, 20, 30, 40]]</box><quad>(1,2),(3,4)</quad>",
]
PROMPTS = [
    chat_prompt([("Hello!", None)]),
    chat_prompt([("What is in this picture?", None)], images=[1]),
    chat_prompt([("Compare these.", None)], images=[3, 1]),
    chat_prompt([("Hi", "Hello , how can I help ?"), ("Describe the image.", "A cat ."), ("More?", None)], images=[2]),
    chat_prompt([("No system.", None)], system="You are a helpful assistant."),
    image_block(1),
    image_block(7) + "\nDescribe.",
]
CORPUS = PLAIN + WHITESPACE + CONTROL + CODE + SPECIALS_ALONE + SPECIALS_IN_TEXT + PROMPTS


@pytest.fixture(scope="module")
def reference():
    return ReferenceInternLM2Tokenizer(RELEASE_TOKENIZER)


@pytest.fixture(scope="module")
def fast(tmp_path_factory):
    """The converted tokenizer, saved and loaded back the way users load it (stock class, no custom code)."""
    config = tiny_config_real_vocab()
    tokenizer = convert_tokenizer(RELEASE_TOKENIZER, config.text_config.vocab_size, 32768)
    folder = tmp_path_factory.mktemp("fast-tokenizer")
    tokenizer.save_pretrained(folder)
    assert not list(folder.glob("*.py"))
    loaded = AutoTokenizer.from_pretrained(folder)
    assert type(loaded).__module__.startswith("transformers.")
    return loaded


def test_corpus_size():
    assert len(CORPUS) >= 60 and len(set(CORPUS)) == len(CORPUS)


def test_reference_matches_published_facts(reference):
    """The reference itself, against facts read off the release (not computed by either implementation)."""
    assert reference.encode("Hello world", add_special_tokens=False) == [9843, 2028]
    assert reference.encode(" Hello", add_special_tokens=False) == [22190]
    assert reference.encode("\x00", add_special_tokens=False) == [3]
    assert reference.encode("Hello world") == [1, 9843, 2028]
    for token, token_id in RELEASE_IDS.items():
        assert reference.encode(token, add_special_tokens=False) == [token_id]


@pytest.mark.parametrize("text", CORPUS, ids=range(len(CORPUS)))
def test_ids_and_decode_equal_the_slow_tokenizer(fast, reference, text):
    expected = reference.encode(text)
    assert fast(text)["input_ids"] == expected
    assert fast(text, add_special_tokens=False)["input_ids"] == reference.encode(text, add_special_tokens=False)
    assert fast.decode(expected, skip_special_tokens=True) == reference.decode(expected)


def test_exact_decoding_gives_back_the_encoded_text(fast):
    """`exact_decoding_backend` (vLLM's placeholder replacement decodes, edits and re-encodes prompts) returns text
    that encodes to the same ids, where the release's decoding clean-up does not ("What is it ?" -> "What is it?")."""
    exact = exact_decoding_backend(fast)
    changed_by_clean_up = 0
    for text in [*CORPUS, "<s><|im_start|>user\n<image>\nWhat is it ? It 's a cat .<|im_end|>"]:
        ids = fast(text, add_special_tokens=False)["input_ids"]
        decoded = exact.decode(ids, skip_special_tokens=False)
        assert fast(decoded, add_special_tokens=False)["input_ids"] == ids, text
        changed_by_clean_up += fast.decode(ids) != decoded
    assert changed_by_clean_up > 0  # the texts include what the clean-up changes


def test_special_tokens_and_settings(fast):
    for token, token_id in RELEASE_IDS.items():
        assert fast.convert_tokens_to_ids(token) == token_id
        assert fast.convert_ids_to_tokens(token_id) == token
    assert len(fast) == 92553
    assert (fast.bos_token, fast.eos_token, fast.unk_token, fast.pad_token) == ("<s>", "</s>", "<unk>", "</s>")
    assert fast.pad_token_id == 2 and fast.padding_side == "left"
    assert fast.model_max_length == 32768  # the LLM's context, not transformers' 1e30 "unlimited"
    assert fast("x")["input_ids"][-1] != fast.eos_token_id  # BOS, no EOS
    assert set(RELEASE_IDS) - {"<unk>", "<s>", "</s>"} <= set(fast.all_special_tokens)


@pytest.fixture(scope="module")
def processor(fast):
    return build_processor(fast, tiny_config_real_vocab())


@pytest.mark.parametrize(
    "turns, sizes, tiles",
    [
        ([("What is in this picture?", None)], [(448, 448)], [1]),
        ([("Compare the two.", None)], [(896, 448), (448, 448)], [3, 1]),  # 2 x 1 grid + thumbnail
        ([("Hi there , friend !", "Hello .")] * 2 + [("And now?", None)], [(600, 500)], [1]),
        ([("Text only.", None)], [], []),
    ],
)
def test_chat_template_tokenizes_as_the_release(processor, reference, turns, sizes, tiles):
    images = [Image.new("RGB", size, "gray") for size in sizes]
    messages = []
    for index, (question, answer) in enumerate(turns):
        content = [{"type": "image", "image": image} for image in images] if index == 0 else []
        messages.append({"role": "user", "content": [*content, {"type": "text", "text": question}]})
        if answer is not None:
            messages.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
    out = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)
    assert list(out["input_ids"][0]) == reference.encode(chat_prompt(turns, images=tiles))
    assert len(out.get("pixel_values", [])) == sum(tiles)
    ids = list(out["input_ids"][0])
    assert ids.count(92546) == TILE_TOKENS * sum(tiles) and ids.count(92544) == ids.count(92545) == len(sizes)


class ForcedReply(LogitsProcessor):
    """Makes generation emit a fixed token sequence (the model is random): the test is about where replies end."""

    def __init__(self, tokens):
        self.tokens, self.step = tokens, 0

    def __call__(self, input_ids, scores):
        forced = torch.full_like(scores, float("-inf"))
        forced[:, self.tokens[min(self.step, len(self.tokens) - 1)]] = 0
        self.step += 1
        return forced


@pytest.fixture(scope="module")
def real_vocab_model(tmp_path_factory):
    """A tiny random HoVLE with InternLM2's vocabulary, converted with the release's tokenizer files."""
    root = tmp_path_factory.mktemp("real-vocab")
    source = write_original_checkpoint(root / "original", tiny_config_real_vocab(), seed=0)
    for name in TOKENIZER_FILES:
        shutil.copy(RELEASE_TOKENIZER / name, source / name)
    return convert(source, root / "hovle-real-vocab", dtype="float32", progress=False)


def test_replies_stop_and_are_cut_at_im_end(real_vocab_model, reference):
    from transformers import AutoModelForImageTextToText, AutoProcessor, pipeline

    model = AutoModelForImageTextToText.from_pretrained(real_vocab_model, trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(real_vocab_model, trust_remote_code=True)
    assert 92542 in torch.tensor(model.generation_config.eos_token_id).flatten().tolist()
    reply = reference.encode("The answer , it 's a cat .", add_special_tokens=False)
    forced = [*reply, 92542, *reference.encode(" LEAKED PAST THE END", add_special_tokens=False)]
    expected = reference.decode(reply).strip()
    assert expected == "The answer, it's a cat."  # the release's clean-up, from the reference
    settings = {"do_sample": False, "max_new_tokens": len(forced) + 2}
    image = Image.new("RGB", (448, 448), "red")

    # generate() itself stops at <|im_end|>
    inputs = processor(images=image, text="<image>\nWhat is this?", return_tensors="pt")
    out = model.generate(**inputs, logits_processor=LogitsProcessorList([ForcedReply(forced)]), **settings)
    assert out[0, inputs["input_ids"].shape[1] :].tolist() == [*reply, 92542]

    # the original chat() API with the real tokenizer
    pixel_values = processor.image_processor(images=image, return_tensors="pt")["pixel_values"]
    chat_settings = {**settings, "logits_processor": LogitsProcessorList([ForcedReply(forced)])}
    assert model.chat(processor.tokenizer, pixel_values, "What is this?", chat_settings) == expected

    # pipeline("image-text-to-text")
    pipe = pipeline("image-text-to-text", model=model, processor=processor)
    messages = [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": "What?"}]}]
    generate_kwargs = {**settings, "logits_processor": LogitsProcessorList([ForcedReply(forced)])}
    result = pipe(text=messages, generate_kwargs=generate_kwargs, return_full_text=False)
    # the pipeline decodes exactly (its prompt cut needs that; see post_process_image_text_to_text) ...
    assert result[0]["generated_text"].strip() == "The answer , it 's a cat ."
    # ... and gives the release's clean-up when asked
    generate_kwargs = {**settings, "logits_processor": LogitsProcessorList([ForcedReply(forced)])}
    result = pipe(
        text=messages, generate_kwargs=generate_kwargs, return_full_text=False, clean_up_tokenization_spaces=True
    )
    assert result[0]["generated_text"].strip() == expected


def edit_json(path: Path, change) -> None:
    data = json.loads(path.read_text()) if path.exists() else {}
    change(data)
    path.write_text(json.dumps(data, ensure_ascii=False))


# case -> ({file: edit}, words the error must contain: the token and both ids)
CONTRADICTIONS = {
    "added_tokens.json moves <img>": (
        {"added_tokens.json": lambda d: d.update({"<img>": 92545})},
        ["'<img>'", "92544", "92545"],
    ),
    "one token at two ids": (
        {"tokenizer_config.json": lambda d: d["added_tokens_decoder"]["92550"].update(content="<img>")},
        ["'<img>'", "92544", "92550"],
    ),
    "id beyond the model's vocabulary": (
        {
            "tokenizer_config.json": lambda d: d["added_tokens_decoder"].update(
                {"92553": {"content": "<extra>", "special": True}}
            )
        },
        ["'<extra>'", "92553", "vocabulary of 92553"],
    ),
    "an added token that is another piece": (
        {
            "tokenizer_config.json": lambda d: d["added_tokens_decoder"]["92547"].update(content="Hello"),
            "added_tokens.json": lambda d: d.update({"Hello": d.pop("<quad>")}),
        },
        ["'Hello'", "92547", "9843"],
    ),
    "eos named differently in two files": (
        {"special_tokens_map.json": lambda d: d.update(eos_token="<|im_end|>")},
        ["eos_token", "'</s>'", "'<|im_end|>'"],
    ),
    "eos that is not the model's EOS": (
        {
            "tokenizer_config.json": lambda d: d.update(eos_token="<|im_end|>"),
            "special_tokens_map.json": lambda d: d.update(eos_token="<|im_end|>"),
        },
        ["eos_token", "'<|im_end|>'", "92542", "id 2"],
    ),
}


@pytest.mark.parametrize("case", list(CONTRADICTIONS))
def test_contradicting_tokenizer_files_are_refused(tmp_path, case):
    edits, expected_words = CONTRADICTIONS[case]
    source = write_original_checkpoint(tmp_path / "original", tiny_config_real_vocab(), seed=0)
    for name in TOKENIZER_FILES:
        shutil.copy(RELEASE_TOKENIZER / name, source / name)
    for file_name, change in edits.items():
        edit_json(source / file_name, change)
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(CheckpointError) as error:
        convert(source, tmp_path / "out", dtype="float32", progress=False)
    for word in expected_words:
        assert word in str(error.value), (word, str(error.value))
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written, no scratch folder left
