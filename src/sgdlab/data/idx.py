"""IDX file format (LeCun's MNIST format, also used by Fashion-MNIST), parsed with numpy.

Layout: two zero bytes, a type code, the number of dimensions ``ndim``; then ``ndim`` big-endian
uint32 sizes; then the data, big-endian, C order. Written here because it is 30 lines and the only
packages that read it pull in torchvision or a downloader.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

# type code -> big-endian numpy dtype
_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


class IDXError(ValueError):
    """A malformed IDX payload; the message names the source."""


def parse_idx(buf: bytes, source: str = "<bytes>") -> np.ndarray:
    """Parse an (uncompressed) IDX payload into a native-endian numpy array."""
    if len(buf) < 4:
        raise IDXError(f"{source}: {len(buf)} bytes is too short for an IDX header")
    if buf[0] != 0 or buf[1] != 0:
        raise IDXError(f"{source}: bad magic {buf[:2].hex()} (IDX files start with 0000)")
    code, ndim = buf[2], buf[3]
    if code not in _DTYPES:
        raise IDXError(f"{source}: unknown IDX type code 0x{code:02x}")
    header = 4 + 4 * ndim
    if len(buf) < header:
        raise IDXError(f"{source}: truncated header ({len(buf)} bytes, need {header})")
    shape = tuple(int(s) for s in np.frombuffer(buf, dtype=">u4", count=ndim, offset=4))
    dtype = _DTYPES[code]
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(buf) != expected:
        raise IDXError(f"{source}: payload is {len(buf)} bytes, the header {shape} of {dtype} needs {expected}")
    arr = np.frombuffer(buf, dtype=dtype, offset=header).reshape(shape)
    return arr.astype(dtype.newbyteorder("="), copy=True)


def encode_idx(arr: np.ndarray) -> bytes:
    """Encode an array as IDX bytes (used by tests and for round trips)."""
    for code, dt in _DTYPES.items():
        if np.dtype(arr.dtype).kind == dt.kind and np.dtype(arr.dtype).itemsize == dt.itemsize:
            header = bytes([0, 0, code, arr.ndim]) + np.asarray(arr.shape, dtype=">u4").tobytes()
            return header + np.ascontiguousarray(arr, dtype=dt).tobytes()
    raise IDXError(f"dtype {arr.dtype} has no IDX type code")


def read_idx_file(path: Path) -> np.ndarray:
    """Read an IDX file, gunzipping ``*.gz``; a truncated or corrupt gzip names the file."""
    path = Path(path)
    raw = path.read_bytes()
    if path.suffix == ".gz":
        try:
            raw = gzip.decompress(raw)
        except (EOFError, OSError, zlib.error) as exc:
            raise IDXError(f"{path}: corrupt or truncated gzip ({exc})") from exc
    return parse_idx(raw, source=str(path))
