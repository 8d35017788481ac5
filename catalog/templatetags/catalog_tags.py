"""Template helpers for catalog pages: Markdown, tensor shapes, latency figures and search URLs."""

from __future__ import annotations

from typing import Any

from django import template
from django.http import QueryDict
from django.utils.safestring import SafeString

from catalog.markdown import markdown_render
from catalog.selectors import FACETS

register = template.Library()


@register.filter(name="markdown")
def markdown_filter(text: str | None, heading_offset: int = 0) -> SafeString:
    """``{{ listing.model_card|markdown:2 }}``: sanitised HTML, headings demoted by the argument."""
    return markdown_render(text, heading_offset=int(heading_offset or 0))


@register.filter
def tensor_shape(shape: Any) -> str:
    """``[-1, 3, 224, 224]`` → ``[N, 3, 224, 224]``: dynamic dimensions (-1, None or a name) read as symbols."""
    if shape is None:
        return "—"
    if not isinstance(shape, list | tuple):
        return str(shape)
    if not shape:
        return "scalar"
    dims = []
    for i, dim in enumerate(shape):
        if dim is None or (isinstance(dim, int) and dim < 0):
            dims.append("N" if i == 0 else "?")
        else:
            dims.append(str(dim))
    return "[" + ", ".join(dims) + "]"


@register.filter
def ms(value: Any) -> str:
    """A latency in milliseconds: ``0.42 ms``, ``12.3 ms``, ``1,250 ms``; a dash when unknown."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return "—"
    if number < 1:
        return f"{number:.2f} ms"
    if number < 100:
        return f"{number:.1f} ms"
    return f"{number:,.0f} ms"


@register.filter
def opsets(value: Any) -> str:
    """Operator sets as ONNX reports them (``{"": 17, "ai.onnx.ml": 3}`` or a list of dicts).

    Renders ``ai.onnx 17, ai.onnx.ml 3``.
    """
    if isinstance(value, dict):
        items = list(value.items())
    elif isinstance(value, list | tuple):
        items = []
        for entry in value:
            if isinstance(entry, dict):
                items.append((entry.get("domain", ""), entry.get("version", "")))
            else:
                items.append(("", entry))
    elif value in (None, ""):
        return "—"
    else:
        return str(value)
    return ", ".join(f"{domain or 'ai.onnx'} {version}" for domain, version in items) or "—"


@register.simple_tag(takes_context=True)
def query_replace(context: dict[str, Any], **changes: Any) -> str:
    """The current query string with some parameters replaced (``None`` removes one), e.g. for pagination."""
    request = context.get("request")
    params = request.GET.copy() if request is not None else QueryDict(mutable=True)
    for key, value in changes.items():
        if value is None or value == "":
            params.pop(key, None)
        else:
            params[key] = str(value)
    encoded = params.urlencode()
    return f"?{encoded}" if encoded else "?"


@register.simple_tag(takes_context=True)
def query_without(context: dict[str, Any], key: str, value: str | None = None) -> str:
    """The current query string without one value of a (multi-valued) parameter, and back on page 1."""
    request = context.get("request")
    params = request.GET.copy() if request is not None else QueryDict(mutable=True)
    params.pop("page", None)
    if value is None:
        params.pop(key, None)
    else:
        params.setlist(key, [v for v in params.getlist(key) if v != value])
    encoded = params.urlencode()
    return f"?{encoded}" if encoded else "?"


_LABELS: dict[str, dict[str, str]] = {name: dict(choices.choices) for name, choices in FACETS.items()}


@register.filter
def facet_label(value: str, facet: str) -> str:
    """``"healthcare"|facet_label:"domain"`` → ``Healthcare``; a plain dict lookup (cards render many)."""
    return _LABELS.get(facet, {}).get(value, value)
