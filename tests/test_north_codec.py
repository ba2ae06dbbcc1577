"""Codec chains: known answers for every cipher x key derivation x text step x IV source, and
the errors a technician or a receiver sees.

Every ciphertext below was computed once, outside hazgate, with OpenSSL 3.0.19 and written
here literally. The plaintext is the 46 bytes PLAIN; keys and IVs are given to openssl in hex:

    printf '[{"tag":"TK101_TT","value":-3.5,"unit":"\\xc2\\xb0C"}]' > plain.bin
    K=$(printf '%s' 'hazgate-key-0001' | xxd -p)                 # raw: the text's bytes
    openssl enc -aes-128-cbc -K "$K" -iv "${K:0:32}" -a -A < plain.bin          # IV = key, base64
    openssl enc -aes-128-cbc -K "$K" -iv "$(printf '%s' iv-from-platform | xxd -p)" \\
        < plain.bin | xxd -p | tr -d '\\n' | tr a-f A-F                       # IV text, hex
    openssl enc -sm4-ecb -K "$K" -a -A < plain.bin                             # ECB: no -iv

(the same for -aes-256-cbc, -aes-128-ecb, -aes-256-ecb, -sm4-cbc, -sm4-ecb; each output was
decrypted back with `openssl enc -d` and compared with plain.bin).
space-pad: the UTF-8 bytes of SHORT followed by spaces up to 16 or 32 bytes, written as hex by
`printf '%s%*s' "$SHORT" $((n - $(printf '%s' "$SHORT" | wc -c))) '' | xxd -p`.
sha1prng: the key Java 17 itself produced (OpenJDK 17.0.15, provider SUN, one-off program):

    SecureRandom r = SecureRandom.getInstance("SHA1PRNG");
    r.setSeed(seed.getBytes(StandardCharsets.UTF_8));
    KeyGenerator g = KeyGenerator.getInstance("AES"); g.init(128 or 256, r);
    HexFormat.of().formatHex(g.generateKey().getEncoded())

and for 16 bytes also `printf '%s' "$SEED" | sha1sum | cut -c1-40 | xxd -r -p | sha1sum`
(first 32 hex digits). Java's AES/ECB/PKCS5Padding gave the same base64 as openssl for the
aes-128-ecb and aes-256-ecb sha1prng rows.
"""

from __future__ import annotations

import base64

import orjson
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from agent.north.codec import (
    CIPHERS,
    Codec,
    CodecError,
    build_codec,
    chain_problems,
    derive_key,
    key_length,
)

PLAIN_OBJ = [{"tag": "TK101_TT", "value": -3.5, "unit": "°C"}]
PLAIN = b'[{"tag":"TK101_TT","value":-3.5,"unit":"\xc2\xb0C"}]'
RAW16 = "hazgate-key-0001"
RAW32 = "hazgate-key-0001-hazgate-key-256"
SHORT = "危化-2022"  # 11 UTF-8 bytes
SEED = "wuxi-park-seed"
IV_TEXT = "iv-from-platform"

