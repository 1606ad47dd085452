"""Run the commands of README.md and docs/*.md (`make docs-check`), so that the documentation cannot drift from the
code.

Every fenced code block of a page is one of:

* ```bash (or sh, shell): run by `bash -e -o pipefail` in the page's folder;
* ```python: run in one Python namespace per page, in this process (a later block uses the names an earlier one
  defined, as a reader running the page would);
* marked by the line right before its fence, `<!-- docs-check: skip (the reason) -->`: not run, the reason said.

Any other fence (no language, ```text, ...) must be marked skip too, so that not running a block is always a visible
decision. A page's blocks run in document order in a fresh folder that holds what the pages assume a reader has,
built offline from `hovle.testing` (tiny, random, untrained weights):

* the Hub ids `OpenGVLab/HoVLE` and `OpenGVLab/HoVLE-HD` written in a block stand for tiny checkpoints in the
  original release layout, with a tokenizer (`pre` and `post` pixel shuffle), in this folder: a block's text has
  them replaced by those folders' paths before it runs;
* `./HoVLE-hf`: the first of them converted (bfloat16), unless a block of the page converts to `./HoVLE-hf` itself;
* `photo.jpg`, `a.jpg`, `b.jpg`: images; `chat.jsonl`: chats for training stages 2 and 3, `unpaired.jsonl`: stage-1
  lines, both with images beside them; `./InternVL-hf`: a tiny InternVL teacher for stage 1.

`python` and `hovle` in a shell block are this interpreter's environment's; the Hub is offline (HF_HUB_OFFLINE=1).
A failing block is reported as `FAILED file:line` with its output, the page's later blocks are not run, the other
pages are, and the exit status is 1.

    python scripts/docs_check.py [PAGE.md ...] [--verbose] [--keep] [--no-fixtures]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LANGUAGES = {"python": "python", "bash": "bash", "sh": "bash", "shell": "bash"}
MARKER = re.compile(r"<!--\s*docs-check:\s*skip\s*\((?P<reason>[^)]*\S[^)]*)\)\s*-->")
FENCE = re.compile(r"^ {0,3}(?P<fence>`{3,}|~{3,})(?P<info>.*)$")
HUB_IDS = {"OpenGVLab/HoVLE-HD": "hub/HoVLE-HD", "OpenGVLab/HoVLE": "hub/HoVLE"}  # longest first
CONVERTED = "HoVLE-hf"
BLOCK_TIMEOUT_S = 600


@dataclass
class Block:
    page: str  # the page's name as reported, e.g. "docs/training.md"
    line: int  # the opening fence's line, 1-based
    info: str  # the fence's language
    code: str
    skip: str | None  # the marker's reason; None: the block runs

    @property
    def language(self) -> str | None:
        """ "python" or "bash" for a block that runs as written, None for any other fence."""
        return LANGUAGES.get(self.info)

    @property
    def where(self) -> str:
        return f"{self.page}:{self.line}"


def parse(text: str, page: str) -> tuple[list[Block], list[str]]:
    """The fenced blocks of a Markdown page, and the problems that make it unfit to check (each `page:line: ...`):
    an unclosed fence, a marker that is not right before a fence, a `docs-check` comment that is not a skip marker
    with a reason, a fence that is neither runnable nor marked."""
    lines = text.splitlines()
    blocks, problems = [], []
    index = 0
    while index < len(lines):
        line = lines[index]
        if line.strip().startswith("<!--") and "docs-check" in line and not MARKER.fullmatch(line.strip()):
            problems.append(f"{page}:{index + 1}: not a marker; write <!-- docs-check: skip (the reason) -->")
        elif MARKER.fullmatch(line.strip()) and (index + 1 == len(lines) or not FENCE.match(lines[index + 1])):
            problems.append(f"{page}:{index + 1}: a skip marker must be the line right before a code fence")
        opening = FENCE.match(line)
        if not opening:
            index += 1
            continue
        fence = opening["fence"]
        closing = next(
            (
                end
                for end in range(index + 1, len(lines))
                if lines[end].strip().startswith(fence[0] * len(fence)) and not lines[end].strip().strip(fence[0])
            ),
            None,
        )
        if closing is None:
            problems.append(f"{page}:{index + 1}: the code fence is never closed")
            break
        marker = MARKER.fullmatch(lines[index - 1].strip()) if index else None
        info = opening["info"].strip().split(" ")[0].lower()
        code = "\n".join(lines[index + 1 : closing]) + "\n"
        block = Block(page, index + 1, info, code, marker["reason"].strip() if marker else None)
        if block.skip is None and block.language is None:
            problems.append(
                f"{block.where}: a ```{info} block does not run here: mark it <!-- docs-check: skip (the reason) -->"
            )
        blocks.append(block)
        index = closing + 1
    return blocks, problems


# -- the folder a page runs in ---------------------------------------------------------------------------------------
def build_fixtures(root: Path) -> Path:
    """What every page's folder starts from (see the module docstring), built once under `root`."""
    from PIL import Image

    from hovle.conversion.to_transformers import convert
    from hovle.testing import tiny_config, tiny_internvl_teacher, write_original_checkpoint, write_tiny_tokenizer

    base = root / "base"
    for hub_id, layout in (("OpenGVLab/HoVLE", "pre"), ("OpenGVLab/HoVLE-HD", "post")):
        source = write_original_checkpoint(base / HUB_IDS[hub_id], tiny_config(layout), seed=0)
        write_tiny_tokenizer(source)
    convert(base / HUB_IDS["OpenGVLab/HoVLE"], root / CONVERTED, dtype="bfloat16", progress=False)
    tiny_internvl_teacher().save_pretrained(base / "InternVL-hf")
    # A reader's photo, any picture: the pages' Hub-id models are random, so what they reply to it is noise either way
    # (the blocks that run the embedded demo model ask about images of its own task).
    Image.radial_gradient("L").convert("RGB").resize((128, 96)).save(base / "photo.jpg")
    for seed, name in enumerate(("a.jpg", "b.jpg")):
        Image.effect_noise((96 + 64 * seed, 72), 40 + seed).convert("RGB").save(base / name)
    question = [{"type": "image"}, {"type": "text", "text": "What is in this picture?"}]
    chats = [
        {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": "Noise."}]},
        {"messages": [{"role": "user", "content": "Hello?"}, {"role": "assistant", "content": "Hello."}]},
    ]
    chats[0]["images"] = ["a.jpg"]
    (base / "chat.jsonl").write_text("".join(json.dumps(chat) + "\n" for chat in chats))
    unpaired = [{"image": "a.jpg"}, {"image": "b.jpg"}, {"text_ids": list(range(5, 17))}]
    (base / "unpaired.jsonl").write_text("".join(json.dumps(line) + "\n" for line in unpaired))
    return base


def page_folder(fixtures: Path | None, folder: Path, blocks: list[Block]) -> Path:
    """A fresh copy of the fixtures for one page; `./HoVLE-hf` only if no block of the page converts to it."""
    if fixtures is None:
        folder.mkdir(parents=True)
        return folder
    shutil.copytree(fixtures, folder)
    converts_itself = any(
        block.skip is None and re.search(rf"--output\s+(\./)?{CONVERTED}\b", block.code) for block in blocks
    )
    if not converts_itself:
        shutil.copytree(fixtures.parent / CONVERTED, folder / CONVERTED)
    return folder


def substituted(code: str, folder: Path, fixtures: Path | None) -> str:
    if fixtures is None:
        return code
    for hub_id, local in HUB_IDS.items():
        code = re.sub(rf"{re.escape(hub_id)}(?![\w-])", str(folder / local), code)
    return code


# -- running ---------------------------------------------------------------------------------------------------------
def run_bash(code: str, folder: Path) -> tuple[bool, str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    try:
        result = subprocess.run(
            ["bash", "-e", "-o", "pipefail", "-c", code],
            cwd=folder,
            env=env,
            capture_output=True,
            text=True,
            timeout=BLOCK_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired as error:
        return False, f"timed out after {BLOCK_TIMEOUT_S} s\n{error.stdout or ''}{error.stderr or ''}"
    return result.returncode == 0, result.stdout + result.stderr + f"(exit status {result.returncode})\n"


def run_python(block: Block, code: str, folder: Path, namespace: dict) -> tuple[bool, str]:
    """`code` in `namespace`, in `folder`; line numbers in a traceback are the page's own."""
    output = io.StringIO()
    previous = Path.cwd()
    os.chdir(folder)
    try:
        with contextlib.redirect_stdout(output), contextlib.redirect_stderr(output):
            exec(compile("\n" * block.line + code, block.page, "exec"), namespace)
        return True, output.getvalue()
    except BaseException:  # a block's SystemExit or KeyboardInterrupt is its failure too, reported like any other
        if sys.exc_info()[0] is KeyboardInterrupt:
            raise
        return False, output.getvalue() + traceback.format_exc()
    finally:
        os.chdir(previous)


def run_page(blocks: list[Block], folder: Path, fixtures: Path | None, verbose: bool) -> tuple[int, list[str]]:
    """Run a page's blocks in order: how many ran, and the `FAILED page:line` report (at most one: the page stops
    there)."""
    namespace: dict = {"__name__": "__main__"}
    ran = 0
    for block in blocks:
        if block.skip is not None:
            print(f"  {block.where}: skipped ({block.skip})", flush=True)
            continue
        started, ran = time.perf_counter(), ran + 1
        code = substituted(block.code, folder, fixtures)
        if block.language == "python":
            ok, output = run_python(block, code, folder, namespace)
        else:
            ok, output = run_bash(code, folder)
        print(f"  {block.where}: {block.language} {'ok' if ok else 'FAILED'} ({time.perf_counter() - started:.1f} s)")
        if verbose or not ok:
            print("    " + output[-6000:].replace("\n", "\n    ").rstrip(), flush=True)
        if not ok:
            later = sum(1 for other in blocks if other.skip is None and other.line > block.line)
            return ran, [f"FAILED {block.where} ({block.language} block; {later} later block(s) of the page not run)"]
    return ran, []


def default_pages() -> list[Path]:
    return [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def display_name(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pages", nargs="*", type=Path, help="Markdown pages (default: README.md and docs/*.md)")
    parser.add_argument("--verbose", action="store_true", help="print every block's output, not only a failure's")
    parser.add_argument("--keep", action="store_true", help="keep the pages' folders (their path is printed)")
    parser.add_argument("--no-fixtures", action="store_true", help="run in empty folders (pages that need none)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    pages = {display_name(path): path.read_text(encoding="utf-8") for path in (args.pages or default_pages())}
    parsed = {name: parse(text, name) for name, text in pages.items()}
    problems = [problem for _, page_problems in parsed.values() for problem in page_problems]
    if problems:
        print("docs-check: the pages cannot be checked as they are:\n" + "\n".join(problems))
        return 1
    os.environ["HF_HUB_OFFLINE"] = "1"  # the python blocks run in this process
    root = Path(tempfile.mkdtemp(prefix="hovle-docs-check-"))
    try:
        fixtures = None
        if not args.no_fixtures:
            with contextlib.redirect_stderr(io.StringIO()):  # conversion's progress bars
                fixtures = build_fixtures(root / "fixtures")
        failures, ran, skipped = [], 0, 0
        for index, (name, (blocks, _)) in enumerate(parsed.items()):
            print(f"{name}: {len(blocks)} block(s)", flush=True)
            folder = page_folder(fixtures, root / f"page{index}", blocks)
            page_ran, page_failures = run_page(blocks, folder, fixtures, args.verbose)
            ran, failures = ran + page_ran, failures + page_failures
            skipped += sum(1 for block in blocks if block.skip is not None)
    finally:
        if args.keep:
            print(f"docs-check: the pages' folders are kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    print("\n".join(failures))
    print(
        f"docs-check: {len(parsed)} pages, {ran} blocks run, {skipped} skipped (marked), {len(failures)} failed, "
        f"in {time.perf_counter() - started:.0f} s"
    )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
