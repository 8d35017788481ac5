"""Model cards are Markdown written by publishers: render it, then sanitise the HTML with an allow-list."""

from __future__ import annotations

import re
from functools import lru_cache

import markdown as md
import nh3
from django.utils.safestring import SafeString, mark_safe

MARKDOWN_EXTENSIONS = ["tables", "fenced_code", "sane_lists"]

ALLOWED_TAGS = {
    "a", "abbr", "b", "blockquote", "br", "code", "dd", "del", "div", "dl", "dt", "em", "h1", "h2", "h3",
    "h4", "h5", "h6", "hr", "i", "img", "kbd", "li", "ol", "p", "pre", "s", "span", "strong", "sub", "sup",
    "table", "tbody", "td", "th", "thead", "tr", "ul",
}  # fmt: skip
ALLOWED_ATTRIBUTES = {
    "a": {"href", "title"},
    "abbr": {"title"},
    "img": {"src", "alt", "title", "width", "height"},
    "th": {"align", "colspan", "rowspan", "scope"},
    "td": {"align", "colspan", "rowspan"},
    "ol": {"start"},
}
# No javascript:, data: or vbscript: URLs; relative links stay as they are.
ALLOWED_URL_SCHEMES = {"http", "https", "mailto"}
LINK_REL = "nofollow noopener"


def markdown_render(text: str | None, *, heading_offset: int = 0) -> SafeString:
    """Markdown → HTML that is safe to put in a page: no raw HTML, scripts, handlers or script URLs survive.

    ``heading_offset`` demotes headings (``# Title`` becomes ``<h3>`` with an offset of 2) so a card
    rendered under the page's own ``<h2>`` keeps a sound outline.
    """
    return mark_safe(_render(text or "", max(0, heading_offset)))  # noqa: S308 - sanitised by nh3 in _render


_HEADING_RE = re.compile(r"<(/?)h([1-6])>")


# Keyed by the text itself, so a cached rendering can never be stale; bounds the work on hot listing pages.
@lru_cache(maxsize=512)
def _render(text: str, heading_offset: int) -> str:
    html = md.markdown(text, extensions=MARKDOWN_EXTENSIONS, output_format="html")
    html = nh3.clean(
        html,
        tags=ALLOWED_TAGS,
        clean_content_tags={"script", "style"},
        attributes=ALLOWED_ATTRIBUTES,
        url_schemes=ALLOWED_URL_SCHEMES,
        link_rel=LINK_REL,
        strip_comments=True,
    )
    if heading_offset:
        # Safe on sanitised output: headings carry no attributes there.
        html = _HEADING_RE.sub(lambda m: f"<{m[1]}h{min(6, int(m[2]) + heading_offset)}>", html)
    return html
