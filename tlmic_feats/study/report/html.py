"""The report as one self-contained HTML page: its Markdown rendered by markdown-it-py (CommonMark
with tables), its images embedded as data URIs."""

from __future__ import annotations

import base64
import mimetypes
from pathlib import Path
from urllib.parse import unquote

_STYLE = (
    "body{font-family:sans-serif;max-width:1100px;margin:2em auto;line-height:1.4}"
    "table{border-collapse:collapse;font-size:0.85em}td,th{border:1px solid #ccc;padding:3px 6px}"
    "img{max-width:100%}"
)


def markdown_to_html(text: str, base: Path) -> str:
    """``text`` (Markdown) as one HTML page with the images it links (paths relative to ``base``)
    embedded, so that it can be mailed or archived as one file.

    CommonMark with GitHub's pipe tables; raw HTML in ``text`` is escaped, and each line of a
    paragraph keeps its own line (the report writes one statement a line).

    Examples
    --------
    >>> page = markdown_to_html("# Title\\n\\n| a | b |\\n| --- | ---: |\\n| 1 | 2 |\\n", Path("."))
    >>> "<h1>Title</h1>" in page and '<td style="text-align:right">2</td>' in page
    True
    """
    from markdown_it import MarkdownIt

    md = MarkdownIt("commonmark", {"html": False, "breaks": True}).enable("table")
    tokens = md.parse(text)
    for token in tokens:
        for child in token.children or ():
            if child.type == "image":
                child.attrSet("src", _data_uri(base / unquote(str(child.attrGet("src")))))
    body = md.renderer.render(tokens, md.options, {})
    head = f"<!doctype html><html><head><meta charset='utf-8'><style>{_STYLE}</style></head><body>\n"
    return f"{head}{body}</body></html>\n"


def _data_uri(path: Path) -> str:
    kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return f"data:{kind};base64,{base64.b64encode(path.read_bytes()).decode()}"
