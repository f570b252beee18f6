"""`anytalker app`: the Gradio page over the generation API (`anytalker.pipeline.runner`).

`binding` holds the page's pure logic (faces, slots, which track drives which face) and needs no
Gradio; `ui.build_app` builds the page. Gradio is imported only when `build_app` is used.
"""

__all__ = ["build_app"]


def __getattr__(name):
    if name == "build_app":
        from .ui import build_app

        return build_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
