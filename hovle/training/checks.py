"""What `hovle train` checks before it loads a model: the output folder and the data file.

Every refusal is a `TrainingInputError` (a `ValueError`) with a one-line message; `hovle train` prints it as
`error: ...` and exits with status 2, having written nothing.

* Output (`check_output`): never the model folder (nor a folder that contains it or lies inside it), nor one that
  holds the data file or the teacher, since the finished run replaces the output folder as a whole; a non-empty
  output only with `--overwrite`, and only when it is a folder this package wrote (`output_folder`'s
  `check_replaceable_output`, checked again before the swap); not a file or a symbolic link; somewhere writable.
* Data (`check_data`): a JSON-lines file with at least one sample, read the way `JsonLinesDataset` reads it (UTF-8,
  one JSON object per line, blank lines skipped, image paths relative to the data file). Every line must hold what
  its stage needs; messages name the file and line (`train.jsonl:7: ...`):
  - stages 2 and 3: `"messages"`, a non-empty list of `{"role", "content"}` with roles `user`, `assistant` or
    `system`, content a string or a list of `{"type": "text", "text": ...}` / `{"type": "image"}` items, at least one
    assistant message (the replies are what is supervised), and as many `<image>` placeholders as `"images"` (an
    image item in a message's content is a placeholder; with no placeholder at all, the images are put in front of
    the text, as the processor does); every image file present;
  - stage 1: `"image"` (a path) or `"text_ids"` (a non-empty list of token ids), one of the two per line.
  Every image is opened and decoded as the processor opens it (a text file named `.jpg` is named by its line).
* Length (`check_lengths`, once the processor is loaded, before training): no sample longer than `--max-length`
  tokens (default: the model's context), counted as the processor tokenizes it, image tokens included.
* Free space: the output's file system holds the trained weights, before training starts and again before they
  are written (`hovle.conversion.output_folder.check_free_space`, the rule convert and export use too).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..conversion.output_folder import check_output_folder, overlap
from ..conversion.to_transformers import is_converted_folder
from ..errors import HoVLEUserError
from ..processing_hovle import IMAGE_CONTEXT, IMAGE_END, IMAGE_PLACEHOLDER, IMAGE_START, count_placeholders, open_image

ROLES = ("user", "assistant", "system")
IMAGE_ITEM_TYPES = ("image", "image_url")


class TrainingInputError(HoVLEUserError):
    """A `hovle train` argument or data line that cannot be used, said in one line."""


# -- output folder ---------------------------------------------------------------------------------------------------
def check_output(
    output: str | os.PathLike,
    model: str | os.PathLike,
    data: str | os.PathLike | None = None,
    teacher: str | os.PathLike | None = None,
    overwrite: bool = False,
) -> None:
    """Refuse an output folder that training must not write (module docstring); writes nothing."""
    output = Path(output)
    target = output.resolve()
    for label, source in (("the model folder", model), ("the teacher folder", teacher)):
        if source is None or not Path(source).exists():  # a Hub id: nothing local to protect
            continue
        relation = overlap(target, Path(source).resolve())
        if relation is not None:
            raise TrainingInputError(
                f"--output {output} {relation} {label} {source}: the trained model would replace its files; "
                "choose an output folder outside it"
            )
    if data is not None and Path(data).exists() and overlap(target, Path(data).resolve()) == "contains":
        raise TrainingInputError(
            f"--output {output} contains the data file {data}, which the trained model would replace; "
            "choose another output folder"
        )
    check_output_folder(
        output,
        overwrite,
        is_converted_folder,
        label=f"--output {output}",
        not_empty_hint=": pass --overwrite to replace its contents when training finishes, or choose another folder",
        error=TrainingInputError,
    )


# -- data file -------------------------------------------------------------------------------------------------------
def json_lines(path: str | os.PathLike) -> Iterator[tuple[int, Any]]:
    """(line number, parsed JSON) for every non-blank line of a JSON-lines file; lines end at `\\n` only (a JSON
    string may hold U+2028 and other characters that `str.splitlines` would break at)."""
    path = Path(path)
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                text = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as error:
                raise TrainingInputError(
                    f"{path}:{number}: not UTF-8 text ({error.reason} at byte {error.start})"
                ) from None
            if not text.strip():
                continue
            try:
                yield number, json.loads(text)
            except json.JSONDecodeError as error:
                raise TrainingInputError(
                    f"{path}:{number}: not valid JSON: {error.msg} (column {error.colno})"
                ) from None


def resolve_image(data_file: Path, name: str) -> Path:
    """An image path as `JsonLinesDataset` resolves it: relative to the data file's folder."""
    return Path(name) if Path(name).is_absolute() else data_file.parent / name


