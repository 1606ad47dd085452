"""The release's `chat()` / `batch_chat()` API turn for turn, against an independent re-implementation of the
original implementation's prompt construction (InternVL's `chat()` with the `internlm2-chat` conversation template);
its generation settings and errors; and `pipeline(..., return_full_text=False)` returning only the reply."""

import pytest
import torch
from transformers import AutoTokenizer, GenerationConfig

from hovle.modeling_hovle import HoVLEForConditionalGeneration

# The release's default system message (HOVLE.md section 7), written out here rather than taken from the package.
RELEASE_SYSTEM = (
    "你是由上海人工智能实验室联合商汤科技开发的书生多模态大模型，英文名叫InternVL, 是一个有用无害的人工智能助手。"
)
SETTINGS = {"max_new_tokens": 5, "do_sample": False}


def release_query(question, history, num_patches_list, tokens_per_tile, has_images, system=RELEASE_SYSTEM):
    """The original `chat()`'s prompt: `<image>\\n` only on the first turn, the `internlm2-chat` template (MPT
    separator style: `system_template + sep`, then `role + message + sep`, a falsy message renders the role alone),
    then `query.replace('<image>', image_tokens, 1)` per image. Returns (query, the question it keeps in history)."""
    if history is None and has_images and "<image>" not in question:
        question = "<image>\n" + question
    sep, user, assistant = "<|im_end|>", "<|im_start|>user\n", "<|im_start|>assistant\n"
    query = "<|im_start|>system\n" + system + sep
    for role, message in [
        *[(r, m) for q, a in history or [] for r, m in ((user, q), (assistant, a))],
        (user, question),
    ]:
        query += role + message + sep if message else role
    query += assistant
    for num_patches in num_patches_list:
        query = query.replace("<image>", "<img>" + "<IMG_CONTEXT>" * (tokens_per_tile * num_patches) + "</img>", 1)
    return query, question


def release_batch_queries(questions, num_patches_list, tokens_per_tile, has_images):
    """The original `batch_chat()`'s prompts: `<image>\\n` unless present, one image per question."""
    queries = []
    for question, num_patches in zip(questions, num_patches_list, strict=True):
        query, _ = release_query(question, None, [num_patches] if has_images else [], tokens_per_tile, has_images)
        queries.append(query)
    return queries


@pytest.fixture(scope="module")
def model_and_tokenizer(tiny_hub_folder):
    model = HoVLEForConditionalGeneration.from_pretrained(tiny_hub_folder).eval()
    return model, AutoTokenizer.from_pretrained(tiny_hub_folder)


class GenerateSpy:
    """Records what chat() hands to generate()."""

    def __init__(self, model, monkeypatch):
        self.calls, self.original = [], model.generate
        monkeypatch.setattr(model, "generate", self)

    def __call__(self, **kwargs):
        self.calls.append(kwargs)
        return self.original(**kwargs)


def release_replies(model, tokenizer, queries, pixel_values):
    """A plain generate() on the release's own ids, decoded as the release did."""
    inputs = tokenizer(queries, return_tensors="pt", padding=True, padding_side="left")
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    output = model.generate(**inputs, pixel_values=pixel_values, eos_token_id=end, **SETTINGS)
    new = output[:, inputs["input_ids"].shape[1] :]
    return inputs, [
        text.split("<|im_end|>")[0].strip() for text in tokenizer.batch_decode(new, skip_special_tokens=True)
    ]


def tiles(count, seed=0):
    return torch.randn(count, 3, 56, 56, generator=torch.Generator().manual_seed(seed))


