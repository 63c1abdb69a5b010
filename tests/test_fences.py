"""Fenced code: extraction, chunking and quoting agree on which lines are code (rag/fences.py).

The case that broke: Markdown documentation shows a three-backtick fence inside code, so
the code is fenced with four backticks (rag/html.py does the same for `<pre>` blocks that
contain backticks). The chunker toggled on any line starting with three backticks, ended
the code there, and took the `# comment` after it for a section heading.
"""
from __future__ import annotations

from rag.chunking import chunk_text
from rag.extract import extract, normalize_text
from rag.fences import classify, fence_for, opening
from rag.passages import units

SHOWS_A_FENCE = """# Writing docs

Put examples in a fenced block like this:

````markdown
Here is some Python:

```python
# install the package first
import venv
```
````

# Reference

The builder takes options."""


def test_four_backtick_fence_holding_three_backticks_stays_code_for_the_chunker() -> None:
    chunks = chunk_text(SHOWS_A_FENCE)
    paths = [c.heading_path for c in chunks]
    assert ["install the package first"] not in paths
    assert all("install the package first" not in p for path in paths for p in path)
    assert paths == [["Writing docs"], ["Reference"]]
    assert "# install the package first" in chunks[0].content


def test_extraction_keeps_code_lines_as_they_are_and_titles_skip_code() -> None:
    text = "````\n```\n# not the title\n    indented   code\n```\n````\n\n# Real title\n\nText."
    assert extract(text, "page.md").title == "Real title"
    normalised = normalize_text(text)
    assert "    indented   code" in normalised.split("\n")  # still inside the four-backtick fence
    assert normalize_text(normalised) == normalised


def test_quoting_takes_the_whole_four_backtick_block_as_one_code_unit() -> None:
    content = ("To show a fence in your docs, write it inside a longer one:\n\n"
               "````\n```\nprint('hi')\n```\n````\n\nThat is the whole trick to it.")
    found = units(content)
    code = [u for u in found if u.kind == "code"]
    assert [u.text for u in code] == ["```\nprint('hi')\n```"]
    assert code[0].markdown() == "````\n```\nprint('hi')\n```\n````"
    assert found[-1].kind == "sentence" and found[-1].text == "That is the whole trick to it."


def test_the_rule_is_commonmarks() -> None:
    kinds = [k for _, k in classify(["~~~~", "~~~", "```", "~~~~~", "text"])]
    assert kinds == ["open", "code", "code", "close", "text"]  # only the same char, at least as long
    assert opening("```py`thon") is None  # a backtick in a backtick fence's info: inline code
    assert opening("    ```") is None  # four spaces: indented code, not a fence
    assert opening("   ```js") is not None
    assert [k for _, k in classify(["```", "``` not a close", "```  "])] == ["open", "code", "close"]
    assert [k for _, k in classify(["```", "# never closed"])] == ["open", "code"]
    assert fence_for("a ``` b") == "````" and fence_for("plain") == "```"
