"""The release's tokenizer and processor at load time (`hovle.release_processing`): with InternLM2's REAL tokenizer
files in a release-layout folder, `AutoTokenizer` / `AutoProcessor` give what `hovle convert` writes, the release's
tokenizer code never runs, bad files get the converter's errors, and the built tokenizer is cached."""

import json
import shutil

import pytest
import torch
from huggingface_hub import constants
from PIL import Image
from test_real_tokenizer import CONTRADICTIONS, CORPUS, RELEASE_TOKENIZER, ForcedReply, edit_json
from test_release_loading import INTERNVL_CONFIG_CODE, _with_remote_code
from transformers import (
    AutoConfig,
    AutoModelForImageTextToText,
    AutoProcessor,
    AutoTokenizer,
    LogitsProcessorList,
    pipeline,
)

import hovle
import hovle.release_processing as release_processing
from hovle.conversion.checkpoint_io import CheckpointError
from hovle.conversion.to_transformers import convert
from hovle.conversion.tokenizer import TOKENIZER_FILES
from hovle.modeling_hovle import HoVLEForConditionalGeneration
from hovle.release_loading import HoVLEReleaseConfig
from hovle.release_processing import cache_key, register_release_processing, tokenizer_cache_root
from hovle.testing import tiny_config_real_vocab, write_original_checkpoint

RAISING_TOKENIZER_CODE = "raise RuntimeError('the release tokenizer code ran')\n"


def write_release(folder, seed: int = 0):
    """A release-layout folder: random tiny weights, InternLM2's real tokenizer files, and a copy of the release's
    tokenizer code that fails loudly if it is ever run."""
    release = write_original_checkpoint(folder, tiny_config_real_vocab(), seed=seed)
    for name in TOKENIZER_FILES:
        shutil.copy(RELEASE_TOKENIZER / name, release / name)
    (release / "tokenization_internlm2.py").write_text(RAISING_TOKENIZER_CODE)
    return release


@pytest.fixture(scope="module", autouse=True)
def registered_and_cache_home(tmp_path_factory):
    """The release's classes registered (`register_release_loading` registers the tokenizer and processor with
    `register_release_processing`) and the cache of built tokenizers in a folder of this module's own."""
    hovle.register_release_loading()
    hovle.register_auto_classes()  # converted folders with this package's classes, to compare with
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(constants, "HF_HOME", str(tmp_path_factory.mktemp("hf-home")))
        yield


@pytest.fixture(scope="module")
def release_and_converted(tmp_path_factory):
    root = tmp_path_factory.mktemp("release-processing")
    release = write_release(root / "release")
    return release, convert(release, root / "converted", dtype="float32", progress=False)


@pytest.fixture
def count_builds(monkeypatch):
    """How many times the converter builds a tokenizer (`tokenizer_for_model`) during a test."""
    builds = []
    build = release_processing.tokenizer_for_model
    monkeypatch.setattr(release_processing, "tokenizer_for_model", lambda *a: builds.append(1) or build(*a))
    return builds


@pytest.mark.parametrize("trust_remote_code", [None, True])
def test_auto_tokenizer_gives_the_converters_ids(release_and_converted, trust_remote_code):
    release, converted = release_and_converted
    assert json.loads((release / "tokenizer_config.json").read_text())["auto_map"]  # the release names its code
    ours = AutoTokenizer.from_pretrained(release, trust_remote_code=trust_remote_code)
    theirs = AutoTokenizer.from_pretrained(converted)
    assert type(ours) is type(theirs) and type(ours).__module__.startswith("transformers.")
    assert ours.get_vocab() == theirs.get_vocab() and len(ours) == len(theirs)
    assert ours.chat_template == theirs.chat_template is not None
    assert ours.all_special_tokens == theirs.all_special_tokens
    assert (ours.padding_side, ours.model_max_length) == (theirs.padding_side, theirs.model_max_length)
    for text in CORPUS:
        ids = theirs(text)["input_ids"]
        assert ours(text)["input_ids"] == ids, text
        assert ours.decode(ids, skip_special_tokens=True) == theirs.decode(ids, skip_special_tokens=True), text


