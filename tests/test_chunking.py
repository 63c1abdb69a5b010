"""Chunking: exact positions, heading paths, token budget, overlap; offline tokens."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rag.chunking import chunk_text
from rag.tokens import count_tokens, encode, get_encoding, truncate_to_tokens

GUIDE = """Welcome to the lab handbook. Read it before your first session.

# Install

You need Python 3.11 and a text editor.

## On Linux

Install the packages with apt. Then create a virtual environment with python -m venv.

## On Windows

Download the installer from the course page and tick "Add to PATH".

# Safety

Never eat in the lab. Wear goggles when handling acids.
"""


def long_section(sentences: int) -> str:
    return " ".join(f"Step {i} of the titration adds exactly one drop of base to the flask." for i in range(sentences))


def test_tokens_work_offline_and_match_cl100k() -> None:
    # Known cl100k_base ids: proves the real encoding is loaded from the bundled file.
    assert encode("hello world") == [15339, 1917]
    assert get_encoding().name == "cl100k_base"
    assert count_tokens("") == 0
    assert count_tokens("<|endoftext|>") > 1  # special tokens in user text are plain text


def test_truncate_to_tokens() -> None:
    text = "one two three four five six"
    assert truncate_to_tokens(text, 3) == "one two three"
    assert truncate_to_tokens(text, 100) == text
    assert truncate_to_tokens(text, 0) == ""
    cut = truncate_to_tokens("日本語のテキストです" * 5, 7)
    assert "\ufffd" not in cut and count_tokens(cut) <= 7


def test_heading_paths_and_exact_positions() -> None:
    chunks = chunk_text(GUIDE, max_tokens=350, overlap_tokens=50)
    assert [c.heading_path for c in chunks] == [
        [], ["Install"], ["Install", "On Linux"], ["Install", "On Windows"], ["Safety"],
    ]
    for i, c in enumerate(chunks):
        assert c.index == i
        assert GUIDE[c.start_char:c.end_char] == c.content
        assert c.token_count == count_tokens(c.content)
    assert chunks[2].content.startswith("## On Linux\n\nInstall the packages with apt.")
    assert chunks[4].content == "# Safety\n\nNever eat in the lab. Wear goggles when handling acids."


def test_heading_without_body_is_not_a_chunk_and_fenced_hash_is_not_heading() -> None:
    text = "# Course\n## Week 1\nRead chapter one.\n\n```\n# not a heading\n```\nAfter code."
    chunks = chunk_text(text)
    assert [c.heading_path for c in chunks] == [["Course", "Week 1"]]
    assert "# not a heading" in chunks[0].content


def test_budget_respected_and_overlap_between_consecutive_chunks() -> None:
    text = "# Titration\n\n" + long_section(80) + "\n\nA closing paragraph about cleaning the burette."
    chunks = chunk_text(text, max_tokens=100, overlap_tokens=20)
    assert len(chunks) > 5
    for c in chunks:
        assert c.token_count <= 100
        assert text[c.start_char:c.end_char] == c.content
        assert c.heading_path == ["Titration"]
    for prev, nxt in zip(chunks, chunks[1:]):
        assert nxt.start_char < prev.end_char, "consecutive chunks must overlap"
        shared = text[nxt.start_char:prev.end_char]
        assert 5 <= count_tokens(shared) <= 20 + 5
        assert nxt.content[0].isupper(), "overlap starts at a sentence"
    # Together the chunks cover every sentence of the section.
    covered = set()
    for c in chunks:
        covered.update(range(c.start_char, c.end_char))
    for i in range(80):
        pos = text.index(f"Step {i} ")
        assert pos in covered


def test_no_overlap_when_disabled_and_no_overlap_across_headings() -> None:
    text = "# A\n\n" + long_section(30) + "\n\n# B\n\n" + long_section(30)
    chunks = chunk_text(text, max_tokens=120, overlap_tokens=0)
    for prev, nxt in zip(chunks, chunks[1:]):
        assert nxt.start_char >= prev.end_char
    with_overlap = chunk_text(text, max_tokens=120, overlap_tokens=30)
    first_b = next(c for c in with_overlap if c.heading_path == ["B"])
    assert first_b.content.startswith("# B")


def test_giant_sentence_is_split_by_tokens() -> None:
    text = "word " * 1000
    chunks = chunk_text(text.strip(), max_tokens=64, overlap_tokens=8)
    assert len(chunks) >= 1000 // 64
    assert all(c.token_count <= 64 for c in chunks)
    assert chunks[-1].end_char == len(text.strip())


def test_bad_budget_rejected() -> None:
    with pytest.raises(ValueError):
        chunk_text("x", max_tokens=2)


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.text(alphabet="abcde fgh.!?\n#é", min_size=0, max_size=300),
            st.sampled_from(["# Title", "## Sub section", "\n\n", "```", long_section(3)]),
        ),
        max_size=12,
    ),
    st.integers(min_value=16, max_value=120),
    st.integers(min_value=0, max_value=40),
)
def test_properties_hold_for_any_text(parts: list[str], max_tokens: int, overlap: int) -> None:
    text = "\n".join(parts)
    chunks = chunk_text(text, max_tokens=max_tokens, overlap_tokens=overlap)
    for i, c in enumerate(chunks):
        assert c.index == i
        assert text[c.start_char:c.end_char] == c.content
        assert c.content == c.content.strip() and c.content
        assert c.token_count == count_tokens(c.content) <= max_tokens
    starts = [c.start_char for c in chunks]
    assert starts == sorted(starts)
