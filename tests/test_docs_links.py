"""The Markdown docs stay navigable: every relative link in README.md and docs/*.md points
to a file that exists and, with `#anchor`, to a heading of that file (GitHub's slugs), and
docs/configuration.md names every environment variable handlers/settings.py reads (and every
one its sections in handlers/*/settings.py name)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(([^()\s]+)(?:\s+\"[^\"]*\")?\)")


def prose(text: str) -> str:
    """The text outside fenced code blocks and inline code spans."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    return re.sub(r"`[^`\n]*`", "", text)


def slug(heading: str) -> str:
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text only
    text = text.replace("`", "").strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", path.read_text(encoding="utf-8"), flags=re.S | re.M)
    seen: dict[str, int] = {}
    out = set()
    for m in re.finditer(r"^#{1,6}\s+(.+?)\s*#*\s*$", text, flags=re.M):
        base = slug(m.group(1))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def broken_links() -> list[str]:
    broken = []
    for page in PAGES:
        for target in LINK.findall(prose(page.read_text(encoding="utf-8"))):
            if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
                continue
            path_part, _, anchor = target.partition("#")
            dest = (page.parent / path_part).resolve() if path_part else page
            where = f"{page.relative_to(ROOT)}: ({target})"
            if not dest.exists():
                broken.append(f"{where}: no such file")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                broken.append(f"{where}: no heading with this anchor")
    return broken


def test_every_doc_link_resolves() -> None:
    assert broken_links() == []


def test_configuration_page_lists_every_setting() -> None:
    # handlers/settings.py reads the environment; the sections it composes may name variables too.
    sources = [ROOT / "handlers" / "settings.py", *sorted((ROOT / "handlers").glob("*/settings.py"))]
    config = "\n".join(path.read_text(encoding="utf-8") for path in sources)
    names = set(re.findall(r"\b(?:STUDYHALL_[A-Z0-9_]+|OPENAI_[A-Z_]+|DATABASE_URL|REDIS_URL)\b", config))
    listed = set(re.findall(r"`([A-Z][A-Z0-9_]+)`", (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")))
    assert sorted(names - listed) == []
