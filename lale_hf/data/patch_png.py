"""The PNGs of one ARAS400k pair: checking an image patch without decoding it, and turning a colour mask into an
8-bit class-index PNG by exact palette match."""

import io
import struct

import numpy as np
from PIL import Image

from ..configuration_lale import ARAS400K_PALETTE
from ..image_processing_lale import color_mask_to_label_map
from .aras400k_format import IGNORE_INDEX, Aras400kError


LABEL_PNG_COMPRESS_LEVEL = 1  # label maps compress well at any level; level 1 is 2x faster than the default 6
# ARAS400k patches are 256x256. A PNG declaring more pixels than this is refused from its header, before anything is
# decoded: a few hundred KB of PNG can otherwise inflate to gigabytes per worker (a decompression bomb).
DEFAULT_MAX_IMAGE_PIXELS = 1024 * 1024

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_COLOR_TYPES = {0: "grayscale", 2: "RGB", 3: "palette", 4: "grayscale+alpha", 6: "RGBA"}


def check_png_image(data: bytes, source: str, max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> tuple[int, int]:
    """Checks that `data` is a complete 8-bit RGB PNG (signature, IHDR, chunk CRCs, IEND) of at most
    `max_image_pixels` pixels; returns (width, height).

    The size comes from the IHDR header, and chunk CRC-32s cover the compressed pixels, so this catches oversized,
    truncated and corrupt files without decoding them.
    """
    if not data.startswith(_PNG_SIGNATURE) or data[12:16] != b"IHDR" or len(data) < 33:
        raise Aras400kError(f"{source} is not a PNG file (no PNG signature and IHDR header).")
    width, height, bit_depth, color_type = struct.unpack_from(">IIBB", data, 16)
    if width * height > max_image_pixels:
        raise Aras400kError(
            f"{source} declares {width}x{height} pixels, more than the limit of {max_image_pixels} (ARAS400k patches "
            "are 256x256); refused before decoding. Pass a larger --max_image_pixels to convert bigger patches."
        )
    if color_type != 2 or bit_depth != 8:
        kind = _PNG_COLOR_TYPES.get(color_type, f"colour type {color_type}")
        raise Aras400kError(
            f"{source} is a {kind} PNG ({bit_depth} bits per channel); ARAS400k images must be 8-bit RGB."
        )
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.verify()
    except Exception as error:
        raise Aras400kError(f"{source} is a truncated or corrupt PNG ({type(error).__name__}: {error}).") from None
    return width, height


def mask_bytes_to_label_png(
    data: bytes, size: tuple[int, int], source: str, unknown_to_ignore: bool
) -> tuple[bytes, int]:
    """Decodes an ARAS colour mask, checks its size, maps colours to class indices; returns (label PNG, unknown px)."""
    try:
        with Image.open(io.BytesIO(data)) as mask:
            if mask.format != "PNG":
                raise Aras400kError(f"{source} is not a PNG file (it is {mask.format}).")
            # Size first: a mask that declares a huge size is refused before it is decoded.
            if mask.size != size:
                raise Aras400kError(
                    f"{source} is {mask.size[0]}x{mask.size[1]} but its image is {size[0]}x{size[1]}; they must match."
                )
            mask.load()
            colors = np.asarray(mask if mask.mode == "RGB" else mask.convert("RGB"))
    except Aras400kError:
        raise
    except Exception as error:
        raise Aras400kError(f"{source} is a truncated or corrupt PNG ({type(error).__name__}: {error}).") from None
    try:
        label = color_mask_to_label_map(
            colors, ARAS400K_PALETTE, unknown_to_ignore=unknown_to_ignore, ignore_index=IGNORE_INDEX, source=source
        )
    except ValueError as error:
        found = str(error).split(" Pass unknown_to_ignore")[0]
        raise Aras400kError(f"{found} Pass --unknown_to_ignore to map them to {IGNORE_INDEX} (ignore).") from None
    buffer = io.BytesIO()
    Image.fromarray(label).save(buffer, format="PNG", compress_level=LABEL_PNG_COMPRESS_LEVEL)
    return buffer.getvalue(), int(np.count_nonzero(label == IGNORE_INDEX))
