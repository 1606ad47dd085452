"""The documentation check (`scripts/docs_check.py`, `make docs-check`): every fenced block of README.md and docs/ is
run or visibly marked skip with a reason, a failing block is reported by its `file:line` with a non-zero exit, and the
README stays a first-hour page. Fast: no block of the real pages runs here (CI runs them with `make docs-check`)."""

import importlib.util
import re
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def load_docs_check():
    spec = importlib.util.spec_from_file_location("docs_check", REPO / "scripts" / "docs_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


docs_check = load_docs_check()

PAGE = """# A page

<!-- docs-check: skip (needs a GPU) -->
```bash
nvidia-smi
```

Text that mentions `make docs-check` and `<!-- docs-check: skip (x) -->` is prose.

```python
x = 1
```

~~~sh
echo ```
~~~
"""


def test_blocks_are_found_with_their_lines_languages_and_markers():
    blocks, problems = docs_check.parse(PAGE, "page.md")
    assert problems == []
    assert [(b.line, b.info, b.language, b.skip) for b in blocks] == [
        (4, "bash", "bash", "needs a GPU"),
        (10, "python", "python", None),
        (14, "sh", "bash", None),
    ]
    assert blocks[1].code == "x = 1\n" and blocks[2].code == "echo ```\n"


@pytest.mark.parametrize(
    "text, problem",
    [
        ("```text\noutput\n```\n", "page.md:1: a ```text block does not run here"),
        ("```\nplain\n```\n", "page.md:1: a ``` block does not run here"),
        ("<!-- docs-check: skip -->\n```bash\nls\n```\n", "page.md:1: not a marker"),
        ("<!-- docs-check: run -->\n```bash\nls\n```\n", "page.md:1: not a marker"),
        ("<!-- docs-check: skip (why) -->\n\n```bash\nls\n```\n", "page.md:1: a skip marker must be the line right"),
        ("```bash\nls\n", "page.md:1: the code fence is never closed"),
    ],
)
def test_unmarked_or_badly_marked_blocks_are_problems(text, problem):
    _, problems = docs_check.parse(text, "page.md")
    assert len(problems) == 1 and problems[0].startswith(problem), problems


def test_every_block_of_the_real_pages_runs_or_is_marked_skip():
    pages = docs_check.default_pages()
    assert REPO / "README.md" in pages and len(pages) >= 8, pages
    runnable = 0
    for path in pages:
        blocks, problems = docs_check.parse(path.read_text(encoding="utf-8"), path.name)
        assert problems == [], problems
        assert all(block.skip or block.language in ("python", "bash") for block in blocks)
        runnable += sum(block.skip is None for block in blocks)
    assert runnable >= 15  # the pages' commands are really run, not all skipped


def test_readme_is_a_first_hour_page_and_its_links_resolve():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 200
    assert "make test" in readme and "make demo" in readme  # .ci/run runs both as the README's commands
    for page in ("conversion", "inference", "training", "serving", "evaluation", "design", "guarantees"):
        assert f"(docs/{page}.md)" in readme
    for path in docs_check.default_pages():
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", path.read_text(encoding="utf-8")):
            assert (path.parent / target).exists(), f"{path.name}: link to {target}"
    assert "\ndocs-check:" in (REPO / "Makefile").read_text()  # CI (.ci/run) runs `make docs-check`


def test_a_failing_block_is_named_by_file_and_line_and_the_exit_status_is_1(tmp_path, capsys):
    failing = tmp_path / "failing.md"
    failing.write_text('# F\n\n```bash\necho before\nexit 3\n```\n\n```python\nprint("never")\n```\n')
    python_failing = tmp_path / "python_failing.md"
    python_failing.write_text('```python\nname = "value"\n```\n\n```python\nassert name == "other", name\n```\n')
    passing = tmp_path / "passing.md"
    passing.write_text("```bash\ntest -d .\n```\n\n<!-- docs-check: skip (needs a GPU) -->\n```bash\nexit 1\n```\n")

    status = docs_check.main([str(failing), str(python_failing), str(passing), "--no-fixtures"])
    out = capsys.readouterr().out
    assert status == 1
    assert f"FAILED {failing}:3 (bash block; 1 later block(s) of the page not run)" in out
    assert "(exit status 3)" in out and "never" not in out
    # a python block sees the names of the page's earlier blocks; its traceback gives the page's own line
    assert f"FAILED {python_failing}:5 (python block; 0 later block(s) of the page not run)" in out
    assert f'File "{python_failing}", line 6' in out and "AssertionError: value" in out
    assert f"{passing}:1: bash ok" in out and f"{passing}:6: skipped (needs a GPU)" in out
    assert "3 pages, 4 blocks run, 1 skipped (marked), 2 failed" in out

    assert docs_check.main([str(passing), "--no-fixtures"]) == 0


def test_hub_ids_stand_for_the_local_checkpoints(tmp_path):
    fixtures = tmp_path / "fixtures"
    code = "hovle convert --input OpenGVLab/HoVLE --output x; hovle convert --input OpenGVLab/HoVLE-HD --output y"
    assert docs_check.substituted(code, tmp_path, fixtures) == (
        f"hovle convert --input {tmp_path / 'hub/HoVLE'} --output x; "
        f"hovle convert --input {tmp_path / 'hub/HoVLE-HD'} --output y"
    )
