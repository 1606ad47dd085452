"""The synthetic visual question-answering task the embedded demo model (`hovle.embedded_release()`) is trained on,
as a seeded generator anyone can use to make held-out data, and its scorer.

The task, exactly:
* an RGB image of any size from 32 to 1024 px per side, any aspect ratio up to 4:1;
* a plain background whose channels are each in [190, 255];
* one filled shape (circle, square or triangle) of one colour: each channel within 40 of the colour's centre
  (`COLORS`), its size (the diameter, the side, the triangle's base and height) 30-80 % of the image's shorter side,
  fully inside the image;
* questions (`QUESTIONS`) and answers: shape -> `circle` | `square` | `triangle`; color -> `red` | `green` | `blue` |
  `yellow`; describe -> e.g. `a red circle`. The reply is the answer alone (then `<|im_end|>`).

Nothing here imports torch: generating data and scoring replies need only PIL and the standard library.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle")
COLORS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 70, 220), "yellow": (230, 200, 30)}
QUESTIONS = {
    "shape": "What shape is in the image?",
    "color": "What color is the shape?",
    "describe": "Describe the image.",
}
MIN_SIDE, MAX_SIDE, MAX_ASPECT = 32, 1024, 4.0
BACKGROUND_RANGE = (190, 255)
COLOR_SPREAD = 40
SIZE_RANGE = (0.3, 0.8)


@dataclass(frozen=True)
class ShapeSample:
    """One generated image and what it shows."""

    image: Image.Image
    shape: str
    color: str

    def answer(self, kind: str) -> str:
        """The expected reply to `QUESTIONS[kind]`."""
        if kind == "shape":
            return self.shape
        if kind == "color":
            return self.color
        if kind == "describe":
            return f"a {self.color} {self.shape}"
        raise ValueError(f"Unknown question kind {kind!r}; choose one of {list(QUESTIONS)}")


def image_size(rng: random.Random) -> tuple[int, int]:
    """(width, height): the aspect ratio log-uniform in [1, 4] (either orientation), the shorter side log-uniform over
    what keeps the longer one within 1024 px, so that every tile count from one tile to the most is reached."""
    ratio = math.exp(rng.uniform(0.0, math.log(MAX_ASPECT)))
    short = round(math.exp(rng.uniform(math.log(MIN_SIDE), math.log(MAX_SIDE / ratio))))
    long = min(MAX_SIDE, max(short, round(short * ratio)))
    return (long, short) if rng.random() < 0.5 else (short, long)


def _jitter(rng: random.Random, centre: tuple[int, int, int]) -> tuple[int, ...]:
    return tuple(min(255, max(0, value + rng.randint(-COLOR_SPREAD, COLOR_SPREAD))) for value in centre)


def draw_sample(rng: random.Random, shape: str | None = None, color: str | None = None) -> ShapeSample:
    """One image of the task from `rng` (the shape and colour drawn from it unless given)."""
    shape = shape or rng.choice(SHAPES)
    color = color or rng.choice(list(COLORS))
    width, height = image_size(rng)
    background = tuple(rng.randint(*BACKGROUND_RANGE) for _ in range(3))
    image = Image.new("RGB", (width, height), background)
    size = max(2, round(rng.uniform(*SIZE_RANGE) * min(width, height)))
    left, top = rng.randint(0, width - size), rng.randint(0, height - size)
    box = (left, top, left + size - 1, top + size - 1)
    fill = _jitter(rng, COLORS[color])
    draw = ImageDraw.Draw(image)
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    else:  # upright isosceles: base and height `size`
        draw.polygon([(left, box[3]), (box[2], box[3]), ((left + box[2]) / 2, top)], fill=fill)
    return ShapeSample(image, shape, color)


def generate(count: int, seed: int) -> Iterator[ShapeSample]:
    """`count` samples, the same for the same seed (shapes and colours balanced: they cycle, sizes are random)."""
    rng = random.Random(seed)
    for index in range(count):
        yield draw_sample(rng, SHAPES[index % len(SHAPES)], list(COLORS)[(index // len(SHAPES)) % len(COLORS)])


def chat(question: str, answer: str | None = None) -> list[dict]:
    """The chat-template messages of one question about one image (and its reply, for training data)."""
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    if answer is not None:
        messages.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
    return messages


def training_chat(sample: ShapeSample, kinds: list[str]) -> list[dict]:
    """One chat about `sample`'s image asking `kinds` in turn, each with its answer (the image in the first turn)."""
    messages = chat(QUESTIONS[kinds[0]], sample.answer(kinds[0]))
    for kind in kinds[1:]:
        messages.append({"role": "user", "content": [{"type": "text", "text": QUESTIONS[kind]}]})
        messages.append({"role": "assistant", "content": [{"type": "text", "text": sample.answer(kind)}]})
    return messages


def write_chat_data(folder: str | Path, count: int, seed: int, name: str = "train.jsonl") -> Path:
    """`count` images as PNG files in `folder/images/` and one `hovle train` chat line per image in `folder/name`: the
    three questions in turn, in an order drawn with `seed` (so that each comes first, as at inference, a third of
    the time); returns the data file."""
    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    lines = []
    for index, sample in enumerate(generate(count, seed)):
        relative = f"images/{index:06d}.png"
        sample.image.save(folder / relative)
        kinds = rng.sample(list(QUESTIONS), len(QUESTIONS))
        lines.append({"messages": training_chat(sample, kinds), "images": [relative]})
    path = folder / name
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def normalize_reply(reply: str) -> str:
    """A reply as it is compared with the answer: lower case, surrounding spaces and final punctuation removed."""
    return reply.strip().lower().rstrip(".!").strip()


def is_correct(reply: str, answer: str) -> bool:
    """Whether `reply` is `answer` (after `normalize_reply`): the answer alone, nothing else."""
    return normalize_reply(reply) == answer


def accuracy(samples: list[ShapeSample], replies: Mapping[str, list[str]]) -> dict[str, float]:
    """Per question kind, the share of `replies[kind]` (one per sample, in order) that are correct."""
    scores = {}
    for kind, answers in replies.items():
        if len(answers) != len(samples):
            raise ValueError(f"{len(answers)} {kind} replies for {len(samples)} samples")
        scores[kind] = sum(is_correct(r, s.answer(kind)) for r, s in zip(answers, samples, strict=True)) / len(samples)
    return scores
