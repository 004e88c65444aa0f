"""One self-contained HTML page (report.html): a table, PNG plots embedded as base64 data, and text
sections (configs, mappings, versions). Readable offline: no external URL, script or style sheet; every
piece of text is HTML-escaped."""
from __future__ import annotations

import base64
import html
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Sequence

STYLE = """
body { font-family: sans-serif; margin: 2em auto; max-width: 1200px; color: #222; line-height: 1.4; }
table { border-collapse: collapse; font-size: 0.85em; margin: 1em 0; }
th, td { border: 1px solid #bbb; padding: 0.25em 0.5em; text-align: right; vertical-align: top; }
th { background: #eee; } td:first-child, th:first-child { text-align: left; }
figure { margin: 1.5em 0; } img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-size: 0.85em; color: #555; }
pre { background: #f6f6f6; padding: 0.8em; overflow-x: auto; font-size: 0.8em; }
details { margin: 0.6em 0; } summary { cursor: pointer; font-weight: bold; }
"""


def versions(packages: Sequence[str] = ("hwsim", "torch", "numpy", "matplotlib", "pyyaml")) -> dict[str, str]:
    """Python, the platform, installed versions of ``packages`` and the git commit of the working
    directory (when it is a git checkout)."""
    found = {"python": sys.version.split()[0], "platform": platform.platform()}
    for name in packages:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    try:
        done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, timeout=10)
        if done.returncode == 0:
            found["git commit"] = done.stdout.strip() + (" (with uncommitted changes)" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return found


def table_html(rows: Sequence[dict], columns: Sequence[tuple[str, str]]) -> str:
    """An HTML table; ``columns`` are (key, header) pairs, cells are ``str()`` of ``rows``' values
    (formatted by the caller)."""
    head = "".join(f"<th>{html.escape(h)}</th>" for _, h in columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(r.get(k, '')))}</td>" for k, _ in columns) + "</tr>\n"
                   for r in rows)
    return f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}</tbody>\n</table>"


def figure_html(path: Path, caption: str) -> str:
    """A PNG file embedded as a data: URL, with its caption."""
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return (f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def render(title: str, summary: str, table: str, notes: str, figures: Sequence[tuple[Path, str]],
           sections: Sequence[tuple[str, str]]) -> str:
    """The page: ``title``, a ``summary`` paragraph, ``table`` (HTML from :func:`table_html`), ``notes``
    (plain text), the (PNG path, caption) ``figures`` and (heading, plain text) ``sections``, each folded."""
    parts = [f"<h1>{html.escape(title)}</h1>", f"<p>{html.escape(summary)}</p>", table,
             f"<pre>{html.escape(notes)}</pre>", "<h2>Plots</h2>"]
    parts += [figure_html(path, caption) for path, caption in figures]
    parts.append("<h2>Configuration, mapping and versions</h2>")
    parts += [f"<details><summary>{html.escape(heading)}</summary><pre>{html.escape(text)}</pre></details>"
              for heading, text in sections]
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>{html.escape(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n"
            + "\n".join(parts) + "\n</body>\n</html>\n")
