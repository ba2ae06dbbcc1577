"""Delimiter framing for the TCP uplink: every frame, both directions, ends with a delimiter
such as b"@@" (Netty's DelimiterBasedFrameDecoder on the platform side)."""

from __future__ import annotations

from collections.abc import Iterator


class FramingError(ValueError):
    """A body that cannot be framed, or a stream that cannot be split."""


class FrameTooLarge(FramingError):
    """A frame grew past the size bound; the stream is out of step: close the connection."""


def frame(body: bytes, delimiter: bytes) -> bytes:
    """body + delimiter; refuses a body in which the delimiter would be found early (inside it,
    or formed by its tail and the delimiter, e.g. b"x@" + b"@@")."""
    if not delimiter:
        raise FramingError("the delimiter is empty")
    framed = body + delimiter
    at = framed.find(delimiter)
    if at != len(body):
        raise FramingError(f"the {len(body)}-byte body contains the delimiter {delimiter!r} at "
                           f"byte {at}; the far end would cut the frame there")
    return framed


class Deframer:
    """Splits a byte stream into frames (without their delimiter); empty frames are kept.

    `feed` buffers the bytes at once and returns an iterator over the frames now complete
    (frames not taken out stay buffered for the next feed). A frame longer than max_frame
    raises FrameTooLarge: a complete one when it is reached, an open one as soon as more than
    max_frame + len(delimiter) - 1 bytes wait without a delimiter (the buffer's bound).
    """

    def __init__(self, delimiter: bytes, max_frame: int):
        if not delimiter:
            raise FramingError("the delimiter is empty")
        if max_frame < 1:
            raise FramingError(f"max_frame is {max_frame}; it must be at least 1 byte")
        self._delimiter = delimiter
        self._max = max_frame
        self._buf = bytearray()
        self._scanned = 0  # bytes of _buf known to hold no delimiter start

    @property
    def pending(self) -> int:
        """Bytes buffered that are not yet a whole frame."""
        return len(self._buf)

    def feed(self, data: bytes) -> Iterator[bytes]:
        self._buf += data
        return self._frames()

    def _frames(self) -> Iterator[bytes]:
        buf, delimiter = self._buf, self._delimiter
        while True:
            at = buf.find(delimiter, self._scanned)
            if at < 0:
                break
            if at > self._max:
                raise self._too_large(at)
            body = bytes(buf[:at])
            del buf[:at + len(delimiter)]
            self._scanned = 0
            yield body
        self._scanned = max(0, len(buf) - len(delimiter) + 1)
        if self._scanned > self._max:
            raise self._too_large(self._scanned)

    def _too_large(self, size: int) -> FrameTooLarge:
        return FrameTooLarge(f"a frame of at least {size} bytes without the delimiter "
                             f"{self._delimiter!r}; frames are at most {self._max} bytes")