# (cipher, derivation, key text, IV ("key", IV_TEXT or None for ECB), key hex, base64, hex)
VECTORS = [
    ("aes-128-cbc", "raw", RAW16, "key",
     "68617a676174652d6b65792d30303031",
     "oGPTFvw3uL94emhRQ9ke8kaL8RJRKFITNVBW6EumQNyW4rd/Y4+eSdRg2K8BAmSh",
     "A063D316FC37B8BF787A685143D91EF2468BF11251285213355056E84BA640DC96E2B77F638F9E49D460D8AF010264A1"),
    ("aes-128-cbc", "raw", RAW16, IV_TEXT,
     "68617a676174652d6b65792d30303031",
     "AvCqqbSfBAgpBm1y2H9GBtkadaPc0sfQEi5AxfzpIfO4RQJ0dlIn0cBp96stIdSQ",
     "02F0AAA9B49F040829066D72D87F4606D91A75A3DCD2C7D0122E40C5FCE921F3B8450274765227D1C069F7AB2D21D490"),
    ("aes-128-cbc", "space-pad", SHORT, "key",
     "e58db1e58c962d323032322020202020",
     "RsgcyvBYGftjoxoetgH67dpElxg+eos+ank7WIZUXcSOQ2xMR6nPyWCVuar1sH82",
     "46C81CCAF05819FB63A31A1EB601FAEDDA4497183E7A8B3E6A793B5886545DC48E436C4C47A9CFC96095B9AAF5B07F36"),
    ("aes-128-cbc", "space-pad", SHORT, IV_TEXT,
     "e58db1e58c962d323032322020202020",
     "Lm2cBvJ+a3XW0zVPfb9GD7bOpYelARb7dPQs8LfyUO2do0Q5yXCqkdhmyTYaxk2V",
     "2E6D9C06F27E6B75D6D3354F7DBF460FB6CEA587A50116FB74F42CF0B7F250ED9DA34439C970AA91D866C9361AC64D95"),
    ("aes-128-cbc", "sha1prng", SEED, "key",
     "7bfae04aee19e3793f27edfce1254633",
     "GFSACwV6Y8k6yHO+yKRhKLvvZeIkxLYttcyiy0EQhrT5RZHVaqdNNfTeyLHg1IsO",
     "1854800B057A63C93AC873BEC8A46128BBEF65E224C4B62DB5CCA2CB411086B4F94591D56AA74D35F4DEC8B1E0D48B0E"),
    ("aes-128-cbc", "sha1prng", SEED, IV_TEXT,
     "7bfae04aee19e3793f27edfce1254633",
     "CWdHXFHJS5rYNW04X/pKH+JpTkcMRoFMQ6H4NJ6WUc9Y4K+4csfFK0VIchv013Kh",
     "0967475C51C94B9AD8356D385FFA4A1FE2694E470C46814C43A1F8349E9651CF58E0AFB872C7C52B4548721BF4D772A1"),
    ("aes-256-cbc", "raw", RAW32, "key",
     "68617a676174652d6b65792d303030312d68617a676174652d6b65792d323536",
     "wLKLBVlRLtP4HYytaDffqUe+Q3tCt3eWWzLswlx0KSlh9EOfRCs9Cgkg4tnjB5R7",
     "C0B28B0559512ED3F81D8CAD6837DFA947BE437B42B777965B32ECC25C74292961F4439F442B3D0A0920E2D9E307947B"),
    ("aes-256-cbc", "raw", RAW32, IV_TEXT,
     "68617a676174652d6b65792d303030312d68617a676174652d6b65792d323536",
     "FrWd/ztcP3Q+qHv0QX2Ch7q1JJ7M/yNcvW8WH47iZ50fIp0saHC1ZpSBw74tag6g",
     "16B59DFF3B5C3F743EA87BF4417D8287BAB5249ECCFF235CBD6F161F8EE2679D1F229D2C6870B5669481C3BE2D6A0EA0"),
    ("aes-256-cbc", "space-pad", SHORT, "key",
     "e58db1e58c962d32303232202020202020202020202020202020202020202020",
     "e46NJEN6BkpAbewa3p1U8LX4re1uj/MMsnNu8+G1ed4Z3LMIkJ27DajifZZcTDbl",
     "7B8E8D24437A064A406DEC1ADE9D54F0B5F8ADED6E8FF30CB2736EF3E1B579DE19DCB308909DBB0DA8E27D965C4C36E5"),
    ("aes-256-cbc", "space-pad", SHORT, IV_TEXT,
     "e58db1e58c962d32303232202020202020202020202020202020202020202020",
     "IVMu+wImcumcVfzJG8C97nMFOuEpjFueHER1mThLWl0Uw6eDs514V4P0bx/gwH9L",
     "21532EFB022672E99C55FCC91BC0BDEE73053AE1298C5B9E1C447599384B5A5D14C3A783B39D785783F46F1FE0C07F4B"),
    ("aes-256-cbc", "sha1prng", SEED, "key",
     "7bfae04aee19e3793f27edfce125463317b50a7600f41fc82430467b9cae7f1d",
     "IW+x+3bYZEW89tN2oipUUdU1e5a8+5r7HrLN1nlMd8T6gzJJ2RWDPlarpFPuz4lA",
     "216FB1FB76D86445BCF6D376A22A5451D5357B96BCFB9AFB1EB2CDD6794C77C4FA833249D915833E56ABA453EECF8940"),
    ("aes-256-cbc", "sha1prng", SEED, IV_TEXT,
     "7bfae04aee19e3793f27edfce125463317b50a7600f41fc82430467b9cae7f1d",
     "Io9KzOTXZfjhi3JK+z9yWnFGjGd8TF4VRCo905cMNoIhH1Nj2N+28xv5JREv9Axk",
     "228F4ACCE4D765F8E18B724AFB3F725A71468C677C4C5E15442A3DD3970C3682211F5363D8DFB6F31BF925112FF40C64"),
    ("aes-128-ecb", "raw", RAW16, None,
     "68617a676174652d6b65792d30303031",
     "HBjla4JJInSLmBWlKFNVodLgkdzhpyYA8G0ZNNoBqEp0GDI/z1OMMLWnCzqJNad7",
     "1C18E56B824922748B9815A5285355A1D2E091DCE1A72600F06D1934DA01A84A7418323FCF538C30B5A70B3A8935A77B"),
    ("aes-128-ecb", "space-pad", SHORT, None,
     "e58db1e58c962d323032322020202020",
     "UwhoWijALXxgXUZly+nTE5dbOyjB9YBQCZ4Xq4V/MR/ejJEXRpqmQ3bV9MxrtndB",
     "5308685A28C02D7C605D4665CBE9D313975B3B28C1F58050099E17AB857F311FDE8C9117469AA64376D5F4CC6BB67741"),
    ("aes-128-ecb", "sha1prng", SEED, None,
     "7bfae04aee19e3793f27edfce1254633",
     "nAfiPW+1CzSaBjH48H8g+H3tkqmDpni8ifkBvU1wTq281PcWxODRo9umDdF/p/TT",
     "9C07E23D6FB50B349A0631F8F07F20F87DED92A983A678BC89F901BD4D704EADBCD4F716C4E0D1A3DBA60DD17FA7F4D3"),
    ("aes-256-ecb", "raw", RAW32, None,
     "68617a676174652d6b65792d303030312d68617a676174652d6b65792d323536",
     "Zqs9BEsNFIaHYqscLaQpL9Xmje2RrITPvTqEDnBo3AXU4dGayu86WPcxXU5V3EOF",
     "66AB3D044B0D14868762AB1C2DA4292FD5E68DED91AC84CFBD3A840E7068DC05D4E1D19ACAEF3A58F7315D4E55DC4385"),
    ("aes-256-ecb", "space-pad", SHORT, None,
     "e58db1e58c962d32303232202020202020202020202020202020202020202020",
     "EbP6sua8uoeBXnX2Sd3xQLcj70zhfzXWp6GdtBX+u5oBvIBxVc0tF0GSrWGVCQ/8",
     "11B3FAB2E6BCBA87815E75F649DDF140B723EF4CE17F35D6A7A19DB415FEBB9A01BC807155CD2D174192AD6195090FFC"),
    ("aes-256-ecb", "sha1prng", SEED, None,
     "7bfae04aee19e3793f27edfce125463317b50a7600f41fc82430467b9cae7f1d",
     "oMo6siJdIDcojLf4zjInBQLpsocUZZSoG8WEGDYFRlLfXyG379Naej6IlghFUbXE",
     "A0CA3AB2225D2037288CB7F8CE32270502E9B287146594A81BC5841836054652DF5F21B7EFD35A7A3E8896084551B5C4"),
    ("sm4-cbc", "raw", RAW16, "key",
     "68617a676174652d6b65792d30303031",
     "d+vcdCt6SmvJLj95ZyTcl+tkw9YXqoPtJQ4zjrSOtai708RzcZ+nviSD0UdA99ae",
     "77EBDC742B7A4A6BC92E3F796724DC97EB64C3D617AA83ED250E338EB48EB5A8BBD3C473719FA7BE2483D14740F7D69E"),
    ("sm4-cbc", "raw", RAW16, IV_TEXT,
     "68617a676174652d6b65792d30303031",
     "K8fVhGojad0rsrd9seXr7UesVnqBaEy9WQy/w59w/Rd19U+OtlfTieHd/FRQa1Un",
     "2BC7D5846A2369DD2BB2B77DB1E5EBED47AC567A81684CBD590CBFC39F70FD1775F54F8EB657D389E1DDFC54506B5527"),
    ("sm4-cbc", "space-pad", SHORT, "key",
     "e58db1e58c962d323032322020202020",
     "DjzTY9zpZfVjJ8vNX0ykKhNyR5613caWc2BpLrttN0rnxHl952i3rbwh8bHlm+XJ",
     "0E3CD363DCE965F56327CBCD5F4CA42A1372479EB5DDC6967360692EBB6D374AE7C4797DE768B7ADBC21F1B1E59BE5C9"),
    ("sm4-cbc", "space-pad", SHORT, IV_TEXT,
     "e58db1e58c962d323032322020202020",
     "EQ7+l6Q3dS2fExvxexL0dMQFlO4yuF5RqNz5RTa3hsBtSlX25hYvTbBQ5tH3rsXf",
     "110EFE97A437752D9F131BF17B12F474C40594EE32B85E51A8DCF94536B786C06D4A55F6E6162F4DB050E6D1F7AEC5DF"),
    ("sm4-cbc", "sha1prng", SEED, "key",
     "7bfae04aee19e3793f27edfce1254633",
     "oPDwWFhHPTshHSfX+o0yLqLWm/wBMpIn0372+dhhz6D2IQ4kR8eIMhTWhQm2YQBA",
     "A0F0F05858473D3B211D27D7FA8D322EA2D69BFC01329227D37EF6F9D861CFA0F6210E2447C7883214D68509B6610040"),
    ("sm4-cbc", "sha1prng", SEED, IV_TEXT,
     "7bfae04aee19e3793f27edfce1254633",
     "3KLj08I21gdk50+Cxg12x+Ax8DZE4+6Js3wH7EVdEQrtc0TlCmvxFcgHN+ts4M6y",
     "DCA2E3D3C236D60764E74F82C60D76C7E031F03644E3EE89B37C07EC455D110AED7344E50A6BF115C80737EB6CE0CEB2"),
    ("sm4-ecb", "raw", RAW16, None,
     "68617a676174652d6b65792d30303031",
     "f8IApCUH8w25uxt5GUslsWJligS44anSsdu3MHQWCdvvvmKVyHCg5EhbdjodKlzc",
     "7FC200A42507F30DB9BB1B79194B25B162658A04B8E1A9D2B1DBB730741609DBEFBE6295C870A0E4485B763A1D2A5CDC"),
    ("sm4-ecb", "space-pad", SHORT, None,
     "e58db1e58c962d323032322020202020",
     "K4i/yPCuA9ka04QlgSaU/fJpejyP3yHHctXRjBZJmrd/FPjCTEoIXoZwk6cWkuGz",
     "2B88BFC8F0AE03D91AD38425812694FDF2697A3C8FDF21C772D5D18C16499AB77F14F8C24C4A085E867093A71692E1B3"),
    ("sm4-ecb", "sha1prng", SEED, None,
     "7bfae04aee19e3793f27edfce1254633",
     "FGbuhFhTU6Zd8g0aVjbfwy6INvdQULeXFTGE+mivb3bVV3lremJR2eUCSsrQX89c",
     "1466EE84585353A65DF20D1A5636DFC32E8836F75050B797153184FA68AF6F76D557796B7A6251D9E5024ACAD05FCF5C"),
]

