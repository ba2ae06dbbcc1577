"""Codec chains: records -> message body text, and back (the reference receiver decodes with this).

A chain is `json`, then at most one cipher, then at most one of `base64` | `hex`; a cipher needs
the text step because ciphertext is bytes. Every cipher pads with PKCS#7. Keys come from the key
text as issued, by one of three derivations (see `derive_key`).

Problems are returned as text naming the config key they concern (`codec`, `key_file`,
`key_derivation`, `iv_file`, `iv`) so the config layer can prefix `file:line`. No problem or
error ever repeats key or IV material, only lengths.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

CIPHERS = ("aes-128-cbc", "aes-256-cbc", "aes-128-ecb", "aes-256-ecb", "sm4-cbc", "sm4-ecb")
TEXT_STEPS = ("base64", "hex")
CODECS = ("json", *CIPHERS, *TEXT_STEPS)
DERIVATIONS = ("raw", "space-pad", "sha1prng")
IV_LENGTH = 16
_ORDER = "the order is json, then at most one cipher, then base64 or hex"


class CodecError(ValueError):
    """A body that cannot be decoded, or a codec built from unusable parts."""


def key_length(cipher: str) -> int:
    """Key bytes the cipher takes: 32 for aes-256-*, 16 for aes-128-* and sm4-*."""
    if cipher not in CIPHERS:
        raise CodecError(f"{cipher!r} is not a cipher; valid: {', '.join(CIPHERS)}")
    return 32 if cipher.startswith("aes-256") else 16


def chain_problems(steps: Sequence[Any]) -> list[str]:
    """What is wrong with a codec chain; empty when it is usable."""
    if isinstance(steps, str) or not steps:
        return [f'codec: {steps!r} is not a chain; write a list such as ["json"] or '
                '["json", "aes-128-cbc", "base64"]']
    unknown = [s for s in steps if not isinstance(s, str) or s not in CODECS]
    if unknown:
        return [f"codec: {s!r} is not a codec; valid: {', '.join(CODECS)}" for s in unknown]
    problems = []
    if steps[0] != "json":
        problems.append(f"codec: the chain starts with 'json', not {steps[0]!r}")
    rest = list(steps[1:])
    if "json" in rest:
        problems.append(f"codec: 'json' comes once, first; {_ORDER}")
    ciphers = [s for s in rest if s in CIPHERS]
    texts = [s for s in rest if s in TEXT_STEPS]
    if len(ciphers) > 1:
        problems.append(f"codec: one cipher at most, not {', '.join(ciphers)}")
    if len(texts) > 1:
        problems.append(f"codec: one of base64 or hex at most, not {', '.join(texts)}")
    if texts and rest.index(texts[0]) != len(rest) - 1:
        problems.append(f"codec: {texts[0]!r} comes last; {_ORDER}")
    if ciphers and not texts:
        problems.append(f"codec: {ciphers[0]!r} gives bytes; end the chain with base64 or hex")
    return problems


def _java_sha1prng(seed: bytes, n: int) -> bytes:
    """The first n bytes of Java's SHA1PRNG (sun.security.provider.SecureRandom) after setSeed(seed).

    state = SHA1(seed); each output block is SHA1(state), after which
    state = state + block + 1 over 20 bytes, byte 0 first, with Java's signed-byte carry
    (`v = (int)state[i] + (int)output[i] + last; last = v >> 8`), which is not a plain
    unsigned 160-bit sum; if no byte changed, state[0] += 1. KeyGenerator.init(bits, sr)
    takes one nextBytes(bits / 8), so a 256-bit key is block 0 plus the first 12 bytes of block 1.
    """
    state = bytearray(hashlib.sha1(seed).digest())
    out = bytearray()
    while len(out) < n:
        block = hashlib.sha1(state).digest()
        carry, changed = 1, False
        for i, b in enumerate(block):
            v = (state[i] - 256 * (state[i] >> 7)) + (b - 256 * (b >> 7)) + carry
            changed |= state[i] != v & 0xFF
            state[i] = v & 0xFF
            carry = v >> 8
        if not changed:
            state[0] = (state[0] + 1) & 0xFF
        out += block
    return bytes(out[:n])


def derive_key(key_text: str, length: int, derivation: str) -> bytes:
    """Key bytes from the key text as issued (trailing newlines already stripped).

    raw: the text's UTF-8 bytes, exactly `length` long. space-pad: right-padded with spaces to
    `length` (the Jiangsu 2022 utility). sha1prng: Java `SecureRandom("SHA1PRNG")` seeded with the
    UTF-8 text, as `KeyGenerator.init(length * 8, sr)` uses it (16 bytes: SHA1(SHA1(text))[:16]).
    Raises CodecError naming the lengths, never the key.
    """
    data = key_text.encode("utf-8")
    if not data:
        raise CodecError("the key is empty")
    if derivation == "raw":
        if len(data) != length:
            raise CodecError(f"the key is {len(data)} bytes; key_derivation = \"raw\" needs "
                             f"exactly {length}: check that key_file holds the key as issued, "
                             "or set the derivation the platform uses (space-pad, sha1prng)")
        return data
    if derivation == "space-pad":
        if len(data) > length:
            raise CodecError(f"the key is {len(data)} bytes; key_derivation = \"space-pad\" "
                             f"takes at most {length}")
        return data.ljust(length, b" ")
    if derivation == "sha1prng":
        return _java_sha1prng(data, length)
    raise CodecError(f"{derivation!r} is not a key derivation; valid: {', '.join(DERIVATIONS)}")


@dataclass(frozen=True)
class Codec:
    """A checked codec chain with its key and IV; build it with `build_codec`.

    Constructing one directly (tests, a receiver holding binary keys) checks the same rules and
    raises CodecError.
    """

    steps: tuple[str, ...]
    key: bytes | None = field(default=None, repr=False)
    iv: bytes | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        problems = chain_problems(self.steps) or _material_problems(self.cipher, self.key, self.iv)
        if problems:
            raise CodecError("; ".join(problems))

    @property
    def cipher(self) -> str | None:
        return next((s for s in self.steps if s in CIPHERS), None)

    @property
    def text_step(self) -> str | None:
        return self.steps[-1] if self.steps[-1] in TEXT_STEPS else None

    def payload(self, records: Any) -> Any:
        """The envelope's `payload` value: the records themselves for a plain ["json"] chain, so
        a template string that is exactly "{payload}" embeds them as JSON (an array, not a
        string); otherwise the coded text."""
        return records if len(self.steps) == 1 else self.encode(records)

    def payload_json(self, records: bytes) -> Any:
        """`payload` for records already serialised as JSON: embedded as they are (an
        orjson.Fragment) for a plain ["json"] chain, else coded."""
        return orjson.Fragment(records) if len(self.steps) == 1 else self.encode_bytes(records)

    def encode(self, obj: Any) -> str:
        """JSON (orjson, compact UTF-8), then the cipher and text steps."""
        return self.encode_bytes(orjson.dumps(obj))

    def encode_bytes(self, data: bytes) -> str:
        """Cipher and text steps over already-serialised JSON bytes."""
        if self.cipher is not None:
            encryptor, padder = self._cipher.encryptor(), self._padding.padder()
            data = encryptor.update(padder.update(data) + padder.finalize()) + encryptor.finalize()
        if self.text_step == "base64":
            return base64.b64encode(data).decode("ascii")
        if self.text_step == "hex":
            return data.hex().upper()
        return data.decode("utf-8")

    def decode_bytes(self, text: str | bytes) -> bytes:
        """The JSON bytes inside a body; CodecError names what did not decode."""
        if isinstance(text, bytes):
            try:
                text = text.decode("ascii" if self.text_step else "utf-8")
            except UnicodeDecodeError as exc:
                raise CodecError(f"the body is not {exc.encoding} text: {exc.reason} at byte "
                                 f"{exc.start}") from None
        text = text.strip()
        if self.text_step == "base64":
            try:
                data = base64.b64decode(text, validate=True)
            except (binascii.Error, ValueError) as exc:
                raise CodecError(f"the body is not base64 ({len(text)} characters): {exc}") from None
        elif self.text_step == "hex":
            try:
                data = binascii.unhexlify(text)
            except (binascii.Error, ValueError) as exc:
                raise CodecError(f"the body is not hex ({len(text)} characters): {exc}") from None
        else:
            data = text.encode("utf-8")
        if self.cipher is None:
            return data
        if len(data) % 16:
            raise CodecError(f"{len(data)} bytes of {self.cipher} ciphertext is not a whole "
                             "number of 16-byte blocks: the text is cut or not ciphertext")
        decryptor, unpadder = self._cipher.decryptor(), self._padding.unpadder()
        try:
            plain = decryptor.update(data) + decryptor.finalize()
            return unpadder.update(plain) + unpadder.finalize()
        except ValueError:
            raise CodecError(f"bad PKCS#7 padding after {self.cipher} decryption of {len(data)} "
                             "bytes: wrong key, wrong IV or a damaged text") from None

    def decode(self, text: str | bytes) -> Any:
        """The object inside a body; CodecError on bad text, padding or JSON."""
        data = self.decode_bytes(text)
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise CodecError(f"the decoded body is not JSON: {exc}") from None

    # Imports here: cryptography (about 10 MB of a Pi's memory) only for an uplink with a cipher.
    # Made once per codec (each message takes a new encryptor or decryptor from it).
    @functools.cached_property
    def _cipher(self) -> Any:
        from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

        name = self.cipher
        algorithm = algorithms.SM4(self.key) if name.startswith("sm4") else algorithms.AES(self.key)
        return Cipher(algorithm, modes.CBC(self.iv) if name.endswith("-cbc") else modes.ECB())

    @functools.cached_property
    def _padding(self) -> Any:
        from cryptography.hazmat.primitives import padding

        return padding.PKCS7(128)


def _material_problems(cipher: str | None, key: bytes | None, iv: bytes | None) -> list[str]:
    """Key and IV against the cipher, for a Codec built directly."""
    if cipher is None:
        return [] if key is None and iv is None else ["a key or IV is given, but no cipher"]
    problems = []
    if key is None or len(key) != key_length(cipher):
        problems.append(f"{cipher} takes a {key_length(cipher)}-byte key, "
                        f"not {'none' if key is None else len(key)}")
    if cipher.endswith("-ecb") and iv is not None:
        problems.append(f"{cipher} takes no IV")
    if cipher.endswith("-cbc") and (iv is None or len(iv) != IV_LENGTH):
        problems.append(f"{cipher} takes a {IV_LENGTH}-byte IV, "
                        f"not {'none' if iv is None else len(iv)}")
    return problems


def build_codec(steps: Sequence[Any], key_text: str | None = None, iv_text: str | None = None,
                iv_is_key: bool = False, derivation: str = "raw") -> tuple[Codec | None, list[str]]:
    """A Codec from the uplink's settings, or None and every problem found.

    key_text and iv_text are the files' contents as issued (trailing CR/LF are stripped);
    iv_is_key means `iv = "key"`: the IV is the derived key's first 16 bytes. The IV text takes
    no derivation: its UTF-8 bytes must be exactly 16.
    """
    problems = chain_problems(steps)
    if problems:
        return None, problems
    chain = tuple(steps)
    cipher = next((s for s in chain if s in CIPHERS), None)
    if cipher is None:
        problems = [f"{name}: set, but the codec has no cipher; add one to codec or remove {name}"
                    for name, given in (("key_file", key_text is not None),
                                        ("iv_file", iv_text is not None), ("iv", iv_is_key))
                    if given]
        return (None, problems) if problems else (Codec(chain), [])
    if derivation not in DERIVATIONS:
        problems.append(f"key_derivation: {derivation!r} is not a key derivation; "
                        f"valid: {', '.join(DERIVATIONS)}")
    if key_text is None:
        problems.append(f"key_file: {cipher} needs a key; set key_file")
    if cipher.endswith("-ecb"):
        problems += [f"{name}: {cipher} takes no IV; remove {name}"
                     for name, given in (("iv_file", iv_text is not None), ("iv", iv_is_key))
                     if given]
    elif iv_text is not None and iv_is_key:
        problems.append('iv: give iv_file or iv = "key", not both')
    elif iv_text is None and not iv_is_key:
        problems.append(f'iv_file: {cipher} needs an IV; set iv_file, or iv = "key" to use the '
                        "key's first 16 bytes")
    iv = None if iv_text is None else iv_text.rstrip("\r\n").encode("utf-8")
    if iv is not None and len(iv) != IV_LENGTH and cipher.endswith("-cbc"):
        problems.append(f"iv_file: the IV is {len(iv)} bytes; it must be exactly {IV_LENGTH}")
    key = None
    if key_text is not None and derivation in DERIVATIONS:
        try:
            key = derive_key(key_text.rstrip("\r\n"), key_length(cipher), derivation)
        except CodecError as exc:
            problems.append(f"key_file: {cipher}: {exc}")
    if problems:
        return None, problems
    return Codec(chain, key, key[:IV_LENGTH] if iv_is_key else iv), []
