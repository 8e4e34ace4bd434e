"""Positioned reads and writes that also work where ``os.pread``/``os.pwrite`` do not (Windows)."""

from __future__ import annotations

import os

# Windows opens descriptors in text mode unless told otherwise.
BINARY = getattr(os, "O_BINARY", 0)


def open_read(path: str | os.PathLike[str]) -> int:
    return os.open(path, os.O_RDONLY | BINARY)


def open_write(path: str | os.PathLike[str]) -> int:
    """Open (create) for positioned writes; permissions follow the umask."""
    return os.open(path, os.O_RDWR | os.O_CREAT | BINARY, 0o666)


def read_at(fd: int, length: int, offset: int) -> bytes:
    """Up to ``length`` bytes at ``offset`` (fewer only at end of file)."""
    if hasattr(os, "pread"):
        data = os.pread(fd, length, offset)
        if len(data) == length or not data:
            return data
        parts, got = [data], len(data)
    else:
        os.lseek(fd, offset, os.SEEK_SET)
        parts, got = [], 0
    while got < length:
        more = (os.pread(fd, length - got, offset + got) if hasattr(os, "pread")
                else os.read(fd, length - got))
        if not more:
            break
        parts.append(more)
        got += len(more)
    return b"".join(parts)


def read_into_at(fd: int, buffer: bytearray, offset: int) -> int:
    """Fill ``buffer`` from ``offset`` (fewer bytes only at end of file); the count read.

    The sender reads every chunk into one buffer this way: a new 256 KiB ``bytes`` per
    chunk, freed a moment later, made the allocator hand pages back to the kernel and fault
    them in again (about 40,000 page faults per 256 MiB sent).
    """
    view = memoryview(buffer)
    got = 0
    while got < len(view):
        if hasattr(os, "preadv"):
            count = os.preadv(fd, [view[got:]], offset + got)
        else:
            more = read_at(fd, len(view) - got, offset + got)
            count = len(more)
            view[got:got + count] = more
        if not count:
            break
        got += count
    return got


def write_at(fd: int, data: bytes | bytearray | memoryview, offset: int) -> None:
    """Write all of ``data`` at ``offset``."""
    view = memoryview(data)
    if not hasattr(os, "pwrite"):
        os.lseek(fd, offset, os.SEEK_SET)
    while view:
        written = os.pwrite(fd, view, offset) if hasattr(os, "pwrite") else os.write(fd, view)
        view = view[written:]
        offset += written
