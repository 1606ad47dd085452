"""HoVLE processor: InternVL dynamic tiling, `<image>` placeholder expansion and the `internlm2-chat` template.

* Tiling is InternVL's dynamic tiling: the grid is chosen by `closest_grid` (InternVL's choice in every case, its
  tie rule and order included, in time linear in the tile budget; budgets above `MAX_TILES_LIMIT` are refused),
  then the image is resized bicubically to the grid and cut row by row, a thumbnail is added when there is more
  than one tile, and transformers' `GotOcr2ImageProcessorPil` rescales and normalises the tiles; the test suite
  proves it against an independent PIL + numpy implementation.
* The processor owns the prompt: BOS, placeholders, image blocks and image-token counts are decided here, once, and
  `chat()`, the training collators, `hovle train`'s checks, lmms-eval and the vLLM plugin call it. Each `<image>`
  placeholder (`image_placeholder`) becomes the image's `image_block`: `<img>` + `<IMG_CONTEXT>` (`image_token`) x
  (tokens per tile x tiles) + `</img>`; `_get_num_multimodal_tokens` counts those blocks for an image size (as
  transformers' processors do for vLLM). Text with images but no `<image>` gets them prepended the way the original
  `chat()` did (`add_missing_placeholders`: `<image>\\n`, or `Image-1: <image>\\nImage-2: <image>\\n...`), as the
  chat template writes image items. A prompt gets one BOS (`tokenize_prompts`): from the text when it starts with it
  (a rendered template), else from the tokenizer. Keyword arguments are merged by transformers' `_merge_kwargs`.
* Images are opened defensively: EXIF orientation applied, every mode converted to RGB, and unreadable files
  (truncated, empty, not an image, over PIL's decompression-bomb limit) raise a `ValueError` naming the file.
* User text and control tokens, one policy: in chat MESSAGES the text is data. A control token (`<|im_start|>`,
  `<|im_end|>`, `<s>`, `<img>`, any added token) or `<image>` typed in a message's text is tokenized as plain text
  (`split_special_tokens`), so a user cannot end a turn, open a system turn or forge an image slot; only the
  template's own markup and `{"type": "image"}` items give control tokens and image blocks. `apply_chat_template`
  wraps such typed tokens in two private-use characters (`TEXT_MARK_START`/`TEXT_MARK_END`) in the rendered prompt,
  so `processor(text=rendered)` (the pipeline's and the README's path) keeps them text too; chats without typed
  control tokens render and tokenize exactly as before. A prompt STRING written by the caller and given to
  `processor(text=...)` is trusted markup: `<image>` there is a placeholder. `chat()` follows the release there:
  its question's `<image>` is the placeholder, its other control tokens are text; so do training data lines (the data
  format counts a typed `<image>` as a placeholder). The training collator supervises exactly the template's
  `{% generation %}` blocks (`encode_chats_with_reply_mask`), whatever the user typed.
"""

import json
import os
import re
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from transformers import BatchFeature
from transformers.processing_utils import ImagesKwargs, MultiModalData, ProcessingKwargs, ProcessorMixin, Unpack
from transformers.utils.chat_template_utils import render_jinja_template

IMAGE_PLACEHOLDER = "<image>"
IMAGE_START, IMAGE_END, IMAGE_CONTEXT = "<img>", "</img>", "<IMG_CONTEXT>"
END_OF_TURN = "<|im_end|>"
# InternVL's tile normalisation (ImageNet's statistics).
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
DEFAULT_SYSTEM_MESSAGE = (
    "你是由上海人工智能实验室联合商汤科技开发的书生多模态大模型，英文名叫InternVL, 是一个有用无害的人工智能助手。"
)

# The original `internlm2-chat` conversation template (MPT separator style, no newline after <|im_end|>):
#   <|im_start|>system\n{system}<|im_end|><|im_start|>user\n{q}<|im_end|><|im_start|>assistant\n{a}<|im_end|>...
# A leading system message replaces the default one; an empty one drops the system turn. Image blocks render as
# "<image>\n" (one image) or "Image-1: <image>\nImage-2: <image>\n" (several) before the message's text.
# The rendered text starts with the tokenizer's BOS, as InternLM2-chat's own template does: the release's prompts
# begin with it, and chat clients that tokenize a rendered conversation without special tokens (vLLM's
# `/v1/chat/completions`, `tokenizer.apply_chat_template(tokenize=True)`) rely on the template for it. This
# processor then adds no second one (`HoVLEProcessor.tokenize_prompts`).
CHAT_TEMPLATE = (
    "{{- bos_token -}}"
    "{%- set default_system = '" + DEFAULT_SYSTEM_MESSAGE + "' -%}"
    "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{%- set system = messages[0]['content'] if messages[0]['content'] is string "
    "else messages[0]['content'] | selectattr('type', 'equalto', 'text') | map(attribute='text') | join('') -%}"
    "{%- set turns = messages[1:] -%}"
    "{%- else -%}{%- set system = default_system -%}{%- set turns = messages -%}{%- endif -%}"
    "{%- if system -%}<|im_start|>system\n{{ system }}<|im_end|>{%- endif -%}"
    "{%- for message in turns -%}"
    "{%- if message['content'] is string -%}{%- set body = message['content'] -%}"
    "{%- else -%}"
    "{%- set images = message['content'] | selectattr('type', 'in', ['image', 'image_url']) | list -%}"
    "{%- set text = message['content'] | selectattr('type', 'equalto', 'text') | map(attribute='text') | join('\n') -%}"
    "{%- set ns = namespace(prefix='') -%}"
    "{%- if images | length == 1 -%}{%- set ns.prefix = '<image>\n' -%}"
    "{%- else -%}{%- for image in images -%}"
    "{%- set ns.prefix = ns.prefix + 'Image-' + loop.index | string + ': <image>\n' -%}"
    "{%- endfor -%}{%- endif -%}"
    "{%- set body = ns.prefix + text -%}"
    "{%- endif -%}"
    "{%- if message['role'] == 'assistant' -%}"
    "<|im_start|>assistant\n{% generation %}{{ body }}<|im_end|>{% endgeneration %}"
    "{%- else -%}<|im_start|>{{ message['role'] }}\n{{ body }}<|im_end|>{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|im_start|>assistant\n{% endif %}"
)


