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

`scripts/sample.png`, the image `make demo` and the demo's tests ask about, is `sample_image()` saved as PNG;
`SAMPLE_QUESTION` is the one question they ask about it (its kind: `SAMPLE_KIND`). Regenerate the image with

    python -m hovle.shapes_task --write-sample scripts/sample.png

Nothing here imports torch: generating data and scoring replies need only PIL and the standard library.
"""

from __future__ import annotations

import json
import math
import random
import sys
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
# The sample (`scripts/sample.png`): seed 1 draws a 214x150 red circle, a size a page shows whole. The question that
# `make demo`, `scripts/quickstart.py` and the tests of `hovle chat`, of the demo page and of lmms-eval ask is
# `QUESTIONS[SAMPLE_KIND]`: its kind is chosen here and nowhere else, and each expected answer is
# `ShapeSample.answer(SAMPLE_KIND)`.
SAMPLE_SEED = 1
SAMPLE_KIND = "describe"
SAMPLE_QUESTION = QUESTIONS[SAMPLE_KIND]


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


def sample_image(seed: int = SAMPLE_SEED) -> ShapeSample:
    """The sample image (`scripts/sample.png` is this, saved as PNG) and what it shows: one task image drawn from
    `seed`."""
    return draw_sample(random.Random(seed))


def write_sample(path: str | Path, seed: int = SAMPLE_SEED) -> ShapeSample:
    """Save `sample_image(seed)` at `path` (PNG, lossless, so the file is the generated image pixel for pixel)."""
    sample = sample_image(seed)
    sample.image.save(path, format="PNG")
    return sample


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


# The training data's two files (`write_chat_data`): the shape question alone, and all three questions in turn.
SHAPE_DATA, CHAT_DATA = "shape.jsonl", "chat.jsonl"


def write_chat_data(folder: str | Path, count: int, seed: int) -> Path:
    """`count` images as PNG files in `folder/images/` and two `hovle train` chat files over them: `SHAPE_DATA`, one
    line per image asking its shape alone, and `CHAT_DATA`, one line per image asking the three questions in turn, in
    an order drawn with `seed` (so that each comes first, as at inference, a third of the time); returns `folder`.

    Two files because the recipe trains in that order: a model from scratch given the three questions at once learns
    the colour (one mean over the pixels) within a hundred steps and then stays at chance on the shape for thousands
    (measured at width 128), while the shape question alone is learned in a few hundred, and the colours after it."""
    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    shape_lines, chat_lines = [], []
    for index, sample in enumerate(generate(count, seed)):
        relative = f"images/{index:06d}.png"
        sample.image.save(folder / relative)
        shape_lines.append({"messages": chat(QUESTIONS["shape"], sample.shape), "images": [relative]})
        kinds = rng.sample(list(QUESTIONS), len(QUESTIONS))
        chat_lines.append({"messages": training_chat(sample, kinds), "images": [relative]})
    for name, lines in ((SHAPE_DATA, shape_lines), (CHAT_DATA, chat_lines)):
        (folder / name).write_text("".join(json.dumps(line) + "\n" for line in lines))
    return folder


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


def main(argv: list[str] | None = None) -> None:
    """`python -m hovle.shapes_task`: write the sample image, or print the question asked about it."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m hovle.shapes_task", description=main.__doc__)
    parser.add_argument("--write-sample", metavar="PATH", type=Path, help="write the sample image there (PNG)")
    parser.add_argument("--seed", type=int, default=SAMPLE_SEED, help=f"the sample's seed (default {SAMPLE_SEED})")
    parser.add_argument("--sample-question", action="store_true", help="print SAMPLE_QUESTION (what make demo asks)")
    args = parser.parse_args(argv)
    if not args.write_sample and not args.sample_question:
        parser.error("nothing to do: give --write-sample PATH and/or --sample-question")
    if args.write_sample:
        sample = write_sample(args.write_sample, args.seed)
        width, height = sample.image.size
        print(f"Wrote {args.write_sample}: {width}x{height}, a {sample.color} {sample.shape}", file=sys.stderr)
    if args.sample_question:
        print(SAMPLE_QUESTION)


if __name__ == "__main__":
    main()
