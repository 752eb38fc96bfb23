"""Issue 21: every number in a notebook's prose comes from the run or from docs/benchmarks.md.

A figure measured by a run (a score, a time, a memory peak) belongs in a cell's printed output,
where it is that run's own. Markdown may quote a recorded figure only from ``docs/benchmarks.md``,
in a cell that cites it with its date, and the figure must be there. Everything else a cell
states in digits is a constant of the course, listed here with where it comes from.
"""

import re
from pathlib import Path

import nbformat
import pytest

from helpers.config import PROFILES, REPO_ROOT

NOTEBOOKS = sorted((REPO_ROOT / "notebooks").glob("*.ipynb"))
BENCHMARKS = (REPO_ROOT / "docs" / "benchmarks.md").read_text()
FULL_STEPS = PROFILES["full"]["epochs"] * PROFILES["full"]["steps_per_epoch"]

#: Constants, not measurements: each with where it comes from.
CONSTANTS = {
    "0.5": "the default window overlap; nnU-Net's lower clip percentile",
    "0.25": "an overlap that exercises try",
    "0.75": "an overlap that exercises try",
    "0.33": "PatchSampler's default foreground_fraction (helpers.sampling)",
    "99.5": "nnU-Net's upper clip percentile (helpers.preprocessing)",
    "0.8": "SandstoneCores' finest voxel spacing in mm (helpers.datasets)",
    "42.6": "the U-Net's parameters in millions (03 asserts the count)",
    "0.9": "the course's BatchNormalization momentum (helpers.model)",
    "0.99": "Keras' default BatchNormalization momentum",
    f"{FULL_STEPS:,}": "the full profile's training steps (epochs x steps_per_epoch)",
    "4.25": "02's worked example: (200 - 64) / 32",
    "2.21": "the pinned TensorFlow (requirements.txt)",
    "3.12": "the newest supported Python",
    "1.1.1": "the pinned segmentation-models-3D",
    "0.2.3": "the pinned patchify",
}
#: Decimals, version-like runs of them, thousands with commas, and powers written with "·10".
NUMBER = re.compile(r"(?<![\w.,])(\d+(?:\.\d+)+|\d{1,3}(?:,\d{3})+|\d+·10[⁰¹²³⁴⁵⁶⁷⁸⁹⁻]+)(?![\w,]*\d)")
DATE = re.compile(r"20\d\d-\d\d-\d\d")


def prose_numbers(markdown: str) -> list[str]:
    text = re.sub(r"```.*?```", "", markdown, flags=re.DOTALL)  # code blocks (exercise solutions)
    text = re.sub(r"\]\([^)]*\)", "]", text)  # link targets
    text = re.sub(r"`[^`]*`", "", text)  # code spans name things; they do not state figures
    return NUMBER.findall(text)


def unsourced(markdown: str) -> list[str]:
    """The numbers of one markdown cell that are neither constants nor quoted from the docs."""
    cites = "docs/benchmarks.md" in markdown and DATE.search(markdown)

    def recorded(n: str) -> bool:
        return bool(re.search(rf"(?<![\d.,]){re.escape(n)}(?![\d,])", BENCHMARKS))

    return [n for n in prose_numbers(markdown) if n not in CONSTANTS and not (cites and recorded(n))]


def test_the_rule_finds_typed_figures_and_accepts_sourced_ones():
    assert unsourced("on the recorded run, 0.0799 → 0.0681 and 1,234 MB; loss 3·10⁶") == [
        "0.0799",
        "0.0681",
        "1,234",
        "3·10⁶",
    ]
    assert unsourced("overlap 0.5 and `predict(x, 0.37)`, see [it](http://a.b/1.2.3)") == []
    assert unsourced("run this:\n```python\nprint(0.37)\n```\nthen 0.37") == ["0.37"]
    assert unsourced("`docs/benchmarks.md`, 2026-11-28: workers peaked at 1,234 MB") == []
    assert unsourced("`docs/benchmarks.md` (no date): workers peaked at 1,234 MB") == ["1,234"]
    assert unsourced("`docs/benchmarks.md`, 2026-11-28: 9,876 MB") == ["9,876"]  # not recorded there


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_number_in_prose_is_printed_by_the_run_or_quoted_with_its_source(path: Path):
    cells = nbformat.read(path, as_version=4).cells
    found = {i: unsourced(c.source) for i, c in enumerate(cells) if c.cell_type == "markdown"}
    assert {i: n for i, n in found.items() if n} == {}, "print these from a cell, or cite docs/benchmarks.md"


