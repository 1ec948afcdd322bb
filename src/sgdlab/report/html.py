"""One self-contained HTML page for the study report: figures embedded as base64 PNG data URIs, tables
as HTML, inline CSS, no scripts, no external assets and no links to local files."""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass
from pathlib import Path

from sgdlab.report.tables import Table

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 2rem auto; max-width: 1200px;
       padding: 0 1.2rem; color: #1d1d1f; line-height: 1.45; }
h1 { margin-bottom: .2rem; } h2 { border-bottom: 1px solid #ddd; padding-bottom: .2rem; margin-top: 2.2rem; }
.meta { color: #555; }
figure { margin: 1.2rem 0 2rem; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { color: #333; font-size: .93rem; margin-top: .4rem; }
.skip { background: #fff6e0; border-left: 4px solid #e0a800; padding: .5rem .8rem; }
table { border-collapse: collapse; font-size: .85rem; margin: .5rem 0 .3rem; }
th, td { border: 1px solid #ddd; padding: .25rem .5rem; text-align: right; white-space: nowrap; }
th { background: #f4f4f6; } td:first-child, th:first-child { text-align: left; }
tr.bad td { background: #fde8e8; } tr.warn td { background: #fff6e0; }
.tablewrap { overflow-x: auto; } .caption { color: #555; font-size: .88rem; margin-bottom: 1.2rem; }
.caveats li, .notes li { margin-bottom: .4rem; }
"""


@dataclass(frozen=True)
class FigureEntry:
    """One numbered figure of the report: either a PNG file to embed or the reason it was skipped."""

    number: int
    title: str
    caption: str
    png: Path | None = None
    skipped: str | None = None


def png_data_uri(path: Path | str) -> str:
    """``data:image/png;base64,...`` of a PNG file."""
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def _e(s: object) -> str:
    return html.escape(str(s), quote=True)


def render_table(t: Table) -> str:
    """A :class:`Table` as an HTML <table> with its title and caption."""
    head = "".join(f"<th>{_e(c)}</th>" for c in t.columns)
    body = []
    for i, row in enumerate(t.rows):
        cls = t.row_classes[i] if i < len(t.row_classes) else ""
        attr = f' class="{_e(cls)}"' if cls else ""
        body.append(f"<tr{attr}>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>")
    return (
        f'<h3>{_e(t.title)}</h3>\n<div class="tablewrap"><table><thead><tr>{head}</tr></thead><tbody>\n'
        + "\n".join(body)
        + "\n</tbody></table></div>\n"
        + (f'<p class="caption">{_e(t.caption)}</p>\n' if t.caption else "")
    )


def render_figure(f: FigureEntry) -> str:
    """A figure with its caption, or a visible note saying why it was skipped."""
    title = f"Figure {f.number}. {f.title}"
    if f.png is None:
        return (
            f'<section id="fig{f.number}"><h3>{_e(title)}</h3>\n'
            f'<p class="skip"><strong>Skipped:</strong> {_e(f.skipped or "no data")}</p></section>\n'
        )
    return (
        f'<section id="fig{f.number}"><h3>{_e(title)}</h3>\n<figure><img alt="{_e(title)}" '
        f'src="{png_data_uri(f.png)}">\n<figcaption>{_e(f.caption)}</figcaption></figure></section>\n'
    )


def render_page(
    *,
    study: str,
    overview: list[str],
    inputs: list[tuple[str, str]],
    notes: list[str],
    figures: list[FigureEntry],
    tables: list[Table],
    missing_tables: list[str],
    caveats: list[str],
    version: str,
) -> str:
    """The whole report page as a string (UTF-8)."""
    parts = [
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">',
        f"<title>sgdlab report: {_e(study)}</title><style>{CSS}</style></head><body>",
        f"<h1>Study report: {_e(study)}</h1>",
        f'<p class="meta">sgdlab {_e(version)}. ' + " ".join(_e(s) for s in overview) + "</p>",
        "<h2>Inputs</h2><ul>" + "".join(f"<li><code>{_e(n)}</code>: {_e(s)}</li>" for n, s in inputs) + "</ul>",
    ]
    if notes:
        parts.append('<h2>Notes</h2><ul class="notes">' + "".join(f"<li>{_e(n)}</li>" for n in notes) + "</ul>")
    parts.append("<h2>Figures</h2>")
    parts += [render_figure(f) for f in figures]
    parts.append("<h2>Tables</h2>")
    parts += [render_table(t) for t in tables]
    parts += [f'<p class="skip"><strong>Table skipped:</strong> {_e(m)}</p>' for m in missing_tables]
    parts.append('<h2>Caveats</h2><ul class="caveats">' + "".join(f"<li>{_e(c)}</li>" for c in caveats) + "</ul>")
    parts.append("</body></html>\n")
    return "\n".join(parts)