# Java SHA1PRNG keys (KeyGenerator "AES" 128 and 256), from the one-off Java program above.
JAVA_SHA1PRNG = [
    (SEED, "7bfae04aee19e3793f27edfce1254633",
     "7bfae04aee19e3793f27edfce125463317b50a7600f41fc82430467b9cae7f1d"),
    ("危化园区", "728b6f7ffa7c99f0f2e7abcf3316854b",
     "728b6f7ffa7c99f0f2e7abcf3316854bd1be76115bf939060b899e3bafa4ba1c"),
    ("hazgate", "672e94cff345e79d62a025a02a8961e5",
     "672e94cff345e79d62a025a02a8961e5887d253f4e7b031971f3dbd2dcbf181f"),
]

ALL_CODECS = ("json, aes-128-cbc, aes-256-cbc, aes-128-ecb, aes-256-ecb, sm4-cbc, sm4-ecb, "
              "base64, hex")


def build(cipher: str, derivation: str, key_text: str, iv: str | None, text: str) -> Codec:
    codec, problems = build_codec(["json", cipher, text], key_text,
                                  iv_text=None if iv in (None, "key") else iv,
                                  iv_is_key=iv == "key", derivation=derivation)
    assert problems == [] and codec is not None
    return codec


def test_plaintext_is_what_orjson_writes():
    assert orjson.dumps(PLAIN_OBJ) == PLAIN


