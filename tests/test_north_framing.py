"""Delimiter framing: frames split over feeds, several in one feed, size bound, delimiter in body."""

from __future__ import annotations

import pytest

from agent.north.framing import Deframer, FrameTooLarge, FramingError, frame

AT = b"@@"


def test_frame_appends_delimiter():
    assert frame(b'{"code":"0"}', AT) == b'{"code":"0"}@@'
    assert frame(b"", AT) == b"@@"


@pytest.mark.parametrize(("body", "at"), [(b'{"a":"x@@y"}', 7), (b"abc@", 3), (b"@@", 0)])
def test_body_with_delimiter_is_refused(body, at):
    with pytest.raises(FramingError, match=rf"body contains the delimiter b'@@' at byte {at}"):
        frame(body, AT)


def test_empty_delimiter_and_bound_are_refused():
    with pytest.raises(FramingError, match="the delimiter is empty"):
        frame(b"x", b"")
    with pytest.raises(FramingError, match="the delimiter is empty"):
        Deframer(b"", 10)
    with pytest.raises(FramingError, match="max_frame is 0; it must be at least 1 byte"):
        Deframer(AT, 0)


def test_frame_split_across_feeds_and_delimiter_split_too():
    d = Deframer(AT, 1000)
    assert list(d.feed(b'{"code":')) == []
    assert list(d.feed(b'"0"}@')) == []
    assert d.pending == 13
    assert list(d.feed(b'@{"co')) == [b'{"code":"0"}']
    assert d.pending == 4
    assert list(d.feed(b'de":"1"}@@')) == [b'{"code":"1"}']
    assert d.pending == 0


def test_byte_by_byte():
    stream = b"".join(frame(b"frame-%d" % i, AT) for i in range(50))
    d = Deframer(AT, 100)
    got = [f for i in range(len(stream)) for f in d.feed(stream[i:i + 1])]
    assert got == [b"frame-%d" % i for i in range(50)]


def test_several_frames_in_one_feed_and_empty_frames_kept():
    d = Deframer(AT, 100)
    assert list(d.feed(b"a@@bb@@@@ccc@@dd")) == [b"a", b"bb", b"", b"ccc"]
    assert list(d.feed(b"@@")) == [b"dd"]


def test_frames_not_taken_stay_buffered():
    d = Deframer(AT, 100)
    d.feed(b"one@@")  # not iterated
    assert list(d.feed(b"two@@")) == [b"one", b"two"]


def test_open_frame_too_large():
    d = Deframer(AT, 10)
    assert list(d.feed(b"0123456789@")) == []  # 10 bytes + half a delimiter: may still be fine
    with pytest.raises(FrameTooLarge, match=r"a frame of at least 11 bytes without the delimiter "
                                            r"b'@@'; frames are at most 10 bytes"):
        list(d.feed(b"x"))


def test_complete_frame_too_large_after_good_frames():
    d = Deframer(AT, 5)
    frames = d.feed(b"ok@@0123456789@@")
    assert next(frames) == b"ok"
    with pytest.raises(FrameTooLarge, match="at least 10 bytes"):
        next(frames)


def test_frame_at_the_bound_is_fine():
    d = Deframer(AT, 5)
    assert list(d.feed(b"12345@@")) == [b"12345"]
    assert list(d.feed(b"1234")) == []
    assert list(d.feed(b"5@")) == []
    assert list(d.feed(b"@")) == [b"12345"]


def test_long_delimiter():
    d = Deframer(b"\r\n\r\n", 100)
    assert list(d.feed(b"a\r\n\r")) == []
    assert list(d.feed(b"\nb\r\n\r\nc")) == [b"a", b"b"]