def test_multi_round_chat_as_the_release(model_and_tokenizer, monkeypatch):
    """The release's multi-round example (image, then a follow-up with history=h), a text-only follow-up, and the
    history the release returns: ids and replies equal the original implementation's."""
    model, tokenizer = model_and_tokenizer
    tokens = model.config.tokens_per_tile
    spy = GenerateSpy(model, monkeypatch)
    pixel_values = tiles(2)
    turns = [
        ("<image>\nPlease describe the image shortly.", None, pixel_values),  # the release's own first question
        ("Please write a poem according to the image.", "history", pixel_values),
        ("And in one word, without the image?", "history", None),
        ("Describe it again.", None, pixel_values),  # no <image> typed: the release adds it on the first turn
    ]
    history = None
    for question, with_history, images in turns:
        history = history if with_history else None
        expected_query, kept = release_query(
            question, history, [images.shape[0]] if images is not None else [], tokens, images is not None
        )
        previous = list(history or [])
        reply, returned = model.chat(tokenizer, images, question, dict(SETTINGS), history=history, return_history=True)
        inputs, (expected_reply,) = release_replies(model, tokenizer, [expected_query], images)
        assert spy.calls[-1]["input_ids"].tolist() == inputs["input_ids"].tolist(), question
        assert reply == expected_reply, question
        assert returned == [*previous, (kept, reply)]
        if history is not None:
            assert returned is history  # the release extends the list it is given
        history = returned


def test_chat_placeholders_across_turns(model_and_tokenizer, monkeypatch):
    """Several images with typed placeholders; a second image turn fills the first placeholder of the conversation
    and a second typed `<image>` stays text, as the release's `replace(..., 1)` does; a system message set on the
    model (the release's `model.system_message`)."""
    model, tokenizer = model_and_tokenizer
    tokens = model.config.tokens_per_tile
    spy = GenerateSpy(model, monkeypatch)
    two = "Image-1: <image>\nImage-2: <image>\nCompare them."
    query, kept = release_query(two, None, [1, 2], tokens, True)
    _, history = model.chat(tokenizer, tiles(3), two, SETTINGS, num_patches_list=[1, 2], return_history=True)
    assert spy.calls[-1]["input_ids"][0].tolist() == tokenizer(query)["input_ids"] and history[0][0] == kept
    history = [("<image>\nWhat is it?", "A cat.")]
    query, _ = release_query("And this <image>?", history, [1], tokens, True)
    model.chat(tokenizer, tiles(1), "And this <image>?", SETTINGS, history=list(history))
    assert spy.calls[-1]["input_ids"][0].tolist() == tokenizer(query)["input_ids"]
    monkeypatch.setattr(model, "system_message", "Answer briefly.", raising=False)
    query, _ = release_query("Hi.", None, [], tokens, False, system="Answer briefly.")
    model.chat(tokenizer, None, "Hi.", SETTINGS)
    assert spy.calls[-1]["input_ids"][0].tolist() == tokenizer(query)["input_ids"]


def test_batch_chat_as_the_release(model_and_tokenizer, monkeypatch):
    model, tokenizer = model_and_tokenizer
    tokens = model.config.tokens_per_tile
    spy = GenerateSpy(model, monkeypatch)
    questions = ["What is in the picture?", "<image>\nDescribe it.", "Its colour?"]
    pixel_values = tiles(4)
    queries = release_batch_queries(questions, [2, 1, 1], tokens, True)
    replies = model.batch_chat(tokenizer, pixel_values, questions, dict(SETTINGS), num_patches_list=[2, 1, 1])
    inputs, expected = release_replies(model, tokenizer, queries, pixel_values)
    assert spy.calls[-1]["input_ids"].tolist() == inputs["input_ids"].tolist()
    assert replies == expected
    # the release's old name for num_patches_list
    assert model.batch_chat(tokenizer, pixel_values, questions, dict(SETTINGS), image_counts=[2, 1, 1]) == expected
    # text only
    texts = ["Say hi.", "Say bye, please."]
    inputs, expected = release_replies(model, tokenizer, release_batch_queries(texts, [0, 0], tokens, False), None)
    assert model.batch_chat(tokenizer, None, texts, dict(SETTINGS)) == expected
    assert spy.calls[-1]["input_ids"].tolist() == inputs["input_ids"].tolist()
    # the release needed a num_patches_list for a text-only batch too (it only drove its loop)
    assert model.batch_chat(tokenizer, None, texts, dict(SETTINGS), num_patches_list=[1, 1]) == expected
    assert spy.calls[-1]["input_ids"].tolist() == inputs["input_ids"].tolist()


