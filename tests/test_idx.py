import gzip

import numpy as np
import pytest

from sgdlab.data.idx import IDXError, encode_idx, parse_idx, read_idx_file


def test_parse_hand_made_uint8_images():
    # magic 0x00000803: uint8, 3 dims; dims 2x2x3 big-endian; then 12 bytes of data
    buf = bytes([0, 0, 0x08, 3]) + (2).to_bytes(4, "big") + (2).to_bytes(4, "big") + (3).to_bytes(4, "big")
    buf += bytes(range(12))
    arr = parse_idx(buf)
    assert arr.shape == (2, 2, 3) and arr.dtype == np.uint8
    assert arr[1, 1, 2] == 11 and arr[0, 1, 0] == 3


def test_parse_hand_made_labels_and_big_endian_int32():
    labels = parse_idx(bytes([0, 0, 0x08, 1]) + (4).to_bytes(4, "big") + bytes([9, 0, 3, 7]))
    assert labels.tolist() == [9, 0, 3, 7]
    ints = parse_idx(
        bytes([0, 0, 0x0C, 1])
        + (2).to_bytes(4, "big")
        + (258).to_bytes(4, "big")
        + (-1).to_bytes(4, "big", signed=True)
    )
    assert ints.tolist() == [258, -1] and ints.dtype == np.int32


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
def test_encode_parse_round_trip(dtype):
    a = (np.arange(24).reshape(2, 3, 4) - 5).astype(dtype)
    b = parse_idx(encode_idx(a))
    assert b.dtype == a.dtype and np.array_equal(a, b)


@pytest.mark.parametrize(
    "buf, match",
    [
        (b"\x00\x00", "too short"),
        (b"\x01\x00\x08\x01" + (1).to_bytes(4, "big") + b"\x00", "bad magic"),
        (b"\x00\x00\x07\x01" + (1).to_bytes(4, "big") + b"\x00", "unknown IDX type code 0x07"),
        (b"\x00\x00\x08\x02" + (1).to_bytes(4, "big"), "truncated header"),
        (b"\x00\x00\x08\x01" + (5).to_bytes(4, "big") + b"\x00\x01", "payload is 10 bytes"),
    ],
)
def test_malformed_idx_errors_name_the_source(buf, match):
    with pytest.raises(IDXError, match=match) as info:
        parse_idx(buf, source="labels.idx")
    assert "labels.idx" in str(info.value)


def test_truncated_gzip_names_the_file(tmp_path):
    path = tmp_path / "train-labels-idx1-ubyte.gz"
    full = gzip.compress(encode_idx(np.arange(1000, dtype=np.uint8)))
    path.write_bytes(full[: len(full) // 2])
    with pytest.raises(IDXError, match="corrupt or truncated gzip") as info:
        read_idx_file(path)
    assert str(path) in str(info.value)
