"""Markdown rendered by Rich into lines that are cached per width.

One MarkdownView is one widget however long its text, so the screen's layout cost does not grow
with the length of the conversation (a Textual Markdown widget mounts a widget per block). The
text is rendered once per width and each visible line is then returned from the cache.
"""

from __future__ import annotations

from rich.markdown import Markdown as RichMarkdown
from textual.geometry import Size
from textual.strip import Strip
from textual.widget import Widget

DARK_CODE_THEME = "monokai"
LIGHT_CODE_THEME = "friendly"


class MarkdownView(Widget):
    DEFAULT_CSS = """
    MarkdownView {
        height: auto;
    }
    """

    def __init__(
        self, source: str = "", *, id: str | None = None, classes: str | None = None
    ) -> None:
        super().__init__(id=id, classes=classes)
        self.source = source
        self._cache: tuple[int, list[Strip]] | None = None  # (width, lines)

    def update(self, source: str) -> None:
        self.source = source
        self._cache = None
        self.refresh(layout=True)

    def lines(self, width: int) -> list[Strip]:
        """Return the rendered lines for `width` cells, rendering only when the width changed."""
        if self._cache is not None and self._cache[0] == width:
            return self._cache[1]
        if not self.source.strip() or width < 1:
            rendered: list[Strip] = []
        else:
            console = self.app.console
            code_theme = DARK_CODE_THEME if self.app.current_theme.dark else LIGHT_CODE_THEME
            markdown = RichMarkdown(self.source, code_theme=code_theme, hyperlinks=False)
            options = console.options.update(width=width, height=None, highlight=False)
            rendered = [
                Strip(line, width)
                for line in console.render_lines(markdown, options, style=self.rich_style)
            ]
        self._cache = (width, rendered)
        return rendered

    def get_content_width(self, container: Size, viewport: Size) -> int:
        return container.width

    def get_content_height(self, container: Size, viewport: Size, width: int) -> int:
        return len(self.lines(width))

    def render_line(self, y: int) -> Strip:
        lines = self.lines(self.content_region.width)
        if y < len(lines):
            return lines[y]
        return Strip.blank(self.content_region.width, self.rich_style)

    def notify_style_update(self) -> None:
        # A theme change alters colours, so the cached lines are stale.
        super().notify_style_update()
        self._cache = None
