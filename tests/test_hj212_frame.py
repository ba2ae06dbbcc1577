"""HJ 212-2017: the published sample frames byte for byte, CRC and header errors, data segments,
PNUM/PNO splitting and joining, replies."""

from __future__ import annotations

import random
from datetime import datetime

import pytest

from agent.north.framing import Deframer
from agent.north.hj212.frame import MAX_FRAME, HJ212Error, crc16_hj212, pack, unpack
from agent.north.hj212.segment import (
    CN_DATA_REPLY,
    Cp,
    Reply,
    Segment,
    format_data_time,
    format_qn,
    join,
    make_flag,
    number_text,
    parse_reply,
    realtime_cp,
    split,
)

# Verbatim from chenqi92/alltobs-hj212 README.md (commit 298ed3b9d1102a12910b1a76f75edaf7d64beab1),
# where they are Java string literals ending in the escapes \r\n; the README writes the CRC in
# lower-case hex.
SAMPLE_0109 = (b"##0109ST=32;CN=2011;PW=123456;MN=NJGDKYYC202101q0001w0001;CP=&&DataTime="
               b"20210305003817000;ele01-Rtd=1;ele02-Rtd=0&&8c41\r\n")
SAMPLE_0435 = (b"##0435QN=20210301111100112;ST=21;CN=2011;PW=123456;MN=ZLDSZ20210127;Flag=8;"
               b"CP=&&DataTime=20210301111100;w01001-Rtd=8.33,w01001-Flag=N;w01009-Rtd=10.15,"
               b"w01009-Flag=N;w01010-Rtd=9.7,w01010-Flag=N;w01014-Rtd=1425,w01014-Flag=N;"
               b"w01003-Rtd=13.10,w01003-Flag=N;w21011-Rtd=0,w21011-Flag=N;w21001-Rtd=3.563168,"
               b"w21001-Flag=N;w21003-Rtd=0.09055002,w21003-Flag=N;w01019-Rtd=4.102818,"
               b"w01019-Flag=N;w01008-Rtd=0,w01008-Flag=N;w23002-Rtd=0,w23002-Flag=N&&7d00\r\n")


def segment_of(sample: bytes) -> str:
    return sample[6:-6].decode("ascii")


def upper_crc(sample: bytes) -> bytes:
    return sample[:-6] + sample[-6:-2].upper() + sample[-2:]


@pytest.mark.parametrize(("sample", "length", "crc"), [(SAMPLE_0109, 109, 0x8C41),
                                                       (SAMPLE_0435, 435, 0x7D00)])
def test_published_samples(sample, length, crc):
    segment = segment_of(sample)
    assert len(segment) == length
    assert crc16_hj212(segment.encode()) == crc
    assert unpack(sample) == segment
    assert pack(segment) == upper_crc(sample)  # byte for byte but for the hex digits' case
    assert Segment.parse(segment).text() == segment


def test_crc_is_not_modbus():
    def modbus(data: bytes) -> int:
        crc = 0xFFFF
        for byte in data:
            crc ^= byte
            for _ in range(8):
                crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
        return crc

    data = segment_of(SAMPLE_0109).encode()
    assert modbus(data) != crc16_hj212(data)


def test_build_sample_0109_from_parts():
    seg = Segment(st="32", cn="2011", pw="123456", mn="NJGDKYYC202101q0001w0001",
                  cp=realtime_cp("20210305003817000", [("ele01", 1, None), ("ele02", 0, None)]))
    assert pack(seg.text()) == upper_crc(SAMPLE_0109)