def test_every_valid_combination_has_a_vector():
    seen = {(c, d, iv) for c, d, _, iv, *_ in VECTORS}
    for cipher in CIPHERS:
        for derivation in ("raw", "space-pad", "sha1prng"):
            ivs = ("key", IV_TEXT) if cipher.endswith("cbc") else (None,)
            for iv in ivs:
                assert (cipher, derivation, iv) in seen


@pytest.mark.parametrize("text", ["base64", "hex"])
@pytest.mark.parametrize(("cipher", "derivation", "key_text", "iv", "key_hex", "b64", "hexed"),
                         VECTORS, ids=[f"{v[0]}-{v[1]}-{'iv' if v[3] == IV_TEXT else v[3]}"
                                       for v in VECTORS])
def test_known_answer(cipher, derivation, key_text, iv, key_hex, b64, hexed, text):
    codec = build(cipher, derivation, key_text, iv, text)
    assert codec.key.hex() == key_hex
    expected_iv = None if iv is None else (codec.key[:16] if iv == "key" else IV_TEXT.encode())
    assert codec.iv == expected_iv
    expected = b64 if text == "base64" else hexed
    assert codec.encode(PLAIN_OBJ) == expected
    assert codec.encode_bytes(PLAIN) == expected
    assert codec.decode(expected) == PLAIN_OBJ
    assert codec.decode_bytes(expected.encode()) == PLAIN
    if text == "hex":
        assert codec.decode(expected.lower()) == PLAIN_OBJ


