"""analysis.web: the live, read-only web view of one workspace that `evolve serve` runs.

    >>> from analysis.web import create_app, WebView
    >>> app = create_app("runs/mar27")        # a Starlette app; needs the `web` extra
    >>> WebView("runs/mar27").tree("mar27")   # the same data as plain dicts

`create_app` is loaded on first use, so `WebView` works without Starlette installed.
"""

from __future__ import annotations

from .views import WebView

__all__ = ["WebView", "create_app"]


def __getattr__(name: str):
    if name == "create_app":
        from .app import create_app

        return create_app
    raise AttributeError(f"module 'analysis.web' has no attribute {name!r}")