@pytest.mark.parametrize("trust_remote_code", [None, True])
def test_auto_processor_gives_the_converters_processor(release_and_converted, trust_remote_code):
    release, converted = release_and_converted
    ours = AutoProcessor.from_pretrained(release, trust_remote_code=trust_remote_code)
    theirs = AutoProcessor.from_pretrained(converted)
    assert type(ours) is type(theirs) and type(ours).__name__ == "HoVLEProcessor"
    assert ours.image_processor.to_dict() == theirs.image_processor.to_dict()
    assert ours.tokens_per_tile == theirs.tokens_per_tile and ours.chat_template == theirs.chat_template
    images = [Image.new("RGB", (896, 448), "gray"), Image.new("RGB", (300, 500), "red")]
    messages = [
        {"role": "user", "content": [*({"type": "image", "image": i} for i in images), {"type": "text", "text": "Hi"}]}
    ]
    settings = {"add_generation_prompt": True, "tokenize": True, "return_dict": True, "return_tensors": "pt"}
    out, expected = ours.apply_chat_template(messages, **settings), theirs.apply_chat_template(messages, **settings)
    assert torch.equal(out["input_ids"], expected["input_ids"])
    assert torch.equal(out["pixel_values"], expected["pixel_values"])
    for text in [t for t in CORPUS if not any(token in t for token in ("<img>", "</img>", "<IMG_CONTEXT>"))]:
        assert ours(text=text)["input_ids"] == theirs(text=text)["input_ids"], text


def test_tiling_comes_from_the_release_config(tmp_path):
    release = write_release(tmp_path / "release")
    edit_json(release / "config.json", lambda config: config.update(max_dynamic_patch=2, use_thumbnail=True))
    processor = AutoProcessor.from_pretrained(release)
    assert processor.image_processor.max_patches == 2
    assert processor.num_tiles(2000, 400) == 3  # a 2 x 1 grid and the thumbnail
    converted = convert(release, tmp_path / "converted", dtype="float32", progress=False)
    assert processor.image_processor.to_dict() == AutoProcessor.from_pretrained(converted).image_processor.to_dict()


def forced_reply(tokenizer):
    """A reply, `<|im_end|>`, then text past it, as ids of the release's tokenizer; and the reply's settings."""
    reply = tokenizer("The answer , it 's a cat .", add_special_tokens=False)["input_ids"]
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    forced = [*reply, im_end, *tokenizer(" LEAKED PAST THE END", add_special_tokens=False)["input_ids"]]
    return {
        "do_sample": False,
        "max_new_tokens": len(forced) + 2,
        "logits_processor": LogitsProcessorList([ForcedReply(forced)]),
    }


def test_chat_replies_stop_and_are_cut_at_im_end(release_and_converted):
    release, _ = release_and_converted
    tokenizer = AutoTokenizer.from_pretrained(release)
    model = AutoModelForImageTextToText.from_pretrained(release, dtype=torch.float32).eval()
    processor = AutoProcessor.from_pretrained(release)
    pixel_values = processor.image_processor(images=Image.new("RGB", (448, 448), "red"), return_tensors="pt")
    reply = model.chat(tokenizer, pixel_values["pixel_values"], "What is this?", forced_reply(tokenizer))
    assert reply == "The answer, it's a cat."  # cut at <|im_end|>, with the release's decoding clean-up


