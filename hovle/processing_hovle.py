"""HoVLE processor: InternVL dynamic tiling, `<image>` placeholder expansion and the `internlm2-chat` template.

* Tiling reuses transformers' `GotOcr2ImageProcessorPil` (`crop_to_patches`), which implements InternVL's dynamic
  tiling exactly (grid choice with its tie rule, bicubic resize, row-major tiles, thumbnail when more than one
  tile); the test suite proves it against an independent PIL + numpy implementation.
* Each `<image>` in the text becomes `<img>` + `<IMG_CONTEXT>` x (tokens per tile x tiles) + `</img>`; text with
  images but no `<image>` gets them prepended the way the original `chat()` did (`<image>\\n`, or
  `Image-1: <image>\\nImage-2: <image>\\n...`).
* Images are opened defensively: EXIF orientation applied, every mode converted to RGB, and unreadable files
  (truncated, empty, not an image, over PIL's decompression-bomb limit) raise a `ValueError` naming the file.
"""

from __future__ import annotations

import os
import re
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from transformers import BatchFeature
from transformers.processing_utils import ProcessorMixin

IMAGE_PLACEHOLDER = "<image>"
IMAGE_START, IMAGE_END, IMAGE_CONTEXT = "<img>", "</img>", "<IMG_CONTEXT>"
END_OF_TURN = "<|im_end|>"
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
# processor then adds no second one (`bos_already_in`).
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


def image_token_block(num_tiles: int, tokens_per_tile: int) -> str:
    return IMAGE_START + IMAGE_CONTEXT * (tokens_per_tile * num_tiles) + IMAGE_END


def expand_image_placeholders(text: str, num_tiles: list[int], tokens_per_tile: int) -> str:
    """Replace the `<image>` placeholders of `text`, in order, by each image's token block."""
    found = text.count(IMAGE_PLACEHOLDER)
    if found != len(num_tiles):
        raise ValueError(
            f"The text has {found} {IMAGE_PLACEHOLDER} placeholders but {len(num_tiles)} images were given"
        )
    tiles = iter(num_tiles)
    return re.sub(re.escape(IMAGE_PLACEHOLDER), lambda _: image_token_block(next(tiles), tokens_per_tile), text)


def check_max_tiles(max_tiles) -> None:
    if isinstance(max_tiles, bool) or not isinstance(max_tiles, int) or max_tiles < 1:
        raise ValueError(f"max_tiles (max_patches) must be a whole number of at least 1, got {max_tiles!r}")


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


def refuse_typed_image_tokens(text: str) -> None:
    """Image tokens come only from images: a `<IMG_CONTEXT>`, `<img>` or `</img>` typed in the text would be read as
    an image slot (and break the count of image features), so it is refused; write `<image>` where an image goes."""
    for token in (IMAGE_CONTEXT, IMAGE_START, IMAGE_END):
        if token in text:
            raise ValueError(
                f"The text contains {token!r}, which only the processor writes (for each image); put {IMAGE_PLACEHOLDER} "
                "where an image goes"
            )


def add_missing_placeholders(text: str, num_images: int) -> str:
    """The original chat() convention for a question with images but no `<image>`."""
    if num_images == 0 or IMAGE_PLACEHOLDER in text:
        return text
    if num_images == 1:
        return f"{IMAGE_PLACEHOLDER}\n{text}"
    return "".join(f"Image-{i + 1}: {IMAGE_PLACEHOLDER}\n" for i in range(num_images)) + text


