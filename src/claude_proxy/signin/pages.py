"""The few HTML pages a person sees during sign-in. Every value is escaped; no script."""

from __future__ import annotations

from html import escape

_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:34rem;margin:4rem auto;
padding:0 1rem;color:#1f2328;line-height:1.5}
h1{font-size:1.4rem}
.code{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:1.6rem;letter-spacing:.15em}
input{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:1.4rem;letter-spacing:.1em;
padding:.4rem;width:12rem;text-transform:uppercase}
button{font-size:1rem;padding:.5rem 1.2rem;margin-top:1rem;cursor:pointer}
.error{color:#b42318}
.muted{color:#59636e;font-size:.9rem}
"""


def page(title: str, body_html: str) -> str:
    """A whole page around trusted `body_html` (callers escape what they put in it)."""
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        '<meta name=viewport content="width=device-width,initial-scale=1">'
        f"<title>{escape(title)} · claude-proxy</title><style>{_STYLE}</style></head>"
        f"<body><h1>{escape(title)}</h1>{body_html}</body></html>"
    )


def device_confirm(user_code: str, error: str | None = None) -> str:
    """The verification page: the code is shown and confirmed by a click, never sent on
    its own (a link alone must not sign anybody in)."""
    problem = f"<p class=error role=alert>{escape(error)}</p>" if error else ""
    return page(
        "Sign in to Claude",
        f"{problem}"
        "<p>Check that this code is the one shown in your terminal, then continue to "
        "your company's sign-in.</p>"
        '<form method=post action="/device">'
        "<label for=user_code class=muted>Code</label><br>"
        f'<input id=user_code name=user_code value="{escape(user_code)}" maxlength=16 '
        "autocomplete=off autocapitalize=characters spellcheck=false required><br>"
        "<button type=submit>Continue</button></form>"
        "<p class=muted>If you did not just run <code>/login</code> or "
        "<code>claude-proxy login</code>, close this page: someone may be trying to "
        "sign in as you.</p>",
    )


def message(title: str, text: str, detail: str | None = None) -> str:
    extra = f"<p class=muted>{escape(detail)}</p>" if detail else ""
    return page(title, f"<p>{escape(text)}</p>{extra}")