def test_build_sample_0435_from_parts():
    items = [("w01001", "8.33"), ("w01009", "10.15"), ("w01010", 9.7), ("w01014", 1425),
             ("w01003", "13.10"), ("w21011", 0), ("w21001", 3.563168), ("w21003", 0.09055002),
             ("w01019", 4.102818), ("w01008", 0), ("w23002", 0)]
    seg = Segment(qn=format_qn(datetime(2021, 3, 1, 11, 11, 0, 112_999)), st="21", cn="2011",
                  pw="123456", mn="ZLDSZ20210127", flag=8,
                  cp=realtime_cp(format_data_time(datetime(2021, 3, 1, 11, 11)),
                                 [(code, value, "N") for code, value in items]))
    assert pack(seg.text()) == upper_crc(SAMPLE_0435)


def test_parse_sample_0435():
    seg = Segment.parse(segment_of(SAMPLE_0435))
    assert (seg.qn, seg.st, seg.cn, seg.pw, seg.mn, seg.flag) == (
        "20210301111100112", "21", "2011", "123456", "ZLDSZ20210127", 8)
    assert seg.pnum is None and seg.pno is None
    assert seg.cp.data_time == "20210301111100"
    assert list(seg.cp.codes)[:3] == ["w01001", "w01009", "w01010"]
    assert seg.cp.codes["w01003"] == {"Rtd": "13.10", "Flag": "N"}
    assert seg.cp.codes["w21003"] == {"Rtd": "0.09055002", "Flag": "N"}


@pytest.mark.parametrize(("frame", "expected"), [
    (SAMPLE_0109.replace(b"8c41", b"8c42"), "CRC 8c42 does not match the data segment "
                                            r"\(computed 8C41\)"),
    (SAMPLE_0109.replace(b"ST=32", b"ST=33"), "CRC 8c41 does not match"),
    (b"#!" + SAMPLE_0109[2:], "the frame starts with b'#!', not b'##'"),
    (SAMPLE_0109.replace(b"##0109", b"##0108"), "the length field says 108 bytes of data "
                                                "segment, the frame holds 109"),
    (SAMPLE_0109.replace(b"##0109", b"##01a9"), "the length field is b'01a9'; it must be 4 "
                                                "decimal digits"),
    (SAMPLE_0109.replace(b"8c41", b"8g41"), "the CRC field is b'8g41'; it must be 4 hex digits"),
])
def test_unpack_errors(frame, expected):
    with pytest.raises(HJ212Error, match=expected):
        unpack(frame)


def test_unpack_takes_either_case_and_frames_without_crlf():
    assert unpack(upper_crc(SAMPLE_0109)) == segment_of(SAMPLE_0109)
    assert unpack(SAMPLE_0109[:-2]) == segment_of(SAMPLE_0109)


def test_pack_errors():
    with pytest.raises(HJ212Error, match="the data segment has '°' at position 3; HJ 212 data "
                                         "segments are ASCII"):
        pack("ST=°")
    with pytest.raises(HJ212Error, match="the data segment is 10000 bytes; HJ 212 frames hold "
                                         "at most 9999: split it into PNUM/PNO packets"):
        pack("x" * 10_000)


def test_stream_of_frames():
    d = Deframer(b"\r\n", MAX_FRAME)
    stream = SAMPLE_0109 + SAMPLE_0435
    frames = [f for chunk in (stream[:50], stream[50:300], stream[300:]) for f in d.feed(chunk)]
    assert [unpack(f) for f in frames] == [segment_of(SAMPLE_0109), segment_of(SAMPLE_0435)]


def test_flag_bits():
    assert make_flag(reply=True) == 5 and make_flag(reply=False) == 4
    seg = Segment(st="21", cn="2011", flag=make_flag(reply=True))
    assert seg.reply_wanted and seg.version == 1
    assert not Segment(st="21", cn="2011").reply_wanted


@pytest.mark.parametrize(("value", "text"), [(7.0, "7.0"), (1e-05, "0.00001"), (8.33, "8.33"),
                                             (1e16, "10000000000000000"), (-0.5, "-0.5"),
                                             (12, "12"), (True, "1"), ("13.10", "13.10")])
def test_number_text(value, text):
    assert number_text(value) == text