# Chat messages carry user data: a control token (`<|im_end|>`, `<s>`, `<img>`, ...) or `<image>` typed in a message's
# text is wrapped in these private-use characters when the template renders it, and `encode_marked_texts` encodes
# it as plain text; only the template's own markup and image items give control tokens and image blocks.
TEXT_MARK_START, TEXT_MARK_END = "\ue000", "\ue001"
_MARKED = re.compile(f"{TEXT_MARK_START}(.*?){TEXT_MARK_END}", re.DOTALL)


def chat_control_tokens(tokenizer, placeholder: bool = True) -> list[str]:
    """The strings that are markup, not text: the tokenizer's added tokens (whitespace ones excepted) and, unless
    `placeholder` is False, `<image>`; longest first, so the longest match wins."""
    tokens = {token for token in getattr(tokenizer, "added_tokens_encoder", {}) if token.strip()}
    if placeholder:
        tokens.add(IMAGE_PLACEHOLDER)
    return sorted(tokens, key=len, reverse=True)


def mark_user_text(messages: list[dict], tokens: list[str]) -> list[dict]:
    """Copies of chat messages whose texts (string contents and `{"type": "text"}` items) have every control token
    wrapped in the text marks; marks already in the text are dropped, so they cannot forge a marked token."""
    if not tokens:
        return messages
    pattern = re.compile("|".join(re.escape(token) for token in tokens))

    def mark(text):
        if not isinstance(text, str):
            return text
        text = text.replace(TEXT_MARK_START, "").replace(TEXT_MARK_END, "")
        return pattern.sub(lambda match: TEXT_MARK_START + match.group() + TEXT_MARK_END, text)

    marked = []
    for message in messages:
        if not isinstance(message, dict):  # a message object: left to transformers' own handling
            marked.append(message)
            continue
        content = message.get("content")
        if isinstance(content, str):
            content = mark(content)
        elif isinstance(content, list):
            content = [
                {**item, "text": mark(item["text"])}
                if isinstance(item, dict) and item.get("type") == "text" and "text" in item
                else item
                for item in content
            ]
        marked.append({**message, "content": content})
    return marked


def without_marked_text(text: str) -> str:
    """`text` less its marked (user-typed) control tokens: what counts as markup."""
    return _MARKED.sub("", text)


def encode_marked_texts(tokenizer, texts: list[str], add_special_tokens: bool = True) -> list[tuple[list, list]]:
    """(ids, character offsets in the text) per text: marked control tokens are encoded as plain text
    (`split_special_tokens`), everything else as the tokenizer always does. A text without marks is encoded whole,
    so its ids are exactly the tokenizer's."""
    newline = tokenizer("\n", add_special_tokens=False)["input_ids"]
    rows = []
    for text in texts:
        ids, offsets, position = [], [], 0
        for index, piece in enumerate(_MARKED.split(text)):
            plain = index % 2 == 1
            if piece:
                if position == 0:
                    encoded = tokenizer(
                        piece,
                        add_special_tokens=add_special_tokens,
                        split_special_tokens=plain,
                        return_offsets_mapping=True,
                    )
                    shift, skip = position + plain, 0
                else:
                    # Encoded after a newline, then the newline dropped: SentencePiece would otherwise read the piece
                    # as the start of a text and add its prefix space (as transformers' `encode_marked_chat` does).
                    encoded = tokenizer(
                        "\n" + piece,
                        add_special_tokens=False,
                        split_special_tokens=plain,
                        return_offsets_mapping=True,
                    )
                    shift, skip = position + plain - 1, len(newline)
                    if encoded["input_ids"][:skip] != newline:
                        raise ValueError(f"Cannot encode {piece!r} after a newline without changing its tokens")
                if plain and tokenizer.convert_tokens_to_ids(piece) in encoded["input_ids"]:
                    raise ValueError(
                        f"Cannot keep {piece!r} typed in a chat message as text: this tokenizer's vocabulary encodes "
                        "it as that token even as plain text"
                    )
                ids += encoded["input_ids"][skip:]
                offsets += [(a + shift, b + shift) if b > a else (a, b) for a, b in encoded["offset_mapping"][skip:]]
            # A marked piece stands in the text with its two marks.
            position += len(piece) + (2 if plain else 0)
        rows.append((ids, offsets))
    return rows


