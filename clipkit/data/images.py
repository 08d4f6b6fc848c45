"""Safe image decoding: the one decoder every reader of image files uses (training, evaluation, probes)."""
from __future__ import annotations

import io
import warnings
from pathlib import Path

from PIL import Image, UnidentifiedImageError

MAX_IMAGE_PIXELS = 89_478_485  # PIL's own decompression-bomb limit (~ 9459 x 9459): larger is refused


class BadImageError(ValueError):
    """A file that is not a usable image: missing, empty, truncated, corrupt, not an image, or a bomb."""


def safe_open_image(src, max_pixels: int = MAX_IMAGE_PIXELS, mode: str | None = "RGB") -> Image.Image:
    """Decode an image fully, refusing anything that is not a sound image of reasonable size.

    src: a path, bytes, or a binary file object. Raises BadImageError naming the source and the
    reason for: a missing or zero-byte file, a file that is not an image, a truncated or corrupt
    one (decoded here, so it fails now and not later inside a transform), and a decompression
    bomb (more than `max_pixels` pixels: refused from the header, before anything is decoded).
    Returns a loaded PIL image converted to `mode` (None keeps the file's mode).
    """
    name = str(src) if isinstance(src, (str, Path)) else getattr(src, "name", "<bytes>")
    if isinstance(src, (str, Path)):
        try:
            data = Path(src).read_bytes()
        except OSError as e:
            raise BadImageError(f"{name}: cannot read ({type(e).__name__}: {e.strerror or e})") from e
    elif isinstance(src, (bytes, bytearray, memoryview)):
        data = bytes(src)
    else:
        data = src.read()
    if not data:
        raise BadImageError(f"{name}: empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            # PIL warns above MAX_IMAGE_PIXELS and raises above twice that; we refuse at our limit
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            w, h = img.size
            if w * h > max_pixels:
                raise BadImageError(f"{name}: {w}x{h} = {w * h:,} pixels is over the limit of "
                                    f"{max_pixels:,}: refused as a possible decompression bomb")
            if w == 0 or h == 0:
                raise BadImageError(f"{name}: image has no pixels ({w}x{h})")
            img.load()
    except BadImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise BadImageError(f"{name}: refused as a possible decompression bomb ({e})") from e
    except UnidentifiedImageError as e:
        raise BadImageError(f"{name}: not an image (no known image format, {len(data)} bytes)") from e
    except Exception as e:  # noqa: BLE001  (PIL raises OSError, SyntaxError, ValueError, EOFError...)
        raise BadImageError(f"{name}: corrupt or truncated image ({type(e).__name__}: {e})") from e
    return img.convert(mode) if mode and img.mode != mode else img