def test_number_text_refuses_nan():
    with pytest.raises(HJ212Error, match="nan cannot be sent"):
        number_text(float("nan"))


def test_realtime_cp_flags_only_and_errors():
    cp = realtime_cp("20260101000000", [("a21026", None, "D"), ("a21027", 1.5, "N")])
    assert cp.text() == "DataTime=20260101000000;a21026-Flag=D;a21027-Rtd=1.5,a21027-Flag=N"
    with pytest.raises(HJ212Error, match="code 'a1' appears twice"):
        realtime_cp("20260101000000", [("a1", 1, "N"), ("a1", 2, "N")])
    with pytest.raises(HJ212Error, match="code 'a1' has neither a value nor a data flag"):
        realtime_cp("20260101000000", [("a1", None, None)])
    with pytest.raises(HJ212Error, match="CP a1-Flag value 'N;x' contains ';'"):
        realtime_cp("20260101000000", [("a1", 1, "N;x")])


@pytest.mark.parametrize(("text", "expected"), [
    ("ST=21;CN=2011;CP=&&DataTime=1", "no CP=&&...&& at its end"),
    ("ST=21;CN=2011CP=&&&&", "the field before CP=&& does not end with ';'"),
    ("ST=21;XX=1;CN=2011;CP=&&&&", "header field 'XX=1' is not one of QN, ST, CN, PW, MN, Flag, "
                                   "PNUM, PNO as key=value"),
    ("ST=21;CN=2011;Flag=x;CP=&&&&", "Flag='x' is not a number"),
    ("ST=21;ST=22;CN=2011;CP=&&&&", "header field ST appears twice"),
    ("CN=2011;CP=&&&&", "the data segment has no ST"),
    ("QN=2021;ST=21;CN=2011;CP=&&&&", "QN '2021' is not yyyyMMddHHmmssSSS"),
    ("ST=21;CN=2011;PNUM=2;CP=&&&&", "PNUM and PNO come together"),
    ("ST=21;CN=2011;CP=&&DataTime&&", "CP item 'DataTime' is not key=value"),
])
def test_segment_parse_errors(text, expected):
    with pytest.raises(HJ212Error, match=expected):
        Segment.parse(text)


def big_segment(codes: int) -> Segment:
    rng = random.Random(212)
    cp = realtime_cp("20260101120000", [(f"a{i:05d}", round(rng.uniform(-100, 1e4), 3), "N")
                                        for i in range(codes)])
    return Segment(qn="20260101120000123", st="22", cn="2011", pw="123456",
                   mn="HAZGATE0000000000000001", flag=make_flag(reply=True), cp=cp)


def test_split_at_the_4_digit_length_and_join():
    seg = big_segment(600)
    assert len(seg.text()) > 9999
    packets = split(seg)
    assert len(packets) == 3
    for number, packet in enumerate(packets, 1):
        assert len(packet.text()) <= 9999
        assert (packet.pnum, packet.pno, packet.qn) == (3, number, seg.qn)
        assert packet.flag == 7 and packet.reply_wanted
        assert packet.cp.data_time == "20260101120000"
        assert f"Flag=7;PNUM=3;PNO={number};CP=&&DataTime=20260101120000;" in packet.text()
        assert Segment.parse(unpack(pack(packet.text()))) == packet
    assert sum(len(p.cp.codes) for p in packets) == 600
    shuffled = packets[::-1]
    assert join(shuffled) == seg
    assert join(shuffled).text() == seg.text()


@pytest.mark.parametrize("bound", range(170, 260))
def test_split_never_passes_the_bound(bound):
    seg = big_segment(60)
    packets = split(seg, max_length=bound)
    assert len(packets) >= 10
    assert all(len(p.text()) <= bound for p in packets)
    assert join(packets) == seg