def _check_image(where: str, data_file: Path, name: Any, field: str) -> None:
    if not isinstance(name, str) or not name:
        raise TrainingInputError(f"{where}: {field} must be an image file path, got {json.dumps(name)}")
    resolved = resolve_image(data_file, name)
    if not resolved.is_file():
        raise TrainingInputError(f"{where}: image {name} not found ({resolved}; paths are relative to the data file)")
    try:
        # Opened and decoded as the processor will (its `open_image`): a bad file fails here, not hours into training.
        open_image(resolved)
    except ValueError as error:
        raise TrainingInputError(f"{where}: {error}") from None


def _message_texts(where: str, index: int, message: Any) -> tuple[list[str], int]:
    """(texts, image items) of one chat message, after checking its shape."""
    if not isinstance(message, dict) or "role" not in message or "content" not in message:
        raise TrainingInputError(f'{where}: message {index} must be an object with "role" and "content"')
    role = message["role"]
    if role not in ROLES:
        raise TrainingInputError(
            f'{where}: message {index} has role {json.dumps(role)}; use "user", "assistant" or "system"'
        )
    content = message["content"]
    if isinstance(content, str):
        return [content], 0
    shape = f'{where}: message {index} content must be a string or a list of {{"type": "text", "text": ...}} and '
    shape += '{"type": "image"} items'
    if not isinstance(content, list):
        raise TrainingInputError(shape)
    texts, images = [], 0
    for item in content:
        if not isinstance(item, dict) or item.get("type") not in ("text", *IMAGE_ITEM_TYPES):
            raise TrainingInputError(shape)
        if item["type"] == "text":
            if not isinstance(item.get("text"), str):
                raise TrainingInputError(shape)
            texts.append(item["text"])
        else:
            images += 1
    return texts, images


def _check_chat(where: str, data_file: Path, row: dict) -> None:
    messages = row.get("messages")
    if not isinstance(messages, list) or not messages:
        hint = " (this looks like stage-1 data: use --stage 1)" if "image" in row or "text_ids" in row else ""
        raise TrainingInputError(
            f'{where}: stages 2 and 3 need "messages", a non-empty list of {{"role", "content"}} messages{hint}'
        )
    for index, message in enumerate(messages):
        texts, _ = _message_texts(where, index, message)
        for text in texts:
            for token in (IMAGE_CONTEXT, IMAGE_START, IMAGE_END):
                if token in text:
                    raise TrainingInputError(
                        f"{where}: message {index} contains {token}, which only the processor writes for an image; "
                        f"put {IMAGE_PLACEHOLDER} (or an image item) where an image goes"
                    )
    if not any(message["role"] == "assistant" for message in messages):
        raise TrainingInputError(
            f'{where}: no "assistant" message, so nothing would be supervised (training learns the assistant replies)'
        )
    placeholders = count_placeholders(messages)  # as the processor's template writes them
    images = row.get("images")
    images = [] if images is None else images
    if not isinstance(images, list):
        raise TrainingInputError(f'{where}: "images" must be a list of image file paths')
    for name in images:
        _check_image(where, data_file, name, '"images" entry')
    if placeholders and placeholders != len(images):
        raise TrainingInputError(
            f'{where}: {placeholders} image placeholder(s) in the messages but {len(images)} image(s) in "images"'
        )


