"""HTML pages: one jinja2 base template (templates/base.html) and one stylesheet (style.css) for every
page we write or serve: the golden, provenance, logs and bad-case reports and the arena vote page.

Pages are self-contained (the stylesheet is inlined, nothing is fetched), so a report opens from disk
or a CI artifact. Each page adds only its own few rules.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import jinja2
from markupsafe import Markup

HERE = Path(__file__).parent
STYLE = (HERE / "style.css").read_text(encoding="utf-8")


@cache
def _env() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True, undefined=jinja2.StrictUndefined
    )


def page(title: str, body: str, css: str = "", lang: str = "zh") -> str:
    """A whole page around `body`, HTML the caller already escaped; `title` is plain text; `css` the page's rules."""
    return render("base.html", title=title, body=Markup(body), css=Markup(css), lang=lang)


def render(template: str | Path, **context: object) -> str:
    """Render a template by name (templates/) or a template file elsewhere that extends "base.html"."""
    env = _env()
    t = env.get_template(template) if isinstance(template, str) else env.from_string(Path(template).read_text("utf-8"))
    context.setdefault("lang", "zh")
    context.setdefault("css", Markup(""))
    return t.render(stylesheet=Markup(STYLE), **context)
