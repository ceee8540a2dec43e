"""A corpus of hostile input for ``guard.in``: what an attacker or an unlucky producer sends.

Two kinds:

- ``bad``: records that cannot be judged. Each must reach the DLQ with a reason of its class
  (a label of ``pipeline.dlq.LABELS``), and nothing else may happen to the worker.
- ``valid``: absurd but valid deltas (ids made of ':', tenants named like internal keys, 64 KiB of
  one grapheme, thousands of conversations of one tenant, thousands of 1-character deltas). They
  must be judged exactly like any other input: their verdicts equal the offline reference.

``scale`` shrinks the two bulk classes (10k conversations, 100k deltas) for CI time.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from schemas.messages import TokenDelta, encode


@dataclass(frozen=True)
class BadRecord:
    cls: str                       # the corpus class
    key: bytes | None
    value: bytes | None
    reasons: frozenset[str]        # acceptable reason classes (pipeline.dlq.reason_class of the DLQ reason)


@dataclass
class Corpus:
    bad: list[BadRecord] = field(default_factory=list)
    valid: list[TokenDelta] = field(default_factory=list)
    valid_classes: set[str] = field(default_factory=set)

    @property
    def classes(self) -> set[str]:
        return {b.cls for b in self.bad} | self.valid_classes


def _delta(cid: str, text: str = "hello", **extra: object) -> dict[str, object]:
    return {"conversation_id": cid, "message_index": 0, "role": "user", "seq": 0, "text": text, "final": True,
            **extra}


def _json(body: dict[str, object]) -> bytes:
    return json.dumps(body).encode()


def hostile_corpus(
    prefix: str, *, group: str, topic: str, max_conversation_messages: int, max_held_deltas: int,
    max_text_bytes: int = 65536, scale: float = 1.0,
) -> Corpus:
    """Every class, with conversation ids starting with ``prefix`` (unique per test run)."""
    c = Corpus()

    def bad(cls: str, value: bytes | None, *reasons: str, key: bytes | None = None, cid: str | None = None) -> None:
        cid = cid or f"{prefix}-{cls}-{len(c.bad)}"
        c.bad.append(BadRecord(cls, cid.encode() if key is None else key, value, frozenset(reasons)))

    def body(cls: str, **changes: object) -> bytes:
        return _json({**_delta(f"{prefix}-{cls}-{len(c.bad)}"), **changes})

    n = len
    bad("malformed json", b'{"conversation_id": "' + prefix.encode() + b'", "message_index": 0,', "malformed json")
    bad("malformed json", b'{"conversation_id": "a", "text": "x",}', "malformed json")
    bad("invalid utf-8", b'{"conversation_id": "a", "text": "\xff\xfe\xc0"}', "invalid utf-8")
    bad("empty message", None, "empty message")
    bad("empty message", b"", "empty message")
    bad("oversized text", body("oversized text", text="x" * 600_000), "oversized text")      # 600 kB
    bad("wrong type", body("wrong type", message_index="zero"), "schema violation")
    bad("wrong type", body("wrong type", text={"nested": 1}), "nested json")
    bad("not an object", b"[1, 2, 3]", "schema violation")
    bad("unknown type", body("unknown type", type="start"), "schema violation")
    bad("unknown field", body("unknown field", **{"x" * 5000: 1}), "schema violation")
    bad("unknown role", body("unknown role", role="root"), "schema violation")
    bad("negative number", body("negative number", seq=-1), "number out of range")
    bad("2^63", body("2^63", message_index=2**63), "number out of range")
    bad("2^63", body("2^63", ts_ms=2**63), "number out of range")
    bad("2^64", body("2^64", seq=2**64), "number out of range")
    bad("2^64", body("2^64", ts_ms=2**64 + 12345), "number out of range")
    bad("float for int", body("float for int", seq=0.0), "wrong type")
    bad("float for int", body("float for int", message_index=1e2), "wrong type")
    bad("bool for int", body("bool for int", seq=False), "wrong type")
    bad("nul", body("nul", text="be\u0000fore"), "nul character")
    bad("control character in id", _json(_delta(f"{prefix}-ctl\u0007")), "control character",
        cid=f"{prefix}-ctl\u0007")
    bad("bom", b"\xef\xbb\xbf" + body("bom"), "byte order mark")
    bad("lone surrogate", body("lone surrogate").replace(b'"hello"', b'"\\ud800x"'), "lone surrogate")
    bad("lone surrogate", body("lone surrogate").replace(b'"hello"', b'"\\udfff\\ud800"'), "lone surrogate")
    dup_cid = f"{prefix}-duplicate key-{n(c.bad)}"
    bad("duplicate key", _json(_delta(dup_cid))[:-1] + b', "text": "other"}', "duplicate key", cid=dup_cid)
    deep_cid = f"{prefix}-deep-{n(c.bad)}"
    bad("deep json", _json(_delta(deep_cid))[:-1] + b', "text": ' + b"[" * 200_000 + b"]" * 200_000 + b"}",
        "nested json", cid=deep_cid)
    bad("deep json", b"[" * 300_000 + b"]" * 300_000, "schema violation")
    mismatch = f"{prefix}-key mismatch"
    bad("key mismatch", _json(_delta(mismatch)), "key mismatch", key=b"someone-else")
    bad("key mismatch", _json(_delta(mismatch + "-long")), "key mismatch", key=b"k" * 100_000)
    bad("null key", _json(_delta(f"{prefix}-null key")), "key mismatch", key=b"")
    c.bad[-1] = BadRecord("null key", None, c.bad[-1].value, c.bad[-1].reasons)
    limit = f"{prefix}-message limit"
    bad("message limit", _json(_delta(limit, message_index=max_conversation_messages)), "message limit", cid=limit)
    # Out-of-order deltas of a conversation whose first delta never comes: the first ones are held
    # (then reported as a gap), the rest refused at once.
    held = f"{prefix}-held"
    for seq in range(1, max_held_deltas + 6):
        bad("held deltas limit", _json(_delta(held, text=f"w{seq} ", seq=seq, final=False)),
            "held deltas limit", "gap", cid=held)

    # --- absurd but valid -------------------------------------------------------------------
    def valid(cls: str, deltas: list[TokenDelta]) -> None:
        c.valid.extend(deltas)
        c.valid_classes.add(cls)

    def message(cid: str, text: str, tenant: str | None = None, chunk: int = 0) -> list[TokenDelta]:
        pieces = [text[i:i + chunk] for i in range(0, len(text), chunk)] if chunk else [text]
        out = [TokenDelta(conversation_id=cid, message_index=0, role="user", seq=s, text=p,
                          final=s == len(pieces) - 1, tenant=tenant) for s, p in enumerate(pieces)]
        return [*out, TokenDelta(conversation_id=cid, type="end", tenant=tenant)]

    colons = prefix + ":" * (256 - len(prefix))
    valid("ids made of ':'", message(colons, "Is this id safe?") + message(colons[:-1], "And this one?", tenant=":"))
    valid("tenant colliding with internal names",
          message(f"{group}:{topic}:0", "I am no watermark.", tenant="wm")
          + message(f"{prefix}:y", "Tenant with a colon.", tenant="acme:x")
          + message(f"x:{prefix}:y", "Id with a colon.", tenant="acme")
          + message(f"{prefix}-dash", "Tenant dash.", tenant="-")
          + message(f"{prefix}-dash", "No tenant at all, same id."))
    grapheme = "e" + "\u0301" * ((min(max_text_bytes, 65536) - 1) // 2)
    valid("64 KiB of one grapheme", message(f"{prefix}-grapheme", grapheme, chunk=4096))
    for i in range(max(1, int(10_000 * scale))):
        valid("conversations of one tenant", message(f"{prefix}-bulk-{i}", f"hi {i}", tenant="bulk"))
    words = " ".join(f"w{i % 97}" for i in range(int(100_000 * scale) // 3 + 1))[: max(10, int(100_000 * scale))]
    valid("tiny deltas in one message", message(f"{prefix}-tiny", words, chunk=1))
    return c


def produced(corpus: Corpus) -> list[tuple[bytes | None, bytes | None]]:
    """(key, value) of every record in publication order, valid deltas keyed by their conversation id."""
    return [(b.key, b.value) for b in corpus.bad] + [(d.conversation_id.encode(), encode(d)) for d in corpus.valid]