def _check_unpaired(where: str, data_file: Path, row: dict) -> None:
    if ("image" in row) == ("text_ids" in row):
        both = "image" in row
        hint = " (this looks like chat data: use --stage 2 or 3)" if "messages" in row else ""
        raise TrainingInputError(
            f'{where}: stage 1 needs {"either" if both else "an"} "image" (a path) or "text_ids" (a list of token ids)'
            f"{', not both' if both else ''}{hint}"
        )
    if "image" in row:
        _check_image(where, data_file, row["image"], '"image"')
        return
    ids = row["text_ids"]
    if (
        not isinstance(ids, list)
        or not ids
        or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids)
    ):
        raise TrainingInputError(f'{where}: "text_ids" must be a non-empty list of token ids (whole numbers >= 0)')


def check_data(path: str | os.PathLike, stage: int) -> dict[str, int]:
    """Check every line of a `hovle train` data file for `stage` (module docstring); returns `samples` (the count)
    and `max_text_id` (the largest stage-1 token id, -1 without text lines)."""
    path = Path(path)
    if not path.exists():
        raise TrainingInputError(f"--data {path}: no such file")
    if not path.is_file():
        raise TrainingInputError(f"--data {path} is not a file (a JSON-lines file is expected)")
    samples, max_text_id = 0, -1
    for number, row in json_lines(path):
        where = f"{path}:{number}"
        if not isinstance(row, dict):
            raise TrainingInputError(f"{where}: expected a JSON object, got {type(row).__name__}")
        if stage == 1:
            _check_unpaired(where, path, row)
            max_text_id = max([max_text_id, *row.get("text_ids", [])])
        else:
            _check_chat(where, path, row)
        samples += 1
    if not samples:
        raise TrainingInputError(f"--data {path} holds no samples (one JSON object per line is expected)")
    return {"samples": samples, "max_text_id": max_text_id}


def sample_length(processor, row: dict, data_file: Path, max_tiles: int | None) -> int:
    """Tokens of a checked stage-2/3 sample as the processor makes them (chat template, BOS, image tokens)."""
    images = [str(resolve_image(data_file, name)) for name in row.get("images") or []]
    # The collator's own encoding (typed `<image>` is the data format's placeholder), so the length is the trained one.
    encoded = processor.encode_chats_with_reply_mask([row["messages"]], [images], max_tiles, typed_placeholders=True)
    return encoded["input_ids"].shape[1]


def check_lengths(
    path: str | os.PathLike, stage: int, processor, max_length: int, max_tiles: int | None, flag: str
) -> None:
    """Refuse a sample of `path` (already through `check_data`) longer than `max_length` tokens, naming its line and
    length; `flag` names the setting in the message. A sample's exact length tiles its images, so that runs only
    when a bound (the text plus the most tiles every image could take) does not already fit."""
    path = Path(path)
    tiles = (max_tiles or processor.image_processor.max_patches) + 1  # the thumbnail comes on top of the tiles
    per_image = len(processor.image_block_ids(tiles))
    for number, row in json_lines(path):
        if stage == 1:
            length = len(row.get("text_ids") or [])  # an image line's length is fixed by the tiling
        else:
            text = processor.apply_chat_template(row["messages"], tokenize=False)
            bound = len(processor.tokenize_prompts([text])["input_ids"][0]) + len(row.get("images") or []) * per_image
            length = bound if bound <= max_length else sample_length(processor, row, path, max_tiles)
        if length > max_length:
            raise TrainingInputError(
                f"{path}:{number}: the sample is {length} tokens long, more than {flag} {max_length}; shorten or "
                "split it, or raise the limit"
            )
