"""Opening image files with the reason when one cannot be used: missing, a directory, a symlink loop, too large (a
decompression bomb: more than Pillow's ``Image.MAX_IMAGE_PIXELS``), truncated, or not an image. Readers check each
row's image with :func:`image_problem` (the row is skipped and counted); ``ask --image`` fails with it as one error
line."""

from __future__ import annotations

import errno
import os
import stat
import warnings
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from more_lightning.errors import UserError


class ImageError(UserError, ValueError):
    """An image file that cannot be used; the message names the file and the reason."""


def _file_problem(path: Path) -> str | None:
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return "no such file"
    except OSError as error:
        return "a symlink loop" if error.errno == errno.ELOOP else f"cannot be read ({error.strerror})"
    if stat.S_ISDIR(mode):
        return "a directory, not a file"
    if not stat.S_ISREG(mode):
        return "not a regular file"
    if not os.access(path, os.R_OK):
        return "not readable (permissions)"
    return None


def open_image(path: str | os.PathLike) -> Image.Image:
    """The image at ``path``, decoded as RGB; :class:`ImageError` says why it cannot be."""
    path = Path(path)
    if problem := _file_problem(path):
        raise ImageError(f"image {path}: {problem}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:  # Pillow refuses more than Image.MAX_IMAGE_PIXELS (~89 M)
                return image.convert("RGB")
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ImageError(f"image {path}: too large ({error})") from None
    except UnidentifiedImageError:
        raise ImageError(f"image {path}: not an image Pillow can read") from None
    except OSError as error:
        reason = "truncated" if "truncated" in str(error) else "unreadable"
        raise ImageError(f"image {path}: {reason} ({error})") from None


def image_problem(path: str | os.PathLike) -> str | None:
    """Why the image at ``path`` cannot be used (it is decoded once to find out), or ``None``."""
    try:
        open_image(path)
    except ImageError as error:
        return str(error).removeprefix(f"image {Path(path)}: ")
    return None