@pytest.mark.parametrize(("seed", "k128", "k256"), JAVA_SHA1PRNG)
def test_sha1prng_matches_java(seed, k128, k256):
    assert derive_key(seed, 16, "sha1prng").hex() == k128
    assert derive_key(seed, 32, "sha1prng").hex() == k256


def test_sha1prng_256_is_not_a_plain_160_bit_sum():
    # Java carries with signed bytes; an unsigned little-endian sum gives a different 2nd block.
    naive = "7bfae04aee19e3793f27edfce125463317b50a763c1de33f39b33db89baf88a6"
    assert derive_key(SEED, 32, "sha1prng").hex() != naive


def test_sm4_standard_vector():
    # GB/T 32907-2016 appendix A, example 1: one block, no padding.
    key = bytes.fromhex("0123456789abcdeffedcba9876543210")
    expected = "681edf34d206965e86b3e94f536e4246"
    encryptor = Cipher(algorithms.SM4(key), modes.ECB()).encryptor()
    assert (encryptor.update(key) + encryptor.finalize()).hex() == expected
    # Through the codec: the first block is the standard's, the second is the PKCS#7 pad block.
    coded = Codec(("json", "sm4-ecb", "hex"), key=key).encode_bytes(key)
    assert len(coded) == 64 and coded[:32] == expected.upper()


def test_key_lengths():
    assert [key_length(c) for c in CIPHERS] == [16, 32, 16, 32, 16, 16]
    with pytest.raises(CodecError, match="'aes-192-cbc' is not a cipher"):
        key_length("aes-192-cbc")


@pytest.mark.parametrize("steps", [["json"], ["json", "base64"], ["json", "hex"],
                                   ["json", "aes-128-cbc", "base64"], ["json", "sm4-cbc", "hex"],
                                   ["json", "aes-256-ecb", "base64"], ["json", "sm4-ecb", "hex"]])
