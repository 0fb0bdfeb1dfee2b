"""Colourised class maps with a legend, drawn with PIL alone.

PIL is already a dependency of the package, so predictions can be drawn with the base install; matplotlib (the
`viz` extra) is not needed. The functions take any label set and palette, not only the ARAS400k classes.
"""

import colorsys
from collections.abc import Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..configuration_lale import ARAS400K_LABELS, ARAS400K_PALETTE
from ..image_processing_lale import colorize_label_map


NODATA_COLOR = (0, 0, 0)


def default_palette(num_classes: int) -> list[tuple[int, int, int]]:
    """`num_classes` distinct, deterministic colours (hues spread by the golden ratio)."""
    colors = []
    for idx in range(num_classes):
        hue = (idx * 0.618033988749895) % 1.0
        red, green, blue = colorsys.hsv_to_rgb(hue, 0.65, 0.95 if idx % 2 == 0 else 0.7)
        colors.append((round(red * 255), round(green * 255), round(blue * 255)))
    return colors


def palette_for_labels(id2label: Mapping[int, str]) -> list[tuple[int, int, int]]:
    """The ARAS400k palette for the ARAS400k classes, otherwise `default_palette`."""
    labels = tuple(id2label[idx] for idx in sorted(id2label))
    if labels == ARAS400K_LABELS:
        return [tuple(color) for color in ARAS400K_PALETTE]
    return default_palette(len(labels))


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):  # Pillow without FreeType: the fixed-size bitmap font
        return ImageFont.load_default()


def render_legend(
    labels: Sequence[str],
    palette: Sequence[Sequence[int]],
    annotations: Sequence[str] | None = None,
    title: str | None = None,
    font_size: int = 14,
    background=(255, 255, 255),
) -> Image.Image:
    """A legend: one colour swatch per label, with an optional annotation (e.g. "12.5 %") after each label."""
    if len(palette) < len(labels):
        raise ValueError(f"Got {len(labels)} labels but only {len(palette)} palette colours.")
    if annotations is not None and len(annotations) != len(labels):
        raise ValueError(f"Got {len(annotations)} annotations for {len(labels)} labels.")
    font = _font(font_size)
    line_height = round(font_size * 1.6)
    swatch = font_size
    pad = font_size // 2
    texts = [
        f"{label}  {annotations[idx]}" if annotations is not None else str(label) for idx, label in enumerate(labels)
    ]
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    text_width = max([measure.textlength(text, font=font) for text in texts + ([title] if title else [])], default=0)
    rows = len(texts) + (1 if title else 0)
    width = int(pad * 3 + swatch + text_width) + 1
    height = pad * 2 + rows * line_height
    image = Image.new("RGB", (width, height), background)
    draw = ImageDraw.Draw(image)
    top = pad
    if title:
        draw.text((pad, top), title, fill=(0, 0, 0), font=font)
        top += line_height
    for idx, text in enumerate(texts):
        y = top + idx * line_height + (line_height - swatch) // 2
        draw.rectangle([pad, y, pad + swatch, y + swatch], fill=tuple(palette[idx]), outline=(60, 60, 60))
        text_y = top + idx * line_height + (line_height - font_size) // 2
        draw.text((pad * 2 + swatch, text_y), text, fill=(0, 0, 0), font=font)
    return image


def colorize_with_legend(
    label_map,
    id2label: Mapping[int, str],
    palette: Sequence[Sequence[int]] | None = None,
    annotations: Mapping[int, str] | None = None,
    title: str | None = None,
    nodata_index: int | None = 255,
    font_size: int = 14,
) -> Image.Image:
    """Colourises a class-index map and puts a legend of every class to its right.

    `annotations` maps class ids to text shown after the label (e.g. area shares). Pixels equal to
    `nodata_index` are drawn black and get a legend row only when present.
    """
    label_map = np.asarray(label_map)
    ids = sorted(id2label)
    palette = list(palette) if palette is not None else palette_for_labels(id2label)
    if len(palette) < len(ids):
        raise ValueError(f"The palette has {len(palette)} colours for {len(ids)} classes.")
    colored = colorize_label_map(label_map, palette=palette[: len(ids)], ignore_color=NODATA_COLOR)
    labels = [id2label[idx] for idx in ids]
    colors = [tuple(palette[idx]) for idx in ids]
    texts = [annotations.get(idx, "") for idx in ids] if annotations is not None else None
    if nodata_index is not None and label_map.size and (label_map == nodata_index).any():
        labels.append("no data")
        colors.append(NODATA_COLOR)
        if texts is not None:
            texts.append(annotations.get(nodata_index, ""))
    legend = render_legend(labels, colors, annotations=texts, title=title, font_size=font_size)
    canvas = Image.new("RGB", (colored.width + legend.width, max(colored.height, legend.height)), (255, 255, 255))
    canvas.paste(colored, (0, 0))
    canvas.paste(legend, (colored.width, 0))
    return canvas


__all__ = ["colorize_with_legend", "default_palette", "palette_for_labels", "render_legend"]
