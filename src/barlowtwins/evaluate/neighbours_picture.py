"""The neighbours picture: each row a query photo (framed blue), then its k nearest photos for each backbone.

Drawn pixel by pixel with PIL (no plotting axes): each thumbnail is the centre square of the original photo,
placed at a position :class:`Layout` computes, with a green frame when the neighbour has the query's label,
red when it has another, grey when either has none; its cosine similarity and label are written under it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps

from barlowtwins.data import ImageSource, select_samples
from barlowtwins.data.decode import reduce_for, to_rgb

QUERY_FRAME = (31, 119, 180)
HIT_FRAMES = {True: (44, 160, 44), False: (214, 39, 40), None: (150, 150, 150)}
FONT_SIZE = 11
LINE = 14  # px per line of text


def square(image: Image.Image, side: int, name: str) -> np.ndarray:
    """The centre square of a (lazily opened) photo at ``side`` px: uint8 (side, side, 3); JPEGs decoded reduced."""
    reduce_for(image, (side, side))
    return np.asarray(ImageOps.fit(to_rgb(image, name), (side, side), Image.Resampling.BICUBIC))


def thumbnails(source: ImageSource, positions: Sequence[int], side: int) -> list[np.ndarray]:
    """Thumbnails of the original photos at ``positions`` (in ``sample_index`` order), in that order."""
    chosen = sorted(set(int(p) for p in positions))
    samples = select_samples(source, chosen, "thumbnails").samples
    squares = {p: square(samples.open(j), side, samples.ids[j]) for j, p in enumerate(chosen)}
    return [squares[int(p)] for p in positions]


class PanelPicture(NamedTuple):
    """One backbone's column group: its title lines and, per query row, the k neighbours to draw."""

    title: tuple[str, str]
    pictures: list[list[np.ndarray]]  # [query][neighbour] uint8 (side, side, 3)
    similarities: list[list[float]]
    labels: list[list[str | None]]
    hits: list[list[bool | None]]


@dataclass(frozen=True)
class Layout:
    """Where everything goes: a header line, then per panel two title lines, then one row per query."""

    thumbnail: int
    rows: int
    k: int
    panels: int
    border: int = 3
    gap: int = 4
    group_gap: int = 18
    margin: int = 8

    @property
    def cell(self) -> int:
        return self.thumbnail + 2 * self.border

    @property
    def row_height(self) -> int:
        return self.cell + 2 * LINE + self.gap

    @property
    def top(self) -> int:
        return self.margin + 3 * LINE + self.gap

    def panel_left(self, panel: int) -> int:
        """x of the first neighbour cell of ``panel``."""
        return self.margin + self.cell + self.group_gap + panel * (self.k * (self.cell + self.gap) + self.group_gap)

    def cell_origin(self, row: int, column: int, panel: int = 0) -> tuple[int, int]:
        """Top-left pixel of a cell's frame: column -1 is the query, 0..k-1 the neighbours of ``panel``."""
        x = self.margin if column < 0 else self.panel_left(panel) + column * (self.cell + self.gap)
        return x, self.top + row * self.row_height

    def thumbnail_origin(self, row: int, column: int, panel: int = 0) -> tuple[int, int]:
        x, y = self.cell_origin(row, column, panel)
        return x + self.border, y + self.border

    @property
    def size(self) -> tuple[int, int]:
        return self.panel_left(self.panels) - self.group_gap + self.margin, self.top + self.rows * self.row_height


def _fit(draw: ImageDraw.ImageDraw, text: str, width: int, font, keep_end: bool = False) -> str:
    """``text`` shortened with an ellipsis (at the start when ``keep_end``) until it fits ``width`` px."""
    while text and draw.textlength(text, font=font) > width:
        text = "…" + text[2:] if keep_end else text[:-2] + "…"
    return text


def _cell(draw, image, layout: Layout, origin, picture, colour, lines: Sequence[str], font, keep_end=False) -> None:
    """A framed thumbnail at ``origin`` with up to two lines of text under it (the last shortened at its start
    when ``keep_end``: file names)."""
    x, y = origin
    draw.rectangle((x, y, x + layout.cell - 1, y + layout.cell - 1), fill=colour)
    image.paste(Image.fromarray(picture), (x + layout.border, y + layout.border))
    for i, line in enumerate(lines):
        text = _fit(draw, line, layout.cell, font, keep_end and i == len(lines) - 1)
        draw.text((x, y + layout.cell + 1 + i * LINE), text, fill=(0, 0, 0), font=font)


def draw_neighbours(
    header: str,
    query_pictures: Sequence[np.ndarray],
    query_lines: Sequence[tuple[str, str]],
    panels: Sequence[PanelPicture],
    thumbnail: int,
) -> Image.Image:
    """The picture: ``header`` on top, each query row with its caption lines, each panel's neighbours beside."""
    k = len(panels[0].similarities[0])
    layout = Layout(thumbnail, len(query_pictures), k, len(panels))
    image = Image.new("RGB", layout.size, (255, 255, 255))
    draw = ImageDraw.Draw(image)
    font, bold = ImageFont.load_default(size=FONT_SIZE), ImageFont.load_default(size=FONT_SIZE + 1)
    draw.text((layout.margin, layout.margin), _fit(draw, header, layout.size[0], bold), fill=(0, 0, 0), font=bold)
    title_y = layout.margin + LINE + 2
    draw.text((layout.margin, title_y), "query", fill=QUERY_FRAME, font=bold)
    for p, panel in enumerate(panels):
        width = layout.k * (layout.cell + layout.gap)
        for i, line in enumerate(panel.title):
            draw.text(
                (layout.panel_left(p), title_y + i * LINE), _fit(draw, line, width, bold), fill=(0, 0, 0), font=bold
            )
    for row, (picture, lines) in enumerate(zip(query_pictures, query_lines, strict=True)):
        _cell(draw, image, layout, layout.cell_origin(row, -1), picture, QUERY_FRAME, lines, font, keep_end=True)
        for p, panel in enumerate(panels):
            for j in range(k):
                caption = (f"{panel.similarities[row][j]:.3f}", panel.labels[row][j] or "")
                origin = layout.cell_origin(row, j, p)
                colour = HIT_FRAMES[panel.hits[row][j]]
                _cell(draw, image, layout, origin, panel.pictures[row][j], colour, caption, font)
    return image


def save_png(image: Image.Image, out: str | Path) -> Path:
    """Write ``image`` as an optimised PNG."""
    image.save(out, format="PNG", optimize=True)
    return Path(out)
