"""The main content of an HTML page as text: headings as `#` lines, code as fenced blocks.

Two steps. First find the content: documentation generators declare it (Sphinx and MkDocs
mark it `role="main"`, HTML5 pages use `<main>`, DocBook pages such as PostgreSQL's manual
put it between `navheader` and `navfooter`), and when a page declares nothing,
readability-lxml picks it (without its own clean-up: see `_Readability`). Both general extractors were measured on Python's and
PostgreSQL's manuals (bench/ingest_bench.py, docs/dependencies.md): each drops real
content of documentation pages (readability kept only the last code block of Python's
venv page; trafilatura dropped PostgreSQL's headings and rewrote code into markdown
with escapes), so a page's own declaration comes first. Readability returns the page's
own markup, which keeps the second step the same for every page.

Then render it: navigation, sidebars, footers, headerlinks (`¶`) and previous/next
blocks are removed; `<pre>` becomes a fenced block whose lines keep their indentation,
so a `# comment` inside code is never taken for a heading by the chunker; `<h1>`-`<h6>`
become `#` lines, so chunks carry their section path. The walk uses an explicit stack:
a page nested ten thousand elements deep is text, not a RecursionError.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import lxml.html
from lxml import etree
from readability import Document
from readability.readability import Unparseable

from rag.fences import fence_for

_DROP_TAGS = ("script", "style", "noscript", "template", "svg", "iframe", "nav", "aside", "footer",
              "form", "button", "select", "input", "head", "link", "meta")
# Navigation, sidebars, footers and permalinks as the supported generators mark them:
# Sphinx (headerlink, related, sphinxsidebar, footer buttons of its themes), MkDocs
# (md-sidebar, md-footer, its default theme's prev/next), DocBook (navheader, navfooter,
# toc), blogs' previous/next and breadcrumb blocks, links marked rel=prev/next, and ARIA
# roles any site may use.
_DROP_CLASSES = ("headerlink", "related", "sphinxsidebar", "rst-footer-buttons", "prev-next-area", "md-sidebar",
                 "md-footer", "md-content__button", "pager", "navheader", "navfooter", "toc", "skip-link",
                 "post-navigation", "nav-links", "post-nav", "pagination", "breadcrumb", "breadcrumbs")
_DROP_ROLES = ("navigation", "search", "contentinfo", "complementary", "banner")


def _has_class(name: str) -> str:
    return f"contains(concat(' ', normalize-space(@class), ' '), ' {name} ')"


_DROP_XPATH = etree.XPath(" | ".join(
    [f".//{tag}" for tag in _DROP_TAGS]
    + [".//*[" + " or ".join(_has_class(c) for c in _DROP_CLASSES) + "]"]
    + [".//*[" + " or ".join(f"@role='{r}'" for r in _DROP_ROLES) + "]"]
    + [".//a[@rel='prev' or @rel='next']"]
))
_HEADING = re.compile(r"h[1-6]")
_BLOCK_TAGS = frozenset({
    "p", "div", "section", "article", "main", "header", "blockquote", "ul", "ol", "dl", "dt", "dd",
    "table", "figure", "figcaption", "address", "details", "summary", "hr", "body", "html",
})
_HTML_SPACE = re.compile(r"\s+")
_PILCROW = re.compile(r"\s*¶\s*$")
# "- " then a blank line: a list item whose text is in a <p> (Sphinx writes <li><p>…).
_EMPTY_BULLET = re.compile(r"\n- [ \t]*\n(?:[ \t]*\n)*(?!- )")
_XML_DECLARATION = re.compile(r"^\s*<\?xml[^>]*\?>", re.IGNORECASE)


@dataclass(frozen=True)
class PageText:
    """A page's text and title (its first `<h1>`, else its `<title>`, else None)."""

    text: str
    title: str | None


def _one_line(element: lxml.html.HtmlElement) -> str:
    return _PILCROW.sub("", " ".join(element.text_content().split()))


