"""The lab's colors, one palette for every figure, and the helper that gives a color transparency."""

from plotly.colors import hex_to_rgb, qualitative, unlabel_rgb

PALETTE = qualitative.D3 + qualitative.Set2  # D3 first: the diagrams use its first colors


def rgba(color: str, alpha: float) -> str:
    """`#rrggbb` or `rgb(r, g, b)` with an alpha channel."""
    r, g, b = hex_to_rgb(color) if color.startswith("#") else unlabel_rgb(color)
    return f"rgba({int(r)},{int(g)},{int(b)},{alpha})"
