"""Streaming compression and encryption: round trips, wrong keys, tampering, bounded buffers."""

from __future__ import annotations

import io
import itertools
import os

import pytest

from lifeboat.objstore.codec import (
    Codec,
    CodecError,
    Compression,
    CorruptObjectError,
    DecodingWriter,
    WrongKeyError,
    key_id,
    load_key,
)

KEY = bytes(range(32))
DATA = b"".join(os.urandom(1000) + b"\0" * 50_000 for _ in range(60))  # ~3 MB, compressible


def encode(codec: Codec, data: bytes, chunk: int = 65536) -> bytes:
    enc = codec.encoder()
    out = [enc.update(data[i : i + chunk]) for i in range(0, len(data), chunk)]
    return b"".join(out) + enc.finish()


def decode(codec: Codec, data: bytes, chunk: int = 70001) -> bytes:
    dec = codec.decoder()
    out = [dec.update(data[i : i + chunk]) for i in range(0, len(data), chunk)]
    return b"".join(out) + dec.finish()


@pytest.mark.parametrize("compression", list(Compression))
@pytest.mark.parametrize("key", [None, KEY])
def test_round_trip(compression: Compression, key: bytes | None) -> None:
    codec = Codec(compression, 3, key)
    stored = encode(codec, DATA)
    if compression is not Compression.NONE:
        assert len(stored) < len(DATA) / 5
    assert decode(codec, stored) == DATA
    assert decode(codec, encode(codec, b"")) == b""


def test_wrong_key_is_told_apart() -> None:
    stored = encode(Codec(key=KEY), DATA)
    with pytest.raises(WrongKeyError, match="wrong key"):
        decode(Codec(key=bytes(32)), stored)
    assert key_id(KEY) != key_id(bytes(32))
    assert KEY.hex() not in key_id(KEY)


@pytest.mark.parametrize("key", [None, KEY])
def test_flipped_and_truncated_objects_fail(key: bytes | None) -> None:
    codec = Codec(key=key)
    stored = bytearray(encode(codec, DATA))
    flipped = bytes(stored[:100]) + bytes([stored[100] ^ 1]) + bytes(stored[101:])
    with pytest.raises(CodecError):
        decode(codec, flipped)
    with pytest.raises(CorruptObjectError):
        decode(codec, bytes(stored[: len(stored) // 2]))


def test_encryption_output_is_emitted_frame_by_frame() -> None:
    """Memory stays bounded: the encryptor holds at most one frame of plaintext."""
    enc = Codec(Compression.NONE, key=KEY).encoder()
    produced = sum(len(enc.update(os.urandom(256 * 1024))) for _ in range(40))  # 10 MiB in
    assert produced >= 9 * 1024 * 1024


def test_keys_load_from_hex_or_base64_and_refuse_other_lengths() -> None:
    import base64

    assert load_key(KEY.hex()) == KEY
    assert load_key(base64.b64encode(KEY).decode() + "\n") == KEY
    with pytest.raises(ValueError, match="32 bytes"):
        load_key("abcd")


@pytest.mark.parametrize("compression", [Compression.ZSTD, Compression.NONE])
@pytest.mark.parametrize("key", [None, KEY])
def test_pieces_compressed_apart_and_joined_decode_as_one(
    compression: Compression, key: bytes | None
) -> None:
    """How a WAL segment is stored: the pieces taken as it was received, joined, sealed."""
    codec = Codec(compression, 3, key)
    assert codec.joins
    cuts = [0, 1, 70_000, 1_000_000, len(DATA)]
    joined = b"".join(codec.piece(DATA[a:b], 1) for a, b in itertools.pairwise(cuts))
    stored = codec.seal(joined)
    assert decode(codec, stored) == DATA
    sink = io.BytesIO()
    writer = DecodingWriter(codec, sink)
    for i in range(0, len(stored), 65536):
        writer.write(stored[i : i + 65536])
    writer.finish()
    assert sink.getvalue() == DATA


def test_joined_zstd_pieces_cut_short_are_truncated_not_shorter() -> None:
    codec = Codec(Compression.ZSTD, 3)
    joined = codec.piece(DATA[:100_000], 1) + codec.piece(DATA[100_000:], 1)
    with pytest.raises(CorruptObjectError, match="truncated"):
        decode(codec, joined[:-5])
    assert not Codec(Compression.GZIP).joins
    with pytest.raises(ValueError, match="gzip"):
        Codec(Compression.GZIP).piece(DATA)
