"""Rendering the report's blocks: one self-contained HTML document (figures as data URIs, inline
styles, no script, a Content-Security-Policy that forbids fetching) and a Markdown twin."""

from __future__ import annotations

import base64
import html
import re

from reports import tables
from reports.blocks import SECTIONS, TITLE, Heading, Image, Note, Paragraph, Preformatted, Table

# ---------------------------------------------------------------------------------------------
# rendering

CSS = """
body { font-family: sans-serif; max-width: 1200px; margin: 1em auto; padding: 0 1em;
       color: #222; line-height: 1.4; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; margin-top: 2em; }
table { border-collapse: collapse; margin: 0.5em 0 1em; font-size: 0.85em; }
caption { text-align: left; font-weight: bold; padding: 0.2em 0; }
th, td { border: 1px solid #ccc; padding: 0.2em 0.5em; vertical-align: top; }
th { background: #f3f3f3; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.agrees { background: #e6f4e6; } td.disagrees { background: #fbe3e3; }
td.na { background: #f4f4f4; color: #555; }
.note { background: #fff8e1; border-left: 4px solid #f0b400; padding: 0.4em 0.8em; }
figure { margin: 1em 0; } figure img { max-width: 100%; height: auto; border: 1px solid #ddd; }
figcaption { font-size: 0.85em; color: #444; }
pre { background: #f7f7f7; padding: 0.6em; overflow-x: auto; font-size: 0.8em; }
nav ul { columns: 2; } .scroll { overflow-x: auto; max-width: 100%; }
"""
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


def _e(text) -> str:
    return html.escape(str(text), quote=True)


def render_html(blocks, *, title: str = TITLE) -> str:
    """The blocks as one self-contained HTML document."""
    out = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{_e(CSP)}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(title)}</title>",
        f"<style>{CSS}</style>",
        "</head>",
        "<body>",
        f"<h1>{_e(title)}</h1>",
        "<nav><ul>",
        *(f'<li><a href="#{_e(key)}">{_e(text)}</a></li>' for key, text in SECTIONS),
        "</ul></nav>",
    ]
    open_section = False
    for block in blocks:
        if isinstance(block, Heading) and block.level == 2:
            if open_section:
                out.append("</section>")
            out.append(f'<section id="{_e(block.anchor)}">')
            open_section = True
        out.append(_html_block(block))
    if open_section:
        out.append("</section>")
    out += ["</body>", "</html>", ""]
    return "\n".join(out)


def _html_block(block) -> str:
    if isinstance(block, Heading):
        anchor = f' id="{_e(block.anchor)}-title"' if block.anchor else ""
        return f"<h{block.level}{anchor}>{_e(block.text)}</h{block.level}>"
    if isinstance(block, Paragraph):
        return f"<p>{_e(block.text)}</p>"
    if isinstance(block, Note):
        return f'<p class="note">{_e(block.text)}</p>'
    if isinstance(block, Preformatted):
        return f"<pre>{_e(block.text)}</pre>"
    if isinstance(block, Image):
        data = base64.b64encode(block.png).decode("ascii")
        return (
            f'<figure><img src="data:image/png;base64,{data}" alt="{_e(block.caption)}">'
            f"<figcaption>{_e(block.caption)}</figcaption></figure>"
        )
    if isinstance(block, Table):
        return _html_table(block)
    raise TypeError(f"unknown block {block!r}")


def _html_table(block: Table) -> str:
    frame = block.frame
    if frame.empty:
        return f'<p class="note">{_e(block.caption or "Table")}: no rows.</p>'
    numeric = tables.numeric_columns(frame)
    out = ['<div class="scroll"><table>']
    if block.caption:
        out.append(f"<caption>{_e(block.caption)}</caption>")
    header = "".join(f"<th>{_e(c)}</th>" for c in frame.columns)
    out.append(f"<thead><tr>{header}</tr></thead>")
    out.append("<tbody>")
    for values in frame.itertuples(index=False, name=None):
        cells = []
        for column, value in zip(frame.columns, values, strict=True):
            classes = []
            if column in numeric:
                classes.append("num")
            if column == block.verdict_column:
                word = tables.verdict_word(value)
                classes.append({"not applicable": "na"}.get(word, word))
            attr = f' class="{_e(" ".join(classes))}"' if classes else ""
            cells.append(f"<td{attr}>{_e(tables.format_value(value))}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</tbody></table></div>")
    return "\n".join(out)


def _m(text) -> str:
    """Text for Markdown: a '<' that would open an HTML tag or comment is written as &lt;."""
    return re.sub(r"<(?=[A-Za-z/!?])", "&lt;", str(text))


def render_markdown(blocks, *, title: str = TITLE) -> str:
    """The blocks as Markdown; figures referenced by their file names."""
    out = [f"# {_m(title)}", ""]
    out += [f"- [{text}](#{_md_anchor(text)})" for _, text in SECTIONS]
    out.append("")
    for block in blocks:
        if isinstance(block, Heading):
            out += ["#" * block.level + " " + _m(block.text), ""]
        elif isinstance(block, Paragraph):
            out += [_m(block.text), ""]
        elif isinstance(block, Note):
            out += [f"> **Note:** {_m(block.text)}", ""]
        elif isinstance(block, Preformatted):
            out += ["```json", block.text, "```", ""]
        elif isinstance(block, Image):
            alt = _m(block.caption.replace("[", "(").replace("]", ")"))
            out += [f"![{alt}]({block.name})", "", f"*{alt}*", ""]
        elif isinstance(block, Table):
            if block.caption:
                out += [f"**{_m(block.caption)}**", ""]
            rendered = tables.markdown_table(block.frame).rstrip()
            out += [rendered if len(block.frame) else "(no rows)", ""]
        else:
            raise TypeError(f"unknown block {block!r}")
    return "\n".join(out).rstrip() + "\n"


def _md_anchor(text: str) -> str:
    """GitHub's heading anchor: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^a-z0-9 _-]", "", text.lower()).replace(" ", "-")
