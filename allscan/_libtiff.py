"""Keep libtiff from printing to the terminal.

Pillow decodes compressed TIFFs with libtiff, whose default warning and error handlers print
straight to the process's stderr ("Using code not yet in table.", "TIFFFillStrip: Invalid strip
byte count …"), across a live progress display. Pillow does not replace them, so this module
does, on the copy of libtiff that Pillow loaded: the failure still reaches Pillow as an error
and becomes the image's error row; only the C library's own printing stops.
"""

import ctypes
import functools
from pathlib import Path


def _loaded_libtiff() -> Path | None:
    """The libtiff shared library mapped into this process (Linux), after Pillow's decoders load."""
    from PIL import Image

    Image.init()
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return None
    for line in maps.splitlines():
        name = line.rsplit(None, 1)[-1] if line.strip() else ""
        if "libtiff" in Path(name).name and ".so" in name:
            return Path(name)
    return None


@functools.cache
def silence() -> bool:
    """Replace libtiff's printing warning and error handlers by none; True when done (once a process)."""
    path = _loaded_libtiff()
    if path is None:
        return False
    try:
        library = ctypes.CDLL(str(path))
        for setter in (library.TIFFSetWarningHandler, library.TIFFSetErrorHandler):
            setter.restype = ctypes.c_void_p
            setter.argtypes = [ctypes.c_void_p]
            setter(None)
    except (OSError, AttributeError):
        return False
    return True
