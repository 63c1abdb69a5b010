// Markdown in what the tutor, agents and platforms write (docs/browser.md, "Markdown").
//
// Three layers, so that nothing a student or a document can write runs script:
// 1. markdown-it with `html: false`: raw HTML in the text (a `<script>`, an `<img onerror>`,
//    HTML smuggled inside Markdown) is escaped and shows as text; its link validator
//    already drops `javascript:`, `vbscript:`, `file:` and `data:` targets.
// 2. DOMPurify on markdown-it's output, with an allowlist of the tags and attributes
//    Markdown makes (no images, no style, no event handlers): a second, maintained check
//    in case a renderer bug ever lets markup through. It returns a DocumentFragment, so
//    the result never goes back through innerHTML.
// 3. Links: only absolute http(s) and mailto targets stay links (anything else becomes its
//    text); each opens in a new tab with rel="noopener noreferrer".
// Then `[n]` in the text (outside code and links) becomes a link to citation n's source.
// Students' own messages are NOT rendered: they show exactly as typed (dom.js).
import markdownit from "../../vendor/markdown-it.esm.js";
import DOMPurify from "../../vendor/purify.es.mjs";

const md = markdownit({ html: false, linkify: false, breaks: true, typographer: false });
md.disable(["image"]); // no remote fetches from a message (tracking pixels; img-src is 'self')

const TAGS = ["p", "br", "strong", "em", "s", "del", "code", "pre", "blockquote", "ul", "ol", "li", "a", "hr",
  "h1", "h2", "h3", "h4", "h5", "h6", "table", "thead", "tbody", "tr", "th", "td"];
const ATTRS = ["href", "title", "start"];
const SCHEMES = new Set(["http:", "https:", "mailto:"]);
const CITE = /\[(\d{1,3})\]/g;

/** The URL if it is an absolute http(s) or mailto link, else null. */
export function safeHref(href) {
  if (typeof href !== "string") return null;
  try {
    const url = new URL(href.trim());
    return SCHEMES.has(url.protocol) ? url.href : null;
  } catch {
    return null; // relative or malformed: no link
  }
}

function outLink(a, href) {
  a.href = href;
  a.target = "_blank";
  a.rel = "noopener noreferrer";
  return a;
}

/** Citation n of an answer: the one that says it is n, else the n-th. */
function citationFor(citations, n) {
  if (!Array.isArray(citations)) return null;
  return citations.find((c) => c && c.n === n) || (citations.some((c) => c && Number.isInteger(c.n)) ? null : citations[n - 1]) || null;
}

function linkCitations(root, citations) {
  const walker = document.createTreeWalker(root, NodeFilter.SHOW_TEXT, {
    acceptNode: (node) => (node.parentElement?.closest("a, code, pre") ? NodeFilter.FILTER_REJECT : NodeFilter.FILTER_ACCEPT),
  });
  const texts = [];
  for (let node = walker.nextNode(); node; node = walker.nextNode()) if (CITE.test(node.data)) texts.push(node);
  for (const node of texts) {
    const parts = [];
    let last = 0;
    for (const m of node.data.matchAll(CITE)) {
      const c = citationFor(citations, Number(m[1]));
      if (!c) continue;
      parts.push(node.data.slice(last, m.index));
      const href = safeHref(c.source);
      const label = `[${m[1]}]`;
      const el = href ? outLink(document.createElement("a"), href) : document.createElement("span");
      el.className = "cite";
      el.textContent = label;
      el.title = c.title || "Source";
      parts.push(el);
      last = m.index + m[0].length;
    }
    if (!parts.length) continue;
    parts.push(node.data.slice(last));
    node.replaceWith(...parts);
  }
}

/** A DocumentFragment for Markdown `text`, safe to append; `citations`: the answer's sources. */
export function renderMarkdown(text, { citations } = {}) {
  const fragment = DOMPurify.sanitize(md.render(String(text ?? "")), {
    ALLOWED_TAGS: TAGS, ALLOWED_ATTR: ATTRS, ALLOW_DATA_ATTR: false, RETURN_DOM_FRAGMENT: true,
  });
  for (const a of fragment.querySelectorAll("a")) {
    const href = safeHref(a.getAttribute("href"));
    if (href) outLink(a, href);
    else a.replaceWith(...a.childNodes);
  }
  linkCitations(fragment, citations);
  return fragment;
}