def _declared_main(page: lxml.html.HtmlElement) -> lxml.html.HtmlElement | None:
    """The content region the page declares, if it declares one."""
    for xpath in ("//*[@role='main']", "//main"):
        found = page.xpath(xpath)
        if len(found) == 1:
            articles = found[0].xpath(".//article")
            return articles[0] if len(articles) == 1 else found[0]
    if page.xpath("//div[" + _has_class("navheader") + " or " + _has_class("navfooter") + "]"):
        # DocBook: the body between its navigation blocks (pruned below).
        content = page.xpath("//*[@id='docContent']")
        return content[0] if content else page.body
    return None


def _code_block(pre: lxml.html.HtmlElement) -> str:
    code = pre.text_content().strip("\n")
    if not code.strip():
        return ""
    fence = fence_for(code)
    return f"\n\n{fence}\n{code}\n{fence}\n\n"


class _Text(str):
    """Text already rendered (a marker, or an element's text or tail), emitted as is."""


def render(root: lxml.html.HtmlElement) -> str:
    """Text of `root`: `#` headings, fenced code, `- ` list items, table cells on one line."""
    out: list[str] = []
    stack: list[lxml.html.HtmlElement | _Text] = [root]
    while stack:
        item = stack.pop()
        if isinstance(item, _Text):
            out.append(item)
            continue
        name = item.tag if isinstance(item.tag, str) else ""  # comments and processing instructions: ""
        if not name:
            pass
        elif _HEADING.fullmatch(name):
            if heading := _one_line(item):
                out.append(f"\n\n{'#' * int(name[1])} {heading}\n\n")
        elif name == "pre":
            out.append(_code_block(item))
        elif name == "br":
            out.append("\n")
        else:
            before, after = "", ""
            if name == "li":
                before = "\n- "
            elif name == "tr":
                before = after = "\n"
            elif name in ("td", "th"):
                after = " "
            elif name in _BLOCK_TAGS:
                before = after = "\n\n"
            stack.append(_Text(after))
            for child in reversed(item):
                if child.tail:
                    stack.append(_Text(_HTML_SPACE.sub(" ", child.tail)))
                stack.append(child)
            if item.text and name:
                stack.append(_Text(_HTML_SPACE.sub(" ", item.text)))
            stack.append(_Text(before))
    return _EMPTY_BULLET.sub("\n- ", "".join(out))


def prune(root: lxml.html.HtmlElement) -> None:
    """Remove navigation, sidebars, footers, permalinks, scripts and forms from `root`
    (the text that follows a removed element stays)."""
    for element in _DROP_XPATH(root):
        if element is not root and element.getparent() is not None:
            element.drop_tree()


def strip_xml_declaration(html: str) -> str:
    """XHTML without its `<?xml … encoding=…?>` line, which lxml refuses in a str."""
    return _XML_DECLARATION.sub("", html, count=1)


# huge_tree: libxml2 otherwise stops at 256 nested elements and drops the rest of the page.
_PARSER = lxml.html.HTMLParser(huge_tree=True, remove_comments=True, remove_pis=True)


class _Readability(Document):
    """readability-lxml choosing the content (the best-scored element and its siblings),
    without its final clean-up: that step drops short lists and tables by link density and
    headings by class name (a page's "Organelles" list of two items went), which
    `prune` does by markup instead."""

    def sanitize(self, node: lxml.html.HtmlElement, candidates: object, keep_all_images: bool = False) -> str:
        return str(lxml.html.tostring(node, encoding="unicode"))


def _parse(html: str) -> lxml.html.HtmlElement | None:
    try:
        return lxml.html.document_fromstring(html, parser=_PARSER)
    except (etree.ParserError, ValueError):  # "Document is empty", and the like
        return None


def main_content(html: str) -> PageText:
    """The page's main content as text, and its title."""
    html = strip_xml_declaration(html)
    page = _parse(html)
    if page is None:
        return PageText("", None)
    title_tags = page.xpath("//title")
    page_title = " ".join(title_tags[0].text_content().split()) if title_tags else None
    main = _declared_main(page)
    if main is None:
        try:
            summary = _Readability(page).summary(html_partial=True)  # it works on a copy
        except (Unparseable, ValueError):  # lxml's refusals: fall back to the whole page
            summary = ""
        region = _parse(summary) if summary.strip() else None
        main = region if region is not None and region.text_content().strip() else page
    prune(main)
    h1 = main.xpath(".//h1")
    heading = _one_line(h1[0]) if h1 else ""
    return PageText(render(main), heading or page_title or None)