def tokenize_texts(tokenizer, texts: list[str], **kwargs):
    """`tokenizer(texts, **kwargs)`, except that texts holding marked (user-typed) control tokens are encoded by
    `encode_marked_texts`, then padded by the tokenizer (`padding`, `padding_side`, `return_attention_mask`,
    `add_special_tokens`, `return_offsets_mapping` and `return_tensors` apply)."""
    if not any(TEXT_MARK_START in text for text in texts):
        return tokenizer(texts, **kwargs)
    kwargs = {key: value for key, value in kwargs.items() if value is not None}  # e.g. transformers' videos=None
    supported = {
        "add_special_tokens",
        "padding",
        "padding_side",
        "return_attention_mask",
        "return_offsets_mapping",
        "return_tensors",
    }
    if set(kwargs) - supported:
        raise ValueError(
            f"{sorted(set(kwargs) - supported)} are not supported for chat messages holding control tokens as text"
        )
    rows = encode_marked_texts(tokenizer, texts, add_special_tokens=kwargs.get("add_special_tokens", True))
    padded = tokenizer.pad(
        {"input_ids": [ids for ids, _ in rows]},
        padding=kwargs.get("padding", False),
        padding_side=kwargs.get("padding_side"),
        return_attention_mask=kwargs.get("return_attention_mask", True),
    )
    if kwargs.get("return_offsets_mapping"):
        width = max(len(ids) for ids in padded["input_ids"])
        left = kwargs.get("padding_side", tokenizer.padding_side) == "left"
        padded["offset_mapping"] = [
            [(0, 0)] * (width - len(offsets)) + offsets if left else offsets + [(0, 0)] * (width - len(offsets))
            for _, offsets in rows
        ]
    if kwargs.get("return_tensors"):
        padded = BatchFeature(dict(padded), tensor_type=kwargs["return_tensors"])
    return padded


# The most tiles one image may become. The release's LLM reads 32,768 positions and every tile (and the thumbnail
# on top) takes 256 of them, so 127 tiles + thumbnail already fill the whole context: a larger grid could never be
# read, and tiling it would only cost time and memory (one request could stall a server).
MAX_TILES_LIMIT = 32768 // 256 - 1


def check_max_tiles(max_tiles) -> None:
    """Refuse a tile budget that is not a whole number in 1..`MAX_TILES_LIMIT`."""
    if isinstance(max_tiles, bool) or not isinstance(max_tiles, int) or max_tiles < 1:
        raise ValueError(f"max_tiles (max_patches) must be a whole number of at least 1, got {max_tiles!r}")
    if max_tiles > MAX_TILES_LIMIT:
        raise ValueError(
            f"max_tiles (max_patches) is {max_tiles}, above the limit of {MAX_TILES_LIMIT} (the image tokens of more "
            "tiles would not fit the LLM's 32768-token context)"
        )


