"""Build the corpora of the evaluation sets from Debian's offline documentation packages.

    apt-get install -y python3.11-doc postgresql-doc-15
    pip install -e '.[bench]'       # beautifulsoup4, for bench/evalsets/build.py
    python bench/evalsets/build.py OUT          # → OUT/python-faq/, OUT/postgres/

python-faq: the Python 3.11 FAQ (/usr/share/doc/python3.11/html/faq/*.html, PSF licence),
one Markdown document per question: `# <the FAQ's question>` then its answer, named
`<page>/<section id>.md` (e.g. `programming/why-are-default-values-shared-between-objects.md`).
An FAQ entry is the innermost Sphinx section; code blocks stay fenced code.

postgres: the pages of PostgreSQL 15's manual (/usr/share/doc/postgresql-doc-15/html,
PostgreSQL licence) that its question set draws on plus every page of the same families
as distractors: the SQL command reference (sql-*.html), the client and server programs
(app-*.html) and the data type and function chapters (datatype*.html, functions*.html),
copied as they are; the knowledge base's HTML extraction does the rest.

The questions (questions.jsonl beside this script, one folder per set) were written by
hand against these documents, paraphrased so that sharing words with the page is not
what finds it; they name their answers by source (the path under the set's folder). The
sources are not copied into the repository: the packages are on every Debian/Ubuntu
machine, and the script is deterministic.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
from pathlib import Path

from bs4 import BeautifulSoup, Tag

PYTHON_FAQ = Path("/usr/share/doc/python3.11/html/faq")
POSTGRES_HTML = Path("/usr/share/doc/postgresql-doc-15/html")
POSTGRES_PAGES = ("sql-*.html", "app-*.html", "datatype*.html", "functions*.html")
FAQ_PAGES = ("general", "programming", "design", "library", "extending", "windows", "gui", "installed")


def _text(node: Tag) -> str:
    """The section's answer as Markdown-ish text: paragraphs and list items as lines,
    code blocks fenced, nested headings dropped (the FAQ's entries are innermost)."""
    parts: list[str] = []
    for child in node.children:
        if not isinstance(child, Tag) or child.name in ("h1", "h2", "h3", "h4", "h5", "h6"):
            continue
        for link in child.select("a.headerlink"):
            link.decompose()
        classes = child.get("class") or []
        if child.name == "div" and any(c.startswith("highlight") for c in classes):
            parts.append("```\n" + child.get_text().rstrip("\n") + "\n```")
        elif child.name in ("ul", "ol"):
            parts.extend("- " + " ".join(li.get_text(" ").split()) for li in child.find_all("li", recursive=False))
        elif child.name == "div" and child.select_one("div.highlight"):
            for sub in child.find_all(["p", "div"], recursive=False):
                if sub.name == "div" and sub.select_one("pre"):
                    parts.append("```\n" + sub.get_text().rstrip("\n") + "\n```")
                else:
                    parts.append(" ".join(sub.get_text(" ").split()))
        else:
            text = " ".join(child.get_text(" ").split())
            if text:
                parts.append(text)
    return "\n\n".join(parts)


def faq_entries(page: Path) -> list[tuple[str, str, str]]:
    """(section id, question, answer) for each innermost section of one FAQ page."""
    soup = BeautifulSoup(page.read_text(encoding="utf-8"), "html.parser")
    body = soup.select_one("div.body") or soup
    out = []
    for section in body.find_all("section"):
        if section.find("section") is not None:
            continue
        heading = section.find(["h2", "h3", "h4"])
        if heading is None:
            continue
        for link in heading.select("a.headerlink"):
            link.decompose()
        question = " ".join(heading.get_text(" ").split())
        answer = _text(section)
        if answer.strip():
            out.append((str(section.get("id")), question, answer))
    return out


def build_python_faq(out: Path) -> int:
    if not PYTHON_FAQ.is_dir():
        raise SystemExit(f"{PYTHON_FAQ} not found: apt-get install -y python3.11-doc")
    count = 0
    for name in FAQ_PAGES:
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        for section_id, question, answer in faq_entries(PYTHON_FAQ / f"{name}.html"):
            slug = re.sub(r"[^a-z0-9-]+", "-", section_id.lower()).strip("-")
            (folder / f"{slug}.md").write_text(f"# {question}\n\n{answer}\n", encoding="utf-8")
            count += 1
    return count


def build_postgres(out: Path) -> int:
    if not POSTGRES_HTML.is_dir():
        raise SystemExit(f"{POSTGRES_HTML} not found: apt-get install -y postgresql-doc-15")
    out.mkdir(parents=True, exist_ok=True)
    pages = sorted({p for pattern in POSTGRES_PAGES for p in POSTGRES_HTML.glob(pattern)})
    for page in pages:
        shutil.copyfile(page, out / page.name)
    return len(pages)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="where to write python-faq/ and postgres/")
    parser.add_argument("--set", choices=("python-faq", "postgres"), action="append",
                        help="build only these sets (default: both)")
    args = parser.parse_args(argv)
    sets = args.set or ["python-faq", "postgres"]
    if "python-faq" in sets:
        shutil.rmtree(args.out / "python-faq", ignore_errors=True)
        print(f"python-faq: {build_python_faq(args.out / 'python-faq')} documents")
    if "postgres" in sets:
        shutil.rmtree(args.out / "postgres", ignore_errors=True)
        print(f"postgres: {build_postgres(args.out / 'postgres')} pages")
    return 0


if __name__ == "__main__":
    sys.exit(main())