def test_generation_config_object_and_dict_agree(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    settings = dict(SETTINGS)
    from_dict = model.chat(tokenizer, tiles(1), "What is it?", settings)
    assert settings == SETTINGS  # the caller's dict is left as it was
    config = GenerationConfig(**SETTINGS)
    assert model.chat(tokenizer, tiles(1), "What is it?", config) == from_dict
    assert config.eos_token_id is None  # nor the caller's GenerationConfig
    replies = model.batch_chat(tokenizer, tiles(1), ["What is it?"], GenerationConfig(**SETTINGS))
    assert replies == [from_dict]


@pytest.mark.parametrize(
    ("settings", "words"),
    [
        ({"max_new_tokens": -1}, "generation_config: max_new_tokens must be a whole number of at least 1, got -1"),
        ({"max_new_tokens": "8"}, "max_new_tokens must be a whole number of at least 1, got '8'"),
        ({"max_new_tokens": 2.5}, "max_new_tokens must be a whole number"),
        ({"num_beams": 0}, "num_beams must be a whole number of at least 1, got 0"),
        ({"do_sample": True, "temperature": 0}, "temperature must be greater than 0, got 0"),
        ({"do_sample": True, "top_p": 1.5}, "top_p must be between 0 and 1, got 1.5"),
        ({"do_sample": "yes"}, "do_sample must be True or False, got 'yes'"),
        (GenerationConfig(max_new_tokens=3, top_k=-2), "top_k must be a whole number of at least 0, got -2"),
        ([("max_new_tokens", 3)], "generation_config must be a dict of generate() settings"),
        ("max_new_tokens=3", "or a GenerationConfig, got str"),
    ],
)
def test_bad_generation_settings_are_named(model_and_tokenizer, settings, words):
    model, tokenizer = model_and_tokenizer
    for call in (
        lambda: model.chat(tokenizer, tiles(1), "What is it?", settings),
        lambda: model.batch_chat(tokenizer, None, ["Hi"], settings),
    ):
        with pytest.raises(ValueError) as error:
            call()
        assert words in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize(
    ("call", "words"),
    [
        (lambda m, t: m.batch_chat(t, tiles(1), [], SETTINGS), "batch_chat needs a non-empty list of question strings"),
        (lambda m, t: m.batch_chat(t, None, "Hi", SETTINGS), "batch_chat needs a non-empty list of question strings"),
        (
            lambda m, t: m.batch_chat(t, tiles(2), ["a", "b"], SETTINGS),
            "batch_chat got 2 questions but num_patches_list is missing",
        ),
        (
            lambda m, t: m.batch_chat(t, tiles(2), ["a", "b"], SETTINGS, num_patches_list=[2]),
            "batch_chat got 2 questions but num_patches_list has 1 entries",
        ),
        (
            lambda m, t: m.batch_chat(t, None, ["a", "b"], SETTINGS, num_patches_list=[1]),
            "batch_chat got 2 questions but num_patches_list has 1 entries",
        ),
        (
            lambda m, t: m.batch_chat(t, tiles(2), ["a", "b"], SETTINGS, num_patches_list=[1, 2]),
            "pixel_values has 2 tiles but num_patches_list adds up to 3",
        ),
        (
            lambda m, t: m.chat(t, tiles(1), "And this?", SETTINGS, history=[("Hi", "Hello")]),
            "The conversation has 0 <image> placeholders for 1 images",
        ),
        (
            lambda m, t: m.chat(t, tiles(1), "Hi", SETTINGS, history=[("only a question",)]),
            "history must be a list of (question, answer) pairs of strings",
        ),
        (lambda m, t: m.chat(t, None, None, SETTINGS), "question must be a string, got NoneType"),
        (
            lambda m, t: m.chat(t, None, "Hi", SETTINGS, IMG_CONTEXT_TOKEN="<ctx>"),
            "IMG_CONTEXT_TOKEN='<ctx>' is not supported",
        ),
    ],
)
def test_bad_chat_calls_are_named(model_and_tokenizer, call, words):
    model, tokenizer = model_and_tokenizer
    with pytest.raises(ValueError) as error:
        call(model, tokenizer)
    assert words in str(error.value) and "\n" not in str(error.value)


class ForcedReply:
    """A logits processor that makes generation emit fixed tokens (the model is random)."""

    def __init__(self, tokens):
        self.tokens, self.step = tokens, 0

    def __call__(self, input_ids, scores):
        forced = torch.full_like(scores, float("-inf"))
        forced[:, self.tokens[min(self.step, len(self.tokens) - 1)]] = 0
        self.step += 1
        return forced


@pytest.fixture(scope="module")
def real_tokenizer_folder(tmp_path_factory):
    """A tiny random HoVLE converted with the release's real InternLM2 tokenizer files (its decoding clean-up)."""
    import shutil
    from pathlib import Path

    from hovle.conversion.to_transformers import convert
    from hovle.conversion.tokenizer import TOKENIZER_FILES
    from hovle.testing import tiny_config_real_vocab, write_original_checkpoint

    root = tmp_path_factory.mktemp("real-tokenizer")
    source = write_original_checkpoint(root / "original", tiny_config_real_vocab(), seed=0)
    for name in TOKENIZER_FILES:
        shutil.copy(Path(__file__).parent / "fixtures" / "internlm2" / name, source / name)
    return convert(source, root / "hovle", dtype="float32", progress=False)


# (assistant prefill ending in a space, the reply's sentencepiece pieces): the clean-up would join each reply's first
# piece to the prefill's trailing space.
PREFILLED_REPLIES = [
    ("I am ", [",", "▁it", "▁'", "s", "▁fine", "▁."]),
    ("It is ", [".", "▁Yes", "▁?"]),
    ("Really ", ["?", "▁ok"]),
    ("I ", ["'", "m", "▁here"]),
    ("I do ", ["n", "'t", "▁know"]),
]


@pytest.mark.parametrize(("prefill", "pieces"), PREFILLED_REPLIES)
def test_pipeline_returns_only_the_reply_after_a_prefill(real_tokenizer_folder, prefill, pieces):
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor, LogitsProcessorList, pipeline

    model = AutoModelForImageTextToText.from_pretrained(real_tokenizer_folder, trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(real_tokenizer_folder, trust_remote_code=True)
    tokenizer = processor.tokenizer
    reply_ids = tokenizer.convert_tokens_to_ids(pieces)
    assert tokenizer.unk_token_id not in reply_ids
    reply = "".join(pieces).replace("▁", " ")  # sentencepiece's own join: the text these ids stand for
    messages = [
        {"role": "system", "content": "Be brief."},
        {
            "role": "user",
            "content": [
                {"type": "image", "image": Image.new("RGB", (448, 448), "red")},
                {"type": "text", "text": "How are you?"},
            ],
        },
        {"role": "assistant", "content": [{"type": "text", "text": prefill}]},
    ]
    forced = [*reply_ids, tokenizer.convert_tokens_to_ids("<|im_end|>")]
    pipe = pipeline("image-text-to-text", model=model, processor=processor)

    def run(**options):
        settings = {"max_new_tokens": len(forced) + 1, "do_sample": False}
        generate_kwargs = {**settings, "logits_processor": LogitsProcessorList([ForcedReply(forced)])}
        return pipe(text=messages, generate_kwargs=generate_kwargs, continue_final_message=True, **options)[0]

    assert run(return_full_text=False)["generated_text"] == reply
    full = run()["generated_text"]  # the prefill continued
    assert full[:-1] == messages[:-1] and full[-1]["content"][-1]["text"] == prefill + reply
    # decode() still gives the release's clean-up, and the hook gives it when asked
    prompt_and_reply = tokenizer(prefill, add_special_tokens=False)["input_ids"] + reply_ids
    cleaned = tokenizer.decode(prompt_and_reply)
    assert cleaned != prefill + reply and processor.decode(prompt_and_reply) == cleaned
    assert processor.post_process_image_text_to_text([prompt_and_reply], clean_up_tokenization_spaces=True) == [cleaned]
    assert processor.post_process_image_text_to_text(torch.tensor(prompt_and_reply)) == prefill + reply