def _grids_in_set_order(min_tiles: int, max_tiles: int) -> list[tuple[int, int]]:
    """InternVL's candidate grids in the iteration order of the set it builds (`set((i, j) for n in range(min, max
    + 1) for i in range(1, n + 1) for j in range(1, n + 1) if min <= i * j <= max)`): a set's order depends only on
    the distinct elements and the order they were first added, so the same elements are added in that order, each
    once (O(n log n) grids instead of the comprehension's O(n^3) steps)."""

    def first_added():
        for i in range(1, min_tiles + 1):  # n == min_tiles: every (i, j) with both sides <= n
            for j in range(max(1, -(-min_tiles // i)), min(min_tiles, max_tiles // i) + 1):
                yield i, j
        for n in range(min_tiles + 1, max_tiles + 1):  # later n add the grids whose longer side is n
            for i in range(1, min(n - 1, max_tiles // n) + 1):
                if i * n >= min_tiles:
                    yield i, n
            for j in range(max(1, -(-min_tiles // n)), min(n, max_tiles // n) + 1):
                yield n, j

    return list(set(first_added()))


def closest_grid(width: int, height: int, min_tiles: int, max_tiles: int, tile_size: int) -> tuple[int, int]:
    """(columns, rows) of InternVL's `find_closest_aspect_ratio` for a `width` x `height` image, the same grid in
    every case, in O(max_tiles) steps instead of a scan of all O(max_tiles log max_tiles) grids.

    InternVL sorts the grids with min_tiles <= columns * rows <= max_tiles by area and keeps the first with the
    smallest |width/height - columns/rows|; a later grid with the same difference replaces it while the image's
    area exceeds half the grid's pixel area. So only the grids with the smallest difference matter: for each row
    count the best column counts lie next to aspect * rows, which gives the smallest difference and its grids;
    the replacement rule then runs over those few grids in InternVL's order (area, then its set's order)."""
    if min_tiles > max_tiles:  # InternVL finds no candidate grid and keeps its starting guess, one tile
        return (1, 1)
    aspect = width / height
    per_rows = []  # (rows, lowest columns, highest columns) of the grids that exist
    best = float("inf")
    for rows in range(1, max_tiles + 1):
        low, high = max(1, -(-min_tiles // rows)), max_tiles // rows
        if low > high:
            continue
        per_rows.append((rows, low, high))
        near = min(max(int(aspect * rows), low), high)
        for cols in (near - 1, near, near + 1):
            if low <= cols <= high:
                best = min(best, abs(aspect - cols / rows))
    ties = []
    for rows, low, high in per_rows:
        near = min(max(int(aspect * rows), low), high)
        # The difference falls then rises along the columns: the best ones are next to `near`, and a run of equal
        # ones can only go on outwards from there.
        for cols in range(max(low, near - 1), min(high, near + 1) + 1):
            if abs(aspect - cols / rows) == best:
                ties.append((cols, rows))
        for cols, step in ((near - 2, -1), (near + 2, 1)):
            while low <= cols <= high and abs(aspect - cols / rows) == best:
                ties.append((cols, rows))
                cols += step
    ties = sorted(set(ties), key=lambda grid: grid[0] * grid[1])
    areas = [cols * rows for cols, rows in ties]
    if len(set(areas)) != len(areas):  # two equally close grids of one area: InternVL's set order decides
        order = {grid: index for index, grid in enumerate(_grids_in_set_order(min_tiles, max_tiles))}
        ties.sort(key=lambda grid: (grid[0] * grid[1], order[grid]))
    chosen = ties[0]
    for cols, rows in ties[1:]:
        if width * height > 0.5 * tile_size * tile_size * cols * rows:
            chosen = (cols, rows)
    return chosen


def bos_already_in(tokenizer, texts: list[str]) -> bool:
    """Whether every text already starts with the tokenizer's BOS (a rendered chat template): then tokenizing must
    not add another."""
    bos = getattr(tokenizer, "bos_token", None)
    return bool(bos) and all(text.startswith(bos) for text in texts)


def decode_reply(tokenizer, new_token_ids) -> str:
    """The assistant's reply from the tokens generated after the prompt: cut at `<|im_end|>`, decoded without special
    tokens and stripped, as the original `chat()` returned it."""
    ids = [int(i) for i in new_token_ids]
    end = tokenizer.convert_tokens_to_ids(END_OF_TURN)
    if end in ids:
        ids = ids[: ids.index(end)]
    return tokenizer.decode(ids, skip_special_tokens=True).strip()


def exact_decoder(tokenizer):
    """The fast tokenizer's decoder without the release's clean-up steps (the `Replace` steps that only delete
    spaces: `" ,"` -> `","`, `" 's"` -> `"'s"`; the conversion writes them into the decoder), so that decoding gives
    the very text the ids stand for; None for a tokenizer without such a decoder (its `batch_decode` then takes
    `clean_up_tokenization_spaces=False`)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    decoder = getattr(backend, "decoder", None)
    if decoder is None:
        return None
    state = json.loads(decoder.__getstate__())
    if state.get("type") != "Sequence":
        return decoder

    def is_clean_up(step: dict) -> bool:
        pattern = (step.get("pattern") or {}).get("String") or ""
        return step.get("type") == "Replace" and " " in pattern and pattern.replace(" ", "") == step.get("content")

    state["decoders"] = [step for step in state["decoders"] if not is_clean_up(step)]
    exact = type(decoder)([])  # tokenizers' `decoders.Sequence`, reached without importing tokenizers here
    exact.__setstate__(json.dumps(state).encode())
    return exact


def refuse_typed_image_tokens(text: str) -> None:
    """Image tokens come only from images: a `<IMG_CONTEXT>`, `<img>` or `</img>` typed in the text would be read as
    an image slot (and break the count of image features), so it is refused; write `<image>` where an image goes."""
    for token in (IMAGE_CONTEXT, IMAGE_START, IMAGE_END):
        if token in without_marked_text(text):
            raise ValueError(
                f"The text contains {token!r}, which only the processor writes (for each image); put {IMAGE_PLACEHOLDER} "
                "where an image goes"
            )


def add_missing_placeholders(text: str, num_images: int) -> str:
    """The original chat() convention for a question with images but no `<image>`."""
    if num_images == 0 or IMAGE_PLACEHOLDER in without_marked_text(text):
        return text
    if num_images == 1:
        return f"{IMAGE_PLACEHOLDER}\n{text}"
    return "".join(f"Image-{i + 1}: {IMAGE_PLACEHOLDER}\n" for i in range(num_images)) + text


def count_placeholders(messages: list[dict]) -> int:
    """The `<image>` placeholders the chat template writes for `messages` when a typed `<image>` is one (the
    training data format, `typed_placeholders`): each image item (those of a leading system message excepted, whose
    text alone the template keeps) and each `<image>` typed in a text."""
    prompts, _ = render_jinja_template(conversations=[messages], chat_template=CHAT_TEMPLATE, bos_token="")
    return prompts[0].count(IMAGE_PLACEHOLDER)


def image_from_array(array: np.ndarray) -> Image.Image:
    """A PIL image from an (H, W), (H, W, C) or (C, H, W) array with 1, 3 or 4 channels: uint8 as is, uint16 scaled
    from its full range (/257, as 16-bit PIL images are), other integers when they lie in 0..255, floats in [0, 1]
    scaled to 0..255 (other floats clipped to 0..255), booleans as black and white."""
    if array.ndim == 3 and array.shape[0] in (1, 3, 4) and array.shape[-1] not in (1, 3, 4):
        array = array.transpose(1, 2, 0)  # (C, H, W) -> (H, W, C)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)) or 0 in array.shape:
        raise ValueError(
            f"An image array must be (height, width), (height, width, 1|3|4) or (1|3|4, height, width); got shape "
            f"{array.shape}"
        )
    if array.dtype == np.bool_:
        array = array.astype(np.uint8) * 255
    elif np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise ValueError("The image array holds NaN or infinite values")
        scale = 255.0 if array.size and array.min() >= 0.0 and array.max() <= 1.0 else 1.0
        array = np.clip(array * scale, 0, 255).round().astype(np.uint8)
    elif array.dtype != np.uint8:
        if not np.issubdtype(array.dtype, np.integer):
            raise ValueError(f"Unsupported image array dtype {array.dtype}: use uint8, floats in [0, 1] or booleans")
        if array.dtype == np.uint16:
            array = sixteen_to_eight_bits(array)
        elif array.min() < 0 or array.max() > 255:
            # No range to scale by (int32 is also what PIL's 32-bit mode gives): clipping would turn it white.
            raise ValueError(
                f"The {array.dtype} image array holds values from {array.min()} to {array.max()}, outside 0..255: "
                "pass uint8, uint16 (scaled from 0..65535) or floats in [0, 1]"
            )
        array = array.astype(np.uint8)
    return Image.fromarray(array)


def sixteen_to_eight_bits(array: np.ndarray) -> np.ndarray:
    """16-bit samples (0..65535) as 8-bit ones (0..255), /257 rounded: 257 * k becomes k exactly."""
    return (array.astype(np.uint32) * 255 + 32767) // 65535


def open_image(image: Any) -> Image.Image:
    """A PIL RGB image from a PIL image, a numpy array or a local path, or a `ValueError` naming the problem."""
    name = "image"
    if isinstance(image, (str, os.PathLike)):
        name = str(image)
        if not os.path.isfile(name):
            raise ValueError(f"Image file not found: {name}")
        try:
            with Image.open(name) as opened:
                opened.load()  # decode now: truncation and bombs surface here, not deep in preprocessing
                image = opened.copy()
        except Image.DecompressionBombError as error:
            raise ValueError(f"{name} is larger than PIL's decompression-bomb limit ({error})") from error
        except UnidentifiedImageError as error:
            raise ValueError(f"{name} is not an image PIL can read (empty, corrupt or another format)") from error
        except OSError as error:
            raise ValueError(f"Could not decode {name} (truncated or corrupt image): {error}") from error
    elif isinstance(image, np.ndarray):
        image = image_from_array(image)
    if not isinstance(image, Image.Image):
        raise ValueError(f"Unsupported image input of type {type(image).__name__}: pass a PIL image, array or path")
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16B", "I;16L"):
        # 16-bit grey: scaled from its full range, as a uint16 array is (PIL's convert("RGB") would clip to white).
        image = Image.fromarray(sixteen_to_eight_bits(np.asarray(image)).astype(np.uint8))
    elif image.mode in ("I", "F"):
        # 32-bit grey has no fixed range: scaled by its peak, as PIL's convert("RGB") would clip it to white.
        array = np.asarray(image, dtype=np.float64)
        peak = array.max() if array.size and array.max() > 0 else 1.0
        image = Image.fromarray(np.clip(array / peak * 255.0, 0, 255).round().astype(np.uint8))
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    return image.convert("RGB")


def _spans_after_expansion(prompt: str, expanded: str, spans) -> list[tuple[int, int]]:
    """Character spans of `prompt` moved to where they lie in `expanded`, the same text after `expand_texts`: each
    `<image>` replaced by its token block (a position moves by what the blocks before it add), or, for a text with
    images but no placeholder, the placeholder lines prepended (every position moves by their length)."""
    pattern = f"{_MARKED.pattern}|{re.escape(IMAGE_PLACEHOLDER)}"  # a marked `<image>` is text: not expanded
    placeholders = [m.start() for m in re.finditer(pattern, prompt, flags=re.DOTALL) if m.group(1) is None]
    if not placeholders:
        return [(start + len(expanded) - len(prompt), end + len(expanded) - len(prompt)) for start, end in spans]
    block = re.escape(IMAGE_START) + "(?:" + re.escape(IMAGE_CONTEXT) + ")*" + re.escape(IMAGE_END)
    gained = [len(match.group()) - len(IMAGE_PLACEHOLDER) for match in re.finditer(block, expanded)]

    def moved(char: int) -> int:
        return char + sum(extra for place, extra in zip(placeholders, gained, strict=True) if place < char)

    return [(moved(start), moved(end)) for start, end in spans]


class HoVLEImagesKwargs(ImagesKwargs, total=False):
    """Image options of `HoVLEProcessor`: `max_tiles` (InternVL's budget; `max_patches`, `min_patches` and
    `crop_to_patches` come from the image processor's own options)."""

    # Typed loosely on purpose: `check_max_tiles` refuses a wrong value with a message naming the setting.
    max_tiles: Any


class HoVLEProcessorKwargs(ProcessingKwargs, total=False):
    """The keyword arguments `HoVLEProcessor.__call__` takes, merged by transformers' `ProcessorMixin._merge_kwargs`
    (flat, or under `text_kwargs` / `images_kwargs`)."""

    images_kwargs: HoVLEImagesKwargs
    _defaults = {"text_kwargs": {"padding_side": "left", "return_attention_mask": True}}


def _tiling_options(images_kwargs: dict) -> tuple[int | None, dict]:
    """(max_tiles, the other tiling options) from merged image options: `max_patches`, the image processor's name
    for the budget, wins over `max_tiles`; only `min_patches` and `crop_to_patches` reach the tiling besides."""
    max_tiles = images_kwargs.get("max_patches", images_kwargs.get("max_tiles"))
    return max_tiles, {key: images_kwargs[key] for key in ("min_patches", "crop_to_patches") if key in images_kwargs}


class HoVLEProcessor(ProcessorMixin):
    r"""
    Turns images and text (or chat messages, through `apply_chat_template`) into HoVLE's inputs:
    `input_ids`, `attention_mask` (left padded) and `pixel_values` (the tiles of every image, in order).

    Args:
        image_processor: a `GotOcr2ImageProcessorPil` configured for 448 px tiles and ImageNet mean/std.
        tokenizer: the converted fast tokenizer (it knows `<img>`, `</img>`, `<IMG_CONTEXT>`).
        tokens_per_tile: LLM tokens per tile (256 for the release).
        chat_template: the `internlm2-chat` template by default.
    """

    # transformers' naming (as `InternVLProcessor`): `image_token` is the token each image feature fills, between the
    # start and end image tokens; `image_placeholder` is what a prompt writes where an image goes (the release's).
    image_token = IMAGE_CONTEXT
    start_image_token, end_image_token = IMAGE_START, IMAGE_END
    image_placeholder = IMAGE_PLACEHOLDER
    valid_processor_kwargs = HoVLEProcessorKwargs

    def __init__(self, image_processor=None, tokenizer=None, tokens_per_tile: int = 256, chat_template=None, **kwargs):
        super().__init__(image_processor, tokenizer, chat_template=chat_template or CHAT_TEMPLATE, **kwargs)
        self.tokens_per_tile = tokens_per_tile
        self.image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_CONTEXT)
        self.start_image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_START)
        self.end_image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_END)

    def image_block(self, num_tiles: int) -> str:
        """The text one image of `num_tiles` tiles (the thumbnail included) stands for in a prompt: `<img>`, then
        `<IMG_CONTEXT>` x (`tokens_per_tile` x `num_tiles`), then `</img>`."""
        return IMAGE_START + IMAGE_CONTEXT * (self.tokens_per_tile * num_tiles) + IMAGE_END

    def image_block_ids(self, num_tiles: int) -> list[int]:
        """The token ids of `image_block(num_tiles)` (the same block, without tokenizing it)."""
        return [
            self.start_image_token_id,
            *[self.image_token_id] * (self.tokens_per_tile * num_tiles),
            self.end_image_token_id,
        ]

    def expand_placeholders(self, text: str, num_tiles: list[int], keep_extra: bool = False) -> str:
        """`text` with its `<image>` placeholders replaced, in order, by the `image_block` of each image's tile count.
        A marked `<image>` (typed by a user in a chat message) is text and stays. The placeholders must match the
        images; with `keep_extra` the images fill the first ones and those left over stay plain text (the release's
        `chat()` with a history)."""
        found = without_marked_text(text).count(IMAGE_PLACEHOLDER)
        if found < len(num_tiles) or (found > len(num_tiles) and not keep_extra):
            raise ValueError(
                f"The text has {found} {IMAGE_PLACEHOLDER} placeholders but {len(num_tiles)} images were given"
            )
        tiles = iter(num_tiles)

        def replace(match: re.Match) -> str:
            count = next(tiles, None) if match.group(1) is None else None
            return match.group() if count is None else self.image_block(count)

        return re.sub(f"{_MARKED.pattern}|{re.escape(IMAGE_PLACEHOLDER)}", replace, text, flags=re.DOTALL)

    def render_chats(
        self, conversations: list[list[dict]], typed_placeholders: bool = False, **template_kwargs
    ) -> tuple[list[str], list]:
        """(prompts, generation spans) of chats rendered with this processor's template (transformers'
        `render_jinja_template`; `add_generation_prompt`, `return_assistant_tokens_mask`... pass through). Control
        tokens typed in the messages are marked as text; a typed `<image>` too, unless `typed_placeholders` (the
        release's `chat()` questions and the training data format count it as a placeholder)."""
        tokens = chat_control_tokens(self.tokenizer, placeholder=not typed_placeholders)
        return render_jinja_template(
            conversations=[mark_user_text(list(chat), tokens) for chat in conversations],
            chat_template=self.chat_template,
            **self.tokenizer.special_tokens_map,
            **template_kwargs,
        )

    def _get_num_multimodal_tokens(self, image_sizes=None, **kwargs) -> MultiModalData:
        """transformers' (and vLLM's) count of the prompt tokens images take: per image of `(height, width)` in
        `image_sizes`, `num_image_patches` (its tiles, the thumbnail included) and `num_image_tokens` (the tokens of
        its whole `image_block`, `<img>` and `</img>` included). `max_tiles` (or `max_patches`), `min_patches` and
        `crop_to_patches` apply as in `__call__`, flat or under `images_kwargs`."""
        if image_sizes is None:
            return MultiModalData()
        images_kwargs = self._merge_kwargs(HoVLEProcessorKwargs, **kwargs)["images_kwargs"]
        max_tiles, image_kwargs = _tiling_options(images_kwargs)
        tiles = [self.num_tiles(width, height, max_tiles, **image_kwargs) for height, width in image_sizes]
        return MultiModalData(
            num_image_tokens=[len(self.image_block_ids(count)) for count in tiles], num_image_patches=tiles
        )

    @classmethod
    def from_model_config(cls, tokenizer, config) -> "HoVLEProcessor":
        """The processor for a HoVLE model config and its tokenizer: InternVL tiling through transformers' GotOcr2 PIL
        image processor (tile size, dynamic tiling and tile limits from the config, ImageNet mean/std) and the
        release's chat template. The tokenizer is not modified."""
        from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil

        side = config.embedding_config.image_size
        image_processor = GotOcr2ImageProcessorPil(
            size={"height": side, "width": side},
            # The source config's tiling: dynamic tiles, or the whole image as one tile (`dynamic_image_size=false`).
            crop_to_patches=config.dynamic_image_size,
            min_patches=config.min_dynamic_patch,
            max_patches=config.max_dynamic_patch,
            image_mean=IMAGENET_MEAN,
            image_std=IMAGENET_STD,
            do_convert_rgb=True,
        )
        return cls(image_processor=image_processor, tokenizer=tokenizer, tokens_per_tile=config.tokens_per_tile)

    @property
    def model_input_names(self) -> list[str]:
        return ["input_ids", "attention_mask", "pixel_values"]

    def _images_per_text(self, images, texts: list[str]) -> list[list]:
        if images is None:
            return [[] for _ in texts]
        if not isinstance(images, (list, tuple)):
            images = [images]
        if images and all(isinstance(item, (list, tuple)) for item in images):
            if len(images) != len(texts):
                raise ValueError(f"Got image lists for {len(images)} samples but {len(texts)} texts")
            return [list(item) for item in images]
        if len(texts) == 1:
            return [list(images)]
        # A flat list for several texts: hand them out by placeholder count.
        counts = [without_marked_text(t).count(IMAGE_PLACEHOLDER) for t in texts]
        if sum(counts) != len(images):
            raise ValueError(
                f"The texts have {sum(counts)} {IMAGE_PLACEHOLDER} placeholders but {len(images)} images were given"
            )
        grouped, start = [], 0
        for count in counts:
            grouped.append(list(images[start : start + count]))
            start += count
        return grouped

    def __call__(self, images=None, text=None, **kwargs: Unpack[HoVLEProcessorKwargs]) -> BatchFeature:
        r"""
        images: one image, a list (matched to the `<image>` placeholders in order) or one list per text.
        text: a string or a list of strings (chat-template output or raw text).
        max_tiles: the most tiles per image (6 by default; the thumbnail comes on top). `max_patches`, the name
            transformers' image processor gives it, is accepted too.
        Other keyword arguments go to the tokenizer (`padding`, `return_tensors`, ...), flat or under
        `text_kwargs` / `images_kwargs`, as transformers' processors take them (`_merge_kwargs`).
        """
        if text is None:
            raise ValueError("HoVLEProcessor needs text (use apply_chat_template for chat messages)")
        if not isinstance(text, str) and len(text) == 0:
            raise ValueError("HoVLEProcessor got an empty batch: pass at least one text")
        kwargs.update(kwargs.pop("processor_kwargs", None) or {})  # how some transformers versions hand them over
        merged = self._merge_kwargs(HoVLEProcessorKwargs, **kwargs)
        text_kwargs = merged["text_kwargs"]
        return_tensors = text_kwargs.pop("return_tensors", None)
        max_tiles, image_kwargs = _tiling_options(merged["images_kwargs"])
        expanded, pixel_values = self.expand_texts(text, images, max_tiles=max_tiles, **image_kwargs)
        text_kwargs.setdefault("padding", len(expanded) > 1)
        data = dict(self.tokenize_prompts(expanded, **text_kwargs))
        if pixel_values is not None:
            data["pixel_values"] = pixel_values
        return BatchFeature(data=data, tensor_type=return_tensors)

    def tokenize_prompts(self, texts: list[str], **kwargs):
        """The one tokenization of prompts: the BOS comes from the text when the text starts with it (a rendered chat
        template), else from the tokenizer (`add_special_tokens`), never twice."""
        if bos_already_in(self.tokenizer, texts):
            kwargs.setdefault("add_special_tokens", False)
        return tokenize_texts(self.tokenizer, texts, **kwargs)

    def apply_chat_template(self, conversation, *args, **kwargs):
        """transformers' `apply_chat_template`, with the text of the messages kept as text: control tokens and
        `<image>` typed in a message are marked (see `mark_user_text`), so they are tokenized as plain text here and
        in `__call__` of the rendered prompt; the template's markup and image items are not marked."""
        tokens = chat_control_tokens(self.tokenizer)
        if conversation and isinstance(conversation[0], (list, tuple)):
            conversation = [mark_user_text(list(chat), tokens) for chat in conversation]
        elif conversation and isinstance(conversation[0], dict):
            conversation = mark_user_text(list(conversation), tokens)
        return super().apply_chat_template(conversation, *args, **kwargs)

    def encode_chats_with_reply_mask(
        self,
        conversations: list[list[dict]],
        images: list[list] | None = None,
        max_tiles: int | None = None,
        typed_placeholders: bool = False,
    ) -> BatchFeature:
        """Chats (with their images, in placeholder order) -> `input_ids`, `attention_mask` (left padded),
        `assistant_masks` and `pixel_values`: what training needs. The reply spans are the chat template's
        `{% generation %}` blocks (transformers' `return_assistant_tokens_mask`), so exactly the assistant messages and
        their closing `<|im_end|>` are marked, whatever the user text contains (quoted chat markup included).
        Control tokens typed in the messages are text; `<image>` typed there is a placeholder only with
        `typed_placeholders` (the training data format, which `hovle train`'s data check counts that way)."""
        prompts, generation_spans = self.render_chats(
            conversations, typed_placeholders=typed_placeholders, return_assistant_tokens_mask=True
        )
        per_text = images if images is not None else [[] for _ in prompts]
        expanded, pixel_values = self.expand_texts(prompts, per_text, max_tiles=max_tiles)
        encoded = self.tokenize_prompts(
            expanded,
            padding=True,
            padding_side="left",
            return_offsets_mapping=True,
        )
        masks = []
        for row, (prompt, text) in enumerate(zip(prompts, expanded, strict=True)):
            spans = _spans_after_expansion(prompt, text, generation_spans[row])
            # BOS and padding have empty (0, 0) offsets; a token is marked when it starts inside a reply.
            masks.append(
                [
                    int(bool(real) and any(a <= start < b for a, b in spans) and end > start)
                    for (start, end), real in zip(
                        encoded["offset_mapping"][row], encoded["attention_mask"][row], strict=True
                    )
                ]
            )
        data = {
            "input_ids": encoded["input_ids"],
            "attention_mask": encoded["attention_mask"],
            "assistant_masks": masks,
        }
        if pixel_values is not None:
            data["pixel_values"] = pixel_values
        return BatchFeature(data=data, tensor_type="pt")

    def expand_texts(self, text, images=None, max_tiles: int | None = None, **image_kwargs):
        """Tile the images and expand the placeholders: (expanded texts, pixel values of all tiles or None)."""
        texts = [text] if isinstance(text, str) else list(text)
        per_text = self._images_per_text(images, texts)
        for sample_text in texts:
            refuse_typed_image_tokens(sample_text)
        if max_tiles is not None:
            check_max_tiles(max_tiles)  # also without images: a wrong setting is an error wherever it is passed
        pixel_values, expanded = [], []
        for sample_text, sample_images in zip(texts, per_text, strict=True):
            sample_text = add_missing_placeholders(sample_text, len(sample_images))
            tiles = [self.tile_image(image, max_tiles=max_tiles, **image_kwargs) for image in sample_images]
            pixel_values += tiles
            expanded.append(self.expand_placeholders(sample_text, [len(t) for t in tiles]))
        return expanded, (np.concatenate(pixel_values) if pixel_values else None)

    def encode_image_blocks(self, images: list, max_tiles: int | None = None) -> BatchFeature:
        """Each image alone as its `image_block` (no BOS, no text), left padded: `input_ids`, `attention_mask` and
        `pixel_values` as tensors, what stage-I distillation feeds the embedding module."""
        return self(
            images=[[image] for image in images],
            text=[IMAGE_PLACEHOLDER] * len(images),
            max_tiles=max_tiles,
            padding=True,
            add_special_tokens=False,  # an image block alone: nothing the LLM reads as the start of a text
            return_tensors="pt",
        )

    def tile_image(self, image, max_tiles: int | None = None, **image_kwargs) -> np.ndarray:
        """One image (anything `open_image` takes) -> its normalised tiles, (tiles, 3, H, W) float32, the thumbnail
        last; each tile becomes `tokens_per_tile` image tokens."""
        image = open_image(image)
        grid = self.grid(image.width, image.height, max_tiles, **image_kwargs)
        image_kwargs = {key: value for key, value in image_kwargs.items() if key not in ("min_patches", "max_patches")}
        image_kwargs["crop_to_patches"] = False  # the grid is chosen here (`closest_grid`), not by the image processor
        if grid != (1, 1):
            # InternVL's cut: the image resized to the grid, tiles row by row, then a thumbnail of the whole image.
            size, resample = self.image_processor.size, self.image_processor.resample
            cols, rows = grid
            resized = image.resize((size["width"] * cols, size["height"] * rows), resample)
            image = [
                resized.crop((c * size["width"], r * size["height"], (c + 1) * size["width"], (r + 1) * size["height"]))
                for r in range(rows)
                for c in range(cols)
            ] + [image.resize((size["width"], size["height"]), resample)]
        processed = self.image_processor(images=image, return_tensors="np", **image_kwargs)
        return processed["pixel_values"].astype(np.float32)

    def grid(self, width: int, height: int, max_tiles: int | None = None, **image_kwargs) -> tuple[int, int]:
        """(columns, rows) of the tiles an image of this size becomes: (1, 1) is one tile and no thumbnail, any other
        grid gets the thumbnail on top. `min_patches`, `max_patches` and `crop_to_patches` override the image
        processor's settings, as they do for transformers' image processor."""
        if max_tiles is None:
            max_tiles = image_kwargs.get("max_patches", self.image_processor.max_patches)
        check_max_tiles(max_tiles)
        min_tiles = image_kwargs.get("min_patches", self.image_processor.min_patches)
        if not image_kwargs.get("crop_to_patches", self.image_processor.crop_to_patches) or max_tiles <= 1:
            return (1, 1)
        return closest_grid(width, height, min_tiles, max_tiles, self.image_processor.size["height"])

    def num_tiles(self, width: int, height: int, max_tiles: int | None = None, **image_kwargs) -> int:
        """How many tiles (the thumbnail included) `tile_image` makes of an image of this size."""
        cols, rows = self.grid(width, height, max_tiles, **image_kwargs)
        return 1 if (cols, rows) == (1, 1) else cols * rows + 1

    def post_process_image_text_to_text(
        self, generated_outputs, skip_special_tokens: bool = True, clean_up_tokenization_spaces: bool = False, **kwargs
    ) -> list[str] | str:
        """Decode generated ids (generation itself stops at `<|im_end|>`, the generation config's eos): one text per
        row, or one text for a single row of ids.

        The text is the exact one the ids stand for, without the release's decoding clean-up (`" ,"` -> `","`), as
        transformers' own multimodal processors decode here: `pipeline("image-text-to-text")` decodes the prompt and
        the whole sequence with this method and cuts the reply off where the prompt's text ends, which needs the
        prompt's text to be a prefix of the sequence's. The clean-up breaks that where a prompt (an assistant prefill)
        ends in a space and the reply starts with `,`, `.`, `'m`, `n't`...: `"I am "` then `","` decodes to
        `"I am,"`. `clean_up_tokenization_spaces=True` gives the release's clean-up (what `decode()` and the
        original `chat()` return). Other keyword arguments go to the tokenizer's `batch_decode`."""
        rows = generated_outputs.tolist() if hasattr(generated_outputs, "tolist") else list(generated_outputs)
        single = bool(rows) and not isinstance(rows[0], (list, tuple))
        rows = [rows] if single else rows
        decoder = None if clean_up_tokenization_spaces or kwargs else exact_decoder(self.tokenizer)
        if decoder is None:
            texts = self.tokenizer.batch_decode(
                rows,
                skip_special_tokens=skip_special_tokens,
                clean_up_tokenization_spaces=clean_up_tokenization_spaces,
                **kwargs,
            )
        else:
            texts = [
                decoder.decode(self.tokenizer.convert_ids_to_tokens(row, skip_special_tokens=skip_special_tokens))
                for row in rows
            ]
        return texts[0] if single else texts


def build_processor(tokenizer, config) -> HoVLEProcessor:
    """The processor a converted folder saves (`HoVLEProcessor.from_model_config`), with the chat template also set
    on the tokenizer: clients that read only the tokenizer (vLLM's chat endpoint, `tokenizer.apply_chat_template`)
    render the release's prompts too."""
    tokenizer.chat_template = CHAT_TEMPLATE
    return HoVLEProcessor.from_model_config(tokenizer, config)


__all__ = [
    "CHAT_TEMPLATE",
    "DEFAULT_SYSTEM_MESSAGE",
    "HoVLEProcessor",
    "add_missing_placeholders",
    "bos_already_in",
    "decode_reply",
    "build_processor",
    "open_image",
]