def image_from_array(array: np.ndarray) -> Image.Image:
    """A PIL image from an (H, W), (H, W, C) or (C, H, W) array with 1, 3 or 4 channels: uint8 as is, floats in
    [0, 1] scaled to 0..255 (other floats clipped to 0..255), booleans as black and white."""
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
        array = np.clip(array, 0, 255).astype(np.uint8)
    return Image.fromarray(array)


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
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # 16/32-bit grey: scale to 8 bits, as PIL's convert("RGB") would clip them to white.
        array = np.asarray(image, dtype=np.float64)
        peak = array.max() if array.size and array.max() > 0 else 1.0
        image = Image.fromarray(np.clip(array / peak * 255.0, 0, 255).round().astype(np.uint8))
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    return image.convert("RGB")


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

    image_token = IMAGE_PLACEHOLDER

    def __init__(self, image_processor=None, tokenizer=None, tokens_per_tile: int = 256, chat_template=None, **kwargs):
        super().__init__(image_processor, tokenizer, chat_template=chat_template or CHAT_TEMPLATE, **kwargs)
        self.tokens_per_tile = tokens_per_tile
        self.image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_CONTEXT)

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
        counts = [t.count(IMAGE_PLACEHOLDER) for t in texts]
        if sum(counts) != len(images):
            raise ValueError(
                f"The texts have {sum(counts)} {IMAGE_PLACEHOLDER} placeholders but {len(images)} images were given"
            )
        grouped, start = [], 0
        for count in counts:
            grouped.append(list(images[start : start + count]))
            start += count
        return grouped

    def __call__(self, images=None, text=None, max_tiles: int | None = None, **kwargs) -> BatchFeature:
        r"""
        images: one image, a list (matched to the `<image>` placeholders in order) or one list per text.
        text: a string or a list of strings (chat-template output or raw text).
        max_tiles: the most tiles per image (6 by default; the thumbnail comes on top). `max_patches`, the name
            transformers' image processor gives it, is accepted too.
        Other keyword arguments go to the tokenizer (`padding`, `return_tensors`, ...).
        """
        if text is None:
            raise ValueError("HoVLEProcessor needs text (use apply_chat_template for chat messages)")
        if not isinstance(text, str) and len(text) == 0:
            raise ValueError("HoVLEProcessor got an empty batch: pass at least one text")
        return_tensors = kwargs.pop("return_tensors", None)
        for key in ("images_kwargs", "text_kwargs", "processor_kwargs"):
            kwargs.update(kwargs.pop(key, None) or {})
        max_tiles = kwargs.pop("max_patches", max_tiles)
        image_kwargs = {key: kwargs.pop(key) for key in ("min_patches", "crop_to_patches") if key in kwargs}
        expanded, pixel_values = self.expand_texts(text, images, max_tiles=max_tiles, **image_kwargs)

        if bos_already_in(self.tokenizer, expanded):
            kwargs.setdefault("add_special_tokens", False)
        kwargs.setdefault("padding", len(expanded) > 1)
        kwargs.setdefault("padding_side", "left")
        kwargs.setdefault("return_attention_mask", True)
        data = dict(self.tokenizer(expanded, **kwargs))
        if pixel_values is not None:
            data["pixel_values"] = pixel_values
        return BatchFeature(data=data, tensor_type=return_tensors)

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
            expanded.append(expand_image_placeholders(sample_text, [len(t) for t in tiles], self.tokens_per_tile))
        return expanded, (np.concatenate(pixel_values) if pixel_values else None)

    def tile_image(self, image, max_tiles: int | None = None, **image_kwargs) -> np.ndarray:
        """One image (anything `open_image` takes) -> its normalised tiles, (tiles, 3, H, W) float32, the thumbnail
        last; each tile becomes `tokens_per_tile` image tokens."""
        if max_tiles is not None:
            check_max_tiles(max_tiles)
            image_kwargs["max_patches"] = max_tiles  # the image processor's name for it
        processed = self.image_processor(images=open_image(image), return_tensors="np", **image_kwargs)
        return processed["pixel_values"].astype(np.float32)

    def post_process_image_text_to_text(
        self, generated_outputs, skip_special_tokens: bool = True, **kwargs
    ) -> list[str]:
        """Decode generated ids (generation itself stops at `<|im_end|>`, the generation config's eos)."""
        return self.tokenizer.batch_decode(generated_outputs, skip_special_tokens=skip_special_tokens, **kwargs)


__all__ = [
    "CHAT_TEMPLATE",
    "DEFAULT_SYSTEM_MESSAGE",
    "HoVLEProcessor",
    "add_missing_placeholders",
    "bos_already_in",
    "decode_reply",
    "expand_image_placeholders",
    "open_image",
]
