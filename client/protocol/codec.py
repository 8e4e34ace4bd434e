"""Canonical length-prefixed binary encoding used by every protocol structure.

Integers are big-endian; byte strings carry a 1-, 2- or 4-byte length prefix.
A :class:`Reader` refuses truncated input and trailing bytes, so one value has
exactly one encoding.
"""

from __future__ import annotations

import struct

from .errors import MalformedMessage


class Writer:
    """Builds one encoding; append fields in order, then :meth:`getvalue`."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def raw(self, data: bytes) -> Writer:
        self._parts.append(data)
        return self

    def u8(self, value: int) -> Writer:
        self._parts.append(struct.pack(">B", value))
        return self

    def u16(self, value: int) -> Writer:
        self._parts.append(struct.pack(">H", value))
        return self

    def u32(self, value: int) -> Writer:
        self._parts.append(struct.pack(">I", value))
        return self

    def u64(self, value: int) -> Writer:
        self._parts.append(struct.pack(">Q", value))
        return self

    def b8(self, data: bytes) -> Writer:
        if len(data) > 0xFF:
            raise ValueError(f"field of {len(data)} bytes does not fit a 1-byte length")
        return self.u8(len(data)).raw(data)

    def b16(self, data: bytes) -> Writer:
        if len(data) > 0xFFFF:
            raise ValueError(f"field of {len(data)} bytes does not fit a 2-byte length")
        return self.u16(len(data)).raw(data)

    def b32(self, data: bytes) -> Writer:
        return self.u32(len(data)).raw(data)

    def s8(self, text: str) -> Writer:
        return self.b8(text.encode("utf-8"))

    def getvalue(self) -> bytes:
        return b"".join(self._parts)


class Reader:
    """Reads one encoding; every read checks the bytes are there."""

    def __init__(self, data: bytes, what: str) -> None:
        self._data = memoryview(data)
        self._pos = 0
        self.what = what

    def _take(self, count: int) -> bytes:
        end = self._pos + count
        if end > len(self._data):
            raise MalformedMessage(
                f"{self.what} is truncated: needs {end} bytes, has {len(self._data)}"
            )
        chunk = bytes(self._data[self._pos : end])
        self._pos = end
        return chunk

    def raw(self, count: int) -> bytes:
        return self._take(count)

    def u8(self) -> int:
        return self._take(1)[0]

    def u16(self) -> int:
        return struct.unpack(">H", self._take(2))[0]

    def u32(self) -> int:
        return struct.unpack(">I", self._take(4))[0]

    def u64(self) -> int:
        return struct.unpack(">Q", self._take(8))[0]

    def b8(self) -> bytes:
        return self._take(self.u8())

    def b16(self) -> bytes:
        return self._take(self.u16())

    def b32(self) -> bytes:
        return self._take(self.u32())

    def s8(self) -> str:
        data = self.b8()
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            raise MalformedMessage(f"{self.what} holds a text field that is not UTF-8") from None

    @property
    def position(self) -> int:
        return self._pos

    def rest(self) -> bytes:
        return self._take(len(self._data) - self._pos)

    def done(self) -> None:
        extra = len(self._data) - self._pos
        if extra:
            raise MalformedMessage(f"{self.what} has {extra} unexpected trailing bytes")