def test_pipeline_replies_stop_at_im_end(release_and_converted):
    release, _ = release_and_converted
    pipe = pipeline("image-text-to-text", model=str(release))
    assert isinstance(pipe.model, HoVLEForConditionalGeneration)
    assert type(pipe.processor).__name__ == "HoVLEProcessor"
    image = Image.new("RGB", (448, 448), "red")
    messages = [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": "What?"}]}]
    result = pipe(text=messages, generate_kwargs=forced_reply(pipe.processor.tokenizer), return_full_text=False)
    assert result[0]["generated_text"].strip() == "The answer , it 's a cat ."


def test_generation_config_for_engines_is_the_converters(release_and_converted, tmp_path):
    """What the vLLM plugin points vLLM at for a release (which has no generation_config.json): the file `hovle
    convert` writes for it, byte for byte (replies end at <|im_end|>, 92542, and </s>); a release with its own file
    keeps it (None)."""
    release, converted = release_and_converted
    config = AutoConfig.from_pretrained(release)
    folder = release_processing.release_generation_config_folder(release, config)
    written = json.loads((folder / "generation_config.json").read_text())
    assert written == json.loads((converted / "generation_config.json").read_text())
    assert written["eos_token_id"] == [92542, 2]
    own = shutil.copytree(release, tmp_path / "own")
    (own / "generation_config.json").write_text(json.dumps({"eos_token_id": 2}))
    assert release_processing.release_generation_config_folder(own, config) is None


@pytest.mark.parametrize("case", ["added_tokens.json moves <img>", "eos that is not the model's EOS"])
def test_bad_tokenizer_files_give_the_converters_error(tmp_path, case):
    release = write_release(tmp_path / "release")
    edits, expected_words = CONTRADICTIONS[case]
    for file_name, change in edits.items():
        edit_json(release / file_name, change)
    for auto_class in (AutoTokenizer, AutoProcessor):
        with pytest.raises(CheckpointError) as error:
            auto_class.from_pretrained(release, trust_remote_code=True)
        assert all(word in str(error.value) for word in expected_words), str(error.value)
    assert not list(tokenizer_cache_root().glob(".building-*"))  # nothing half-written left behind


def swap_img_and_quad(data: dict) -> None:
    """Tokenizer files that give `<img>` and `<quad>` each other's ids (consistent with each other, not the model)."""
    entries = data.get("added_tokens_decoder")
    if entries is not None:
        entries["92544"]["content"], entries["92547"]["content"] = "<quad>", "<img>"
    elif "<img>" in data:
        data["<img>"], data["<quad>"] = data["<quad>"], data["<img>"]


def test_image_token_ids_are_checked_against_the_config(tmp_path):
    release = write_release(tmp_path / "release")
    for name in ("tokenizer_config.json", "added_tokens.json"):
        edit_json(release / name, swap_img_and_quad)
    for auto_class in (AutoTokenizer, AutoProcessor):
        with pytest.raises(CheckpointError, match="disagree on image token ids") as error:
            auto_class.from_pretrained(release)
        assert "'<img>': (92547, 92544)" in str(error.value)


def test_a_bad_release_config_is_reported_by_auto_tokenizer(tmp_path):
    release = write_release(tmp_path / "release")
    edit_json(release / "config.json", lambda config: config["llm_config"].update(vocab_size=92546))
    with pytest.raises(CheckpointError, match="llm_config.vocab_size 92546"):
        AutoTokenizer.from_pretrained(release)


def test_cache_is_used_and_a_damaged_entry_is_rebuilt(tmp_path, monkeypatch, count_builds):
    monkeypatch.setattr(constants, "HF_HOME", str(tmp_path / "hf-home"))
    release = write_release(tmp_path / "release")
    first = AutoTokenizer.from_pretrained(release)
    assert len(count_builds) == 1
    entry = tokenizer_cache_root() / cache_key(release, AutoConfig.from_pretrained(release))
    assert sorted(p.name for p in tokenizer_cache_root().iterdir()) == [entry.name]  # no scratch folder left
    assert AutoTokenizer.from_pretrained(release).get_vocab() == first.get_vocab()
    AutoProcessor.from_pretrained(release)
    assert len(count_builds) == 1  # both from the cache

    tokenizer_json = entry / "tokenizer.json"
    tokenizer_json.write_bytes(tokenizer_json.read_bytes()[:1000])  # truncated, as by a full disk
    rebuilt = AutoTokenizer.from_pretrained(release)
    assert len(count_builds) == 2
    assert rebuilt.get_vocab() == first.get_vocab()
    assert [rebuilt(text)["input_ids"] for text in CORPUS] == [first(text)["input_ids"] for text in CORPUS]
    assert len(tokenizer_json.read_bytes()) > 1000  # the entry was written again, whole
    AutoTokenizer.from_pretrained(release)
    assert len(count_builds) == 2


def test_unwritable_cache_still_loads(tmp_path, monkeypatch, count_builds):
    home = tmp_path / "home"
    home.write_text("a file where the cache folder would go")
    monkeypatch.setattr(constants, "HF_HOME", str(home))
    release = write_release(tmp_path / "release")
    assert AutoTokenizer.from_pretrained(release)("Hello world")["input_ids"] == [1, 9843, 2028]
    assert len(count_builds) == 1


INTERNLM2_TOKENIZER_CODE = """
from transformers import PreTrainedTokenizerFast


class InternLM2Tokenizer(PreTrainedTokenizerFast):
    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        return cls.__new__(cls)
"""


def test_other_internlm2_tokenizers_keep_their_own_code(tmp_path):
    """An InternVL release (`vision_config`, its own tokenizer code) loads as transformers loads it without hovle."""
    folder = tmp_path / "internvl"
    folder.mkdir()
    config = {"model_type": "internvl_chat", "vision_config": {}, "llm_config": {}}
    (folder / "config.json").write_text(json.dumps(config))
    _with_remote_code(folder, INTERNVL_CONFIG_CODE)
    shutil.copy(RELEASE_TOKENIZER / "tokenizer_config.json", folder / "tokenizer_config.json")
    (folder / "tokenization_internlm2.py").write_text(INTERNLM2_TOKENIZER_CODE)
    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
    assert type(tokenizer).__name__ == "InternLM2Tokenizer" and not type(tokenizer).__module__.startswith("hovle")
    with pytest.raises(ValueError, match="trust_remote_code"):
        AutoTokenizer.from_pretrained(folder)


def test_registration_is_idempotent():
    from transformers.models.auto.processing_auto import PROCESSOR_MAPPING

    register_release_processing(HoVLEReleaseConfig)
    register_release_processing(HoVLEReleaseConfig)
    assert PROCESSOR_MAPPING[HoVLEReleaseConfig] is release_processing.HoVLEReleaseProcessor
    assert release_processing._RELEASE_CONFIG_CLASSES.count(HoVLEReleaseConfig) == 1