# Issue 33, item 8: a lesson reads in short sentences; the plumbing lives in the README.

#: Words a sentence of a lesson cell may average (keras.io's examples average well under it).
MAX_WORDS = 20
#: The cells that are not lesson prose: the title with its objectives, the exercises and the quiz.
NOT_LESSONS = ("# ", "## Exercises", "## Check your understanding")
#: A sentence ends at . ! or ? (and any closing ** or parenthesis) followed by a space and a capital,
#: a digit, a code span, emphasis or a parenthesis. "e.g. the" and "0.5 mm" do not end one.
SENTENCE_END = re.compile(r"(?<=[.!?])[*)\"”]*\s+(?=[A-Z0-9`*(\"“])")
#: A line that starts a new piece of prose: a list item (-, *, + or 1.).
LIST_ITEM = re.compile(r"^\s*(?:[-*+]|\d+\.)\s+")


def sentences(markdown: str) -> list[list[str]]:
    """The sentences of one markdown cell, each as its words; fragments of one or two words are dropped.

    Code blocks and collapsed ``<details>`` are not prose; headings and table rows are not
    sentences; a `code span` or a link is one word; blank lines and list items end a sentence.
    """
    text = re.sub(r"```.*?```", "\n\n", markdown, flags=re.DOTALL)
    text = re.sub(r"<details>.*?</details>", "\n\n", text, flags=re.DOTALL)
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", text)  # a link reads as its text
    text = re.sub(r"`[^`]*`", "`code`", text)
    text = re.sub(r"<[^>]+>", " ", text)
    pieces, piece = [], []
    for line in text.splitlines():
        if not line.strip() or LIST_ITEM.match(line) or line.lstrip().startswith(("#", "|")):
            pieces.append(" ".join(piece))
            piece = []
        if line.strip() and not line.lstrip().startswith(("#", "|")):
            piece.append(LIST_ITEM.sub("", line))
    pieces.append(" ".join(piece))
    found = [s.split() for p in pieces for s in SENTENCE_END.split(p)]
    return [words for words in found if len(words) > 2]


def mean_sentence_words(markdown: str) -> float:
    found = sentences(markdown)
    return sum(map(len, found)) / len(found) if found else 0.0


def test_the_sentence_rule():
    assert sentences("## A heading\n\nShort one here. And `a.b(c, d)` is one word! Then e.g. this.") == [
        ["Short", "one", "here."],
        ["And", "`code`", "is", "one", "word!"],
        ["Then", "e.g.", "this."],
    ]
    assert sentences("Lists end them:\n- first item here\n- second item (**bold.**) Next one starts") == [
        ["Lists", "end", "them:"],
        ["first", "item", "here"],
        ["second", "item", "(**bold."],
        ["Next", "one", "starts"],
    ]
    assert sentences("Code is not prose.\n```python\nx = 1  # a long comment of many words\n```\nOK.") == [
        ["Code", "is", "not", "prose."]
    ]
    assert sentences("This is seen. <details><summary>Solution</summary>hidden words in here</details>") == [
        ["This", "is", "seen."]
    ]
    assert mean_sentence_words("One two three four. Five six seven eight nine ten.") == 5.0


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_lesson_cells_average_short_sentences(path: Path):
    cells = nbformat.read(path, as_version=4).cells
    lessons = {
        i: c.source
        for i, c in enumerate(cells)
        if c.cell_type == "markdown" and not c.source.startswith(NOT_LESSONS)
    }
    long = {
        i: round(mean_sentence_words(s), 1) for i, s in lessons.items() if mean_sentence_words(s) > MAX_WORDS
    }
    assert long == {}, (
        f"cells whose sentences average over {MAX_WORDS} words: shorten them, or move plumbing to the README"
    )