def test_round_trip(steps):
    obj = {"appid": "APP-1", "rows": [{"v": 1.5, "t": "危化", "ok": True, "none": None}] * 40}
    cipher = next((s for s in steps if s in CIPHERS), None)
    key = None if cipher is None else RAW32[:key_length(cipher)]
    iv_is_key = cipher is not None and cipher.endswith("cbc")
    codec, problems = build_codec(steps, key, iv_is_key=iv_is_key)
    assert problems == []
    assert codec.decode(codec.encode(obj)) == obj


def test_plain_json_chain_and_payload():
    codec, _ = build_codec(["json"])
    assert codec.encode(PLAIN_OBJ) == PLAIN.decode()
    assert codec.payload(PLAIN_OBJ) is PLAIN_OBJ  # embedded as an array by the envelope
    coded, _ = build_codec(["json", "base64"])
    assert coded.payload(PLAIN_OBJ) == base64.b64encode(PLAIN).decode()


def test_trailing_newline_of_key_and_iv_files_is_stripped():
    codec, problems = build_codec(["json", "aes-128-cbc", "base64"], RAW16 + "\n",
                                  iv_text=IV_TEXT + "\r\n")
    assert problems == []
    assert codec.key == RAW16.encode() and codec.iv == IV_TEXT.encode()


def test_unknown_codec_names_the_item_and_the_valid_ones():
    codec, problems = build_codec(["json", "aes-192-cbc", "base64"], RAW16)
    assert codec is None
    assert problems == [f"codec: 'aes-192-cbc' is not a codec; valid: {ALL_CODECS}"]


@pytest.mark.parametrize(("steps", "expected"), [
    ([], "is not a chain"),
    ("json", "is not a chain"),
    (["base64"], "starts with 'json', not 'base64'"),
    (["json", "json"], "'json' comes once, first"),
    (["json", "aes-128-cbc"], "'aes-128-cbc' gives bytes; end the chain with base64 or hex"),
    (["json", "aes-128-cbc", "sm4-cbc", "hex"], "one cipher at most, not aes-128-cbc, sm4-cbc"),
    (["json", "base64", "hex"], "one of base64 or hex at most"),
    (["json", "base64", "aes-128-cbc"], "'base64' comes last"),
    (["json", 3], "3 is not a codec"),
])
def test_chain_problems(steps, expected):
    problems = chain_problems(steps)
    assert any(expected in p for p in problems), problems
    assert all(p.startswith("codec: ") for p in problems)


@pytest.mark.parametrize(("kwargs", "expected"), [
    (dict(steps=["json", "aes-128-cbc", "base64"], key_text="k3y!x", iv_is_key=True),
     'key_file: aes-128-cbc: the key is 5 bytes; key_derivation = "raw" needs exactly 16'),
    (dict(steps=["json", "aes-256-cbc", "base64"], key_text=RAW16, iv_is_key=True),
     "needs exactly 32"),
    (dict(steps=["json", "aes-128-ecb", "base64"], key_text=RAW32, derivation="space-pad"),
     'key_file: aes-128-ecb: the key is 32 bytes; key_derivation = "space-pad" takes at most 16'),
    (dict(steps=["json", "sm4-ecb", "hex"], key_text="", derivation="sha1prng"),
     "key_file: sm4-ecb: the key is empty"),
    (dict(steps=["json", "aes-128-ecb", "base64"], key_text=RAW16, iv_text=IV_TEXT),
     "iv_file: aes-128-ecb takes no IV; remove iv_file"),
    (dict(steps=["json", "sm4-ecb", "hex"], key_text=RAW16, iv_is_key=True),
     "iv: sm4-ecb takes no IV; remove iv"),
    (dict(steps=["json", "sm4-cbc", "hex"], key_text=RAW16),
     'iv_file: sm4-cbc needs an IV; set iv_file, or iv = "key"'),
    (dict(steps=["json", "sm4-cbc", "hex"], key_text=RAW16, iv_text=IV_TEXT, iv_is_key=True),
     'iv: give iv_file or iv = "key", not both'),
    (dict(steps=["json", "aes-128-cbc", "hex"], key_text=RAW16, iv_text="0123456789"),
     "iv_file: the IV is 10 bytes; it must be exactly 16"),
    (dict(steps=["json", "aes-128-cbc", "hex"], iv_is_key=True),
     "key_file: aes-128-cbc needs a key; set key_file"),
    (dict(steps=["json", "aes-128-ecb", "hex"], key_text=RAW16, derivation="md5"),
     "key_derivation: 'md5' is not a key derivation; valid: raw, space-pad, sha1prng"),
    (dict(steps=["json", "base64"], key_text=RAW16),
     "key_file: set, but the codec has no cipher; add one to codec or remove key_file"),
    (dict(steps=["json"], iv_is_key=True), "iv: set, but the codec has no cipher"),
])
def test_key_and_iv_problems(kwargs, expected):
    codec, problems = build_codec(**kwargs)
    assert codec is None
    assert any(expected in p for p in problems), problems
    key = kwargs.get("key_text")
    assert not key or all(key not in p for p in problems)  # never echo the key


