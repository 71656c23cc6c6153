"""Streaming compression and encryption, bounded in memory whatever the stream's length.

What is stored is `encrypt(compress(raw))`. Both layers work chunk by chunk, so a backup of any
size passes through a few MiB of buffers. Encryption is AES-256-GCM in frames of at most
`FRAME_BYTES` of plaintext: each frame has its own nonce (a per-object random prefix and the
frame's counter) and authenticates the header, its counter and whether it is the last frame,
so a reordered, truncated or extended object fails to decrypt instead of restoring wrong data.

The key never travels with the data: a manifest records only `key_id`, a one-way fingerprint,
which tells "wrong key" apart from "corrupted object".
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import struct
import zlib
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, BinaryIO, Protocol

import zstandard

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

MAGIC = b"LBE1"
FRAME_BYTES = 1024 * 1024
_HEADER = struct.Struct(">4sI8s")  # magic, frame size, nonce prefix
_FRAME = struct.Struct(">IB")  # ciphertext length (with tag), last-frame flag
_TAG = 16


class Compression(StrEnum):
    ZSTD = "zstd"
    GZIP = "gzip"
    NONE = "none"


class CodecError(ValueError):
    """The stored bytes cannot be turned back into what was written."""


class WrongKeyError(CodecError):
    pass


class CorruptObjectError(CodecError):
    pass


Data = bytes | bytearray | memoryview  # what a stage reads: a reused buffer too


class Transform(Protocol):
    def update(self, data: Data) -> bytes: ...

    def finish(self) -> bytes: ...


def load_key(text: str) -> bytes:
    """A 256-bit key from its base64 or hex spelling (the env var or the file's content)."""
    text = text.strip()
    for decode in (bytes.fromhex, base64.b64decode):
        try:
            key = decode(text)
        except (ValueError, binascii.Error):
            continue
        if len(key) == 32:
            return key
    raise ValueError("the encryption key must be 32 bytes, written as 64 hex digits or base64")


def key_id(key: bytes) -> str:
    """A fingerprint of the key, safe to publish: it names the key without revealing it."""
    return hashlib.sha256(b"lifeboat-key-id:" + key).hexdigest()[:16]


@dataclass(frozen=True)
class Codec:
    """How an object is stored: its compression, and the key it is encrypted with if any."""

    compression: Compression = Compression.ZSTD
    level: int = 3
    key: bytes | None = None
    threads: int = 0  # zstd worker threads; 0 compresses on the calling thread

    @property
    def encrypted(self) -> bool:
        return self.key is not None

    @property
    def suffix(self) -> str:
        ext = {Compression.ZSTD: ".zst", Compression.GZIP: ".gz", Compression.NONE: ""}
        return ext[self.compression] + (".enc" if self.encrypted else "")

    def encoder(self) -> Transform:
        stages: list[Transform] = [_compressor(self)]
        if self.key is not None:
            stages.append(Encryptor(self.key))
        return Chain(stages)

    def decoder(self) -> Transform:
        stages: list[Transform] = []
        if self.key is not None:
            stages.append(Decryptor(self.key))
        stages.append(_decompressor(self.compression))
        return Chain(stages)

    @property
    def joins(self) -> bool:
        """Whether pieces compressed apart (`piece`) and joined decode as one stream: zstd
        frames do (the format allows any number), uncompressed bytes do; gzip is one member."""
        return self.compression in (Compression.ZSTD, Compression.NONE)

    def piece(self, data: bytes, level: int | None = None) -> bytes:
        """`data` compressed on its own, unencrypted: a WAL segment is stored as the pieces
        taken while it was received, joined, then `seal`ed."""
        match self.compression:
            case Compression.ZSTD:
                cctx = zstandard.ZstdCompressor(
                    level=self.level if level is None else level, write_checksum=True
                )
                return cctx.compress(data)
            case Compression.NONE:
                return data
            case Compression.GZIP:
                raise ValueError("gzip members do not join: encode the whole object")

    def seal(self, compressed: bytes) -> bytes:
        """Joined pieces as stored: encrypted as one stream (a fresh nonce prefix each time)."""
        if self.key is None:
            return compressed
        encryptor = Encryptor(self.key)
        return encryptor.update(compressed) + encryptor.finish()


class Chain:
    def __init__(self, stages: list[Transform]) -> None:
        self._stages = stages

    def update(self, data: Data) -> bytes:
        out: Data = data
        for stage in self._stages:
            out = stage.update(out)
        return out if isinstance(out, bytes) else bytes(out)

    def finish(self) -> bytes:
        out = b""
        for stage in self._stages:
            out = stage.update(out) + stage.finish()
        return out


class _Identity:
    def update(self, data: Data) -> bytes:
        # A copy unless it is bytes already: the caller may reuse its buffer.
        return data if isinstance(data, bytes) else bytes(data)

    def finish(self) -> bytes:
        return b""


class _Zstd:
    def __init__(self, level: int, threads: int) -> None:
        # The checksum lets decompression alone catch a corrupted unencrypted object.
        cctx = zstandard.ZstdCompressor(level=level, threads=threads, write_checksum=True)
        self._obj = cctx.compressobj()

    def update(self, data: Data) -> bytes:
        return self._obj.compress(data)

    def finish(self) -> bytes:
        return self._obj.flush()


class _Unzstd:
    """Every frame of the stream, one after the other (WAL segments are several), and a
    stream that ends inside a frame is truncated."""

    def __init__(self) -> None:
        self._dctx = zstandard.ZstdDecompressor()
        self._obj = self._dctx.decompressobj()

    def update(self, data: Data) -> bytes:
        out = bytearray()
        while data:
            if self._obj.eof:
                self._obj = self._dctx.decompressobj()
            try:
                out += self._obj.decompress(data)
            except zstandard.ZstdError as exc:
                raise CorruptObjectError(f"zstd: {exc}") from None
            data = self._obj.unused_data if self._obj.eof else b""
        return bytes(out)

    def finish(self) -> bytes:
        if not self._obj.eof:
            raise CorruptObjectError("zstd: the stream ends before its last frame (truncated)")
        return b""


class _Gzip:
    def __init__(self, level: int) -> None:
        self._obj = zlib.compressobj(level, zlib.DEFLATED, 31)

    def update(self, data: Data) -> bytes:
        return self._obj.compress(data)

    def finish(self) -> bytes:
        return self._obj.flush()


class _Gunzip:
    def __init__(self) -> None:
        self._obj = zlib.decompressobj(31)

    def update(self, data: Data) -> bytes:
        try:
            return self._obj.decompress(data)
        except zlib.error as exc:
            raise CorruptObjectError(f"gzip: {exc}") from None

    def finish(self) -> bytes:
        if not self._obj.eof:
            raise CorruptObjectError("gzip: the stream ends before its end (truncated)")
        return self._obj.flush()


def _compressor(codec: Codec) -> Transform:
    match codec.compression:
        case Compression.ZSTD:
            return _Zstd(codec.level, codec.threads)
        case Compression.GZIP:
            return _Gzip(max(1, min(codec.level, 9)))
        case Compression.NONE:
            return _Identity()


def _decompressor(compression: Compression) -> Transform:
    match compression:
        case Compression.ZSTD:
            return _Unzstd()
        case Compression.GZIP:
            return _Gunzip()
        case Compression.NONE:
            return _Identity()


def _aead(key: bytes) -> AESGCM:
    # Imported on first use: cryptography costs a worker ~6 MB that only encrypted backups use.
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    return AESGCM(key)


class Encryptor:
    def __init__(self, key: bytes, frame_bytes: int = FRAME_BYTES) -> None:
        self._aead = _aead(key)
        self._frame = frame_bytes
        self._prefix = os.urandom(8)
        self._header = _HEADER.pack(MAGIC, frame_bytes, self._prefix)
        self._counter = 0
        self._pending = bytearray()
        self._started = False

    def _seal(self, plain: bytes, last: bool) -> bytes:
        nonce = self._prefix + struct.pack(">I", self._counter)
        aad = self._header + struct.pack(">IB", self._counter, last)
        self._counter += 1
        sealed = self._aead.encrypt(nonce, plain, aad)
        return _FRAME.pack(len(sealed), last) + sealed

    def update(self, data: Data) -> bytes:
        out = bytearray()
        if not self._started:
            out += self._header
            self._started = True
        self._pending += data
        # Keep at least one byte back: the last frame must be marked as last.
        while len(self._pending) > self._frame:
            out += self._seal(bytes(self._pending[: self._frame]), False)
            del self._pending[: self._frame]
        return bytes(out)

    def finish(self) -> bytes:
        head = b"" if self._started else self._header
        self._started = True
        last = self._seal(bytes(self._pending), True)
        self._pending.clear()
        return head + last


class Decryptor:
    def __init__(self, key: bytes) -> None:
        self._aead = _aead(key)
        self._buf = bytearray()
        self._header: bytes | None = None
        self._prefix = b""
        self._frame = 0
        self._counter = 0
        self._ended = False

    def update(self, data: Data) -> bytes:
        from cryptography.exceptions import InvalidTag

        self._buf += data
        out = bytearray()
        if self._header is None:
            if len(self._buf) < _HEADER.size:
                return b""
            magic, frame, prefix = _HEADER.unpack_from(self._buf)
            if magic != MAGIC:
                raise CorruptObjectError("not an encrypted Lifeboat object (bad header)")
            self._header = bytes(self._buf[: _HEADER.size])
            self._prefix, self._frame = prefix, frame
            del self._buf[: _HEADER.size]
        while len(self._buf) >= _FRAME.size:
            length, last = _FRAME.unpack_from(self._buf)
            if length > self._frame + _TAG:
                raise CorruptObjectError("frame longer than the header allows")
            if len(self._buf) < _FRAME.size + length:
                break
            if self._ended:
                raise CorruptObjectError("data after the last frame")
            sealed = bytes(self._buf[_FRAME.size : _FRAME.size + length])
            del self._buf[: _FRAME.size + length]
            nonce = self._prefix + struct.pack(">I", self._counter)
            aad = self._header + struct.pack(">IB", self._counter, last)
            try:
                out += self._aead.decrypt(nonce, sealed, aad)
            except InvalidTag:
                raise WrongKeyError(
                    f"frame {self._counter} does not authenticate: wrong key or corrupted object"
                ) from None
            self._counter += 1
            self._ended = bool(last)
        if self._ended and self._buf:
            raise CorruptObjectError("data after the last frame")
        return bytes(out)

    def finish(self) -> bytes:
        if not self._ended:
            raise CorruptObjectError("encrypted stream ends before its last frame (truncated)")
        return b""


class DecodingWriter:
    """Decodes stored bytes straight into a blocking file (a pipe into tar or pg_restore),
    in bounded pieces: a highly compressed chunk (a preallocated WAL segment is zeros) never
    becomes one huge buffer. Truncation of a zstd stream is caught by the object's sha256,
    which the caller checks at the end of the download."""

    def __init__(self, codec: Codec, out: BinaryIO, write_size: int = 1024 * 1024) -> None:
        self._decrypt: Transform | None = Decryptor(codec.key) if codec.key else None
        self._out = out
        self._compression = codec.compression
        self._zstd = (
            zstandard.ZstdDecompressor().stream_writer(out, write_size=write_size, closefd=False)
            if codec.compression is Compression.ZSTD
            else None
        )
        self._gzip = zlib.decompressobj(31) if codec.compression is Compression.GZIP else None
        self._write_size = write_size

    def write(self, data: bytes) -> None:
        if self._decrypt is not None:
            data = self._decrypt.update(data)
        self._plain(data)

    def _plain(self, data: bytes) -> None:
        if not data:
            return
        if self._zstd is not None:
            try:
                self._zstd.write(data)
            except zstandard.ZstdError as exc:
                raise CorruptObjectError(f"zstd: {exc}") from None
        elif self._gzip is not None:
            try:
                out = self._gzip.decompress(data, self._write_size)
                self._out.write(out)
                while self._gzip.unconsumed_tail:
                    out = self._gzip.decompress(self._gzip.unconsumed_tail, self._write_size)
                    self._out.write(out)
            except zlib.error as exc:
                raise CorruptObjectError(f"gzip: {exc}") from None
        else:
            self._out.write(data)

    def finish(self) -> None:
        if self._decrypt is not None:
            self._plain(self._decrypt.finish())
        if self._gzip is not None:
            self._out.write(self._gzip.flush())
            if not self._gzip.eof:
                raise CorruptObjectError("gzip: the stream ends before its end (truncated)")
        self._out.flush()
