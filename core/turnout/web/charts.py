"""Small charts as inline SVG, drawn on the server from numbers (the one label is escaped)."""

from __future__ import annotations

from collections.abc import Sequence

from markupsafe import Markup

WIDTH = 160
HEIGHT = 32


def bars(
    values: Sequence[float | None],
    *,
    ceiling: float | None = None,
    label: str,
    kind: str = "errors",
) -> Markup:
    """One bar per slice, scaled to ``ceiling`` (default: the largest value); a slice with no
    value (nothing ended in it) is left empty, and a zero is a thin neutral line."""
    known = [v for v in values if v is not None]
    top = ceiling if ceiling is not None else max(known, default=0.0)
    step = WIDTH / max(1, len(values))
    parts = []
    for index, value in enumerate(values):
        if value is None:
            continue
        height = 0.0 if top <= 0 else max(1.0, HEIGHT * min(value, top) / top)
        x = index * step
        zero = ' class="zero"' if value == 0 else ""
        parts.append(
            f'<rect x="{x:.1f}" y="{HEIGHT - height:.1f}" '
            f'width="{max(1.0, step - 1):.1f}" height="{height:.1f}"{zero}/>'
        )
    return Markup(  # noqa: S704 - numbers, fixed text and the escaped label
        f'<svg class="chart {kind}" viewBox="0 0 {WIDTH} {HEIGHT}" preserveAspectRatio="none" '
        f'role="img" aria-label="{_attribute(label)}">'
        f'<line x1="0" y1="{HEIGHT - 0.5}" x2="{WIDTH}" y2="{HEIGHT - 0.5}" class="axis"/>'
        + "".join(parts)
        + "</svg>"
    )


def _attribute(text: str) -> str:
    return str(Markup.escape(text))