def test_codec_repr_hides_key_and_iv():
    codec = build("aes-128-cbc", "raw", RAW16, IV_TEXT, "hex")
    assert RAW16 not in repr(codec) and IV_TEXT not in repr(codec)
    assert "aes-128-cbc" in repr(codec)


def test_direct_construction_is_checked():
    with pytest.raises(CodecError, match="aes-128-cbc takes a 16-byte key, not 15"):
        Codec(("json", "aes-128-cbc", "hex"), key=b"k" * 15, iv=b"i" * 16)
    with pytest.raises(CodecError, match="sm4-ecb takes no IV"):
        Codec(("json", "sm4-ecb", "hex"), key=b"k" * 16, iv=b"i" * 16)
    with pytest.raises(CodecError, match="gives bytes"):
        Codec(("json", "sm4-ecb"), key=b"k" * 16)


def test_wrong_key_is_bad_padding():
    good = build("aes-128-cbc", "raw", RAW16, "key", "base64")
    other = build("aes-128-cbc", "raw", "hazgate-key-0002", "key", "base64")
    body = good.encode(PLAIN_OBJ)
    with pytest.raises(CodecError, match="bad PKCS#7 padding after aes-128-cbc decryption of 48 "
                                         "bytes: wrong key, wrong IV or a damaged text"):
        other.decode(body)


def test_cut_ciphertext_is_not_whole_blocks():
    codec = build("sm4-cbc", "raw", RAW16, IV_TEXT, "hex")
    with pytest.raises(CodecError, match="47 bytes of sm4-cbc ciphertext is not a whole number"):
        codec.decode(codec.encode(PLAIN_OBJ)[:-2])


@pytest.mark.parametrize("body", ["ABCDEFG", "ZZ00", "00 11"])
def test_bad_hex(body):
    codec = build("sm4-ecb", "raw", RAW16, None, "hex")
    with pytest.raises(CodecError, match=r"the body is not hex \(\d+ characters\)"):
        codec.decode(body)


@pytest.mark.parametrize("body", ["abc", "ab$d", "YWJj\nZA=="])
def test_bad_base64(body):
    codec = build("aes-128-ecb", "raw", RAW16, None, "base64")
    with pytest.raises(CodecError, match=r"the body is not base64 \(\d+ characters\)"):
        codec.decode(body)


def test_not_json_after_decoding():
    codec, _ = build_codec(["json", "base64"])
    with pytest.raises(CodecError, match="the decoded body is not JSON"):
        codec.decode(base64.b64encode(b"{not json").decode())


def test_undecodable_bytes_body():
    codec, _ = build_codec(["json", "hex"])
    with pytest.raises(CodecError, match="the body is not ascii text"):
        codec.decode("ÿ".encode("latin-1"))


def test_every_problem_is_reported_at_once():
    codec, problems = build_codec(["json", "aes-128-cbc", "base64"], "k3y!x", derivation="raw")
    assert codec is None
    assert [p.split(":")[0] for p in problems] == ["iv_file", "key_file"]