def test_split_to_a_smaller_bound_with_two_digit_packet_numbers():
    seg = big_segment(60)
    packets = split(seg, max_length=200)
    assert len(packets) >= 10
    assert packets[-1].text().startswith(f"QN={seg.qn};ST=22;CN=2011;PW=123456;MN={seg.mn};"
                                         f"Flag=7;PNUM={len(packets)};PNO={len(packets)};")
    assert join(packets) == seg


def test_small_segment_is_not_split():
    seg = big_segment(3)
    assert split(seg) == [seg]
    assert join([seg]) is seg


def test_split_errors():
    seg = big_segment(5)
    with pytest.raises(HJ212Error, match="max_length 10000 is not within 1..9999"):
        split(seg, max_length=10_000)
    with pytest.raises(HJ212Error, match=r"the header and CP parameters alone are \d+ bytes; "
                                         "max_length is 100"):
        split(seg, max_length=100)
    with pytest.raises(HJ212Error, match="code 'a00000' alone makes a 156-byte packet; "
                                         "max_length is 150"):
        split(seg, max_length=150)


def test_join_errors():
    packets = split(big_segment(60), max_length=300)
    with pytest.raises(HJ212Error, match="packets PNO=2 of PNUM=.* are missing"):
        join([packets[0], *packets[2:]])
    with pytest.raises(HJ212Error, match="packet PNO=1 appears twice"):
        join([*packets, packets[0]])
    other = Segment.parse(packets[1].text().replace("QN=20260101120000123", "QN=20260101120000999"))
    with pytest.raises(HJ212Error, match="packet PNO=2 .* belongs to another message"):
        join([packets[0], other, *packets[2:]])
    with pytest.raises(HJ212Error, match="no packets to join"):
        join([])


def test_data_reply_9014():
    text = "QN=20210301111100112;ST=91;CN=9014;PW=123456;MN=ZLDSZ20210127;Flag=4;CP=&&&&"
    reply = parse_reply(Segment.parse(unpack(pack(text))))
    assert reply == Reply(CN_DATA_REPLY, "20210301111100112", None)
    assert reply.ok and reply.describe() == "CN=9014 received"


@pytest.mark.parametrize(("text", "code", "ok", "described"), [
    ("QN=20210301111100112;ST=91;CN=9011;PW=123456;MN=M1;Flag=4;CP=&&QnRtn=1&&", 1, True,
     "QnRtn=1 (ready to execute)"),
    ("QN=20210301111100112;ST=91;CN=9011;PW=123456;MN=M1;Flag=4;CP=&&QnRtn=3&&", 3, False,
     "QnRtn=3 (wrong PW)"),
    ("ST=91;CN=9011;PW=123456;MN=M1;Flag=4;CP=&&QN=20210301111100112;QnRtn=9&&", 9, False,
     "QnRtn=9 (wrong CRC)"),
    ("QN=20210301111100112;ST=91;CN=9012;PW=123456;MN=M1;Flag=4;CP=&&ExeRtn=100&&", 100, False,
     "ExeRtn=100 (no data)"),
])
def test_request_and_execution_replies(text, code, ok, described):
    reply = parse_reply(Segment.parse(text))
    assert reply.qn == "20210301111100112"
    assert (reply.code, reply.ok, reply.describe()) == (code, ok, described)


def test_reply_errors():
    with pytest.raises(HJ212Error, match="CN=2011 is not a reply; replies are 9011, 9012, 9013, "
                                         "9014"):
        parse_reply(Segment.parse(segment_of(SAMPLE_0109)))
    with pytest.raises(HJ212Error, match="CN=9011 reply has QnRtn='', not a number"):
        parse_reply(Segment(st="91", cn="9011"))


def test_cp_parse_merges_a_code_seen_twice():
    cp = Cp.parse("DataTime=20210823075400;a05002-Rtd=-0.94,a05002-Flag=N;a05002-Cou=0.00,"
                  "a05002-Flag=N;")
    assert cp.params == {"DataTime": "20210823075400"}
    assert cp.codes == {"a05002": {"Rtd": "-0.94", "Flag": "N", "Cou": "0.00"}}
