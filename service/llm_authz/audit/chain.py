"""The audit log's on-disk format: how a record is hashed, chained, written as a line and signed.

The rule, in full (docs/audit.md says the same for auditors writing their own verifier):

- A record's *body* is the record without its `hash` member, in canonical JSON: object keys
  sorted, no whitespace, UTF-8, numbers as orjson writes them (`policy.canonical_json`).
- `hash` = lower-case hex SHA-256 of the body.
- The line on disk is the body with `,"hash":"<hex>"` inserted before its final `}`, then `\\n`.
  So `line[:-76] + b"}"` is the body again, byte for byte.
- `seq` counts every record from 1 (decisions and the log's own records alike), and `prev_hash`
  is the previous record's `hash` (`GENESIS`, 64 zeros, for seq 1), across segment files too.
- A checkpoint's `signature` is Ed25519 over `CHECKPOINT_DOMAIN` + the canonical JSON of the
  checkpoint without `signature` and `hash`. It names `seq` and `prev_hash`, so it commits to
  every record before it: a forger who recomputes the chain cannot recompute the signature.
"""

from __future__ import annotations

import base64
import hashlib
import re
from typing import Any

import orjson

FORMAT = "llm-authz/audit/v1"
GENESIS = "0" * 64
CHECKPOINT_DOMAIN = b"llm-authz/audit/checkpoint/v1\n"
SEGMENT_PREFIX = "decisions-"
SEGMENT_SUFFIX = ".jsonl"
REVISIONS_DIR = "revisions"
TORN_DIR = "torn"

# Record kinds. Only "decision" records are checks; the others are the log's own bookkeeping.
DECISION = "decision"
SEGMENT = "segment"
CHECKPOINT = "checkpoint"
RECOVERY = "recovery"
REVISION = "revision"

_HASH_KEY = b',"hash":"'
HASH_SUFFIX_LEN = len(_HASH_KEY) + 64 + 3  # ,"hash":"<64 hex>"}\n


def canonical_json(value: Any) -> bytes:
    """policy.canonical_json, repeated here so that `audit verify` need not import the policy stack."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


# A directory holds one log made of one or more chains (docs/audit.md "Layout"): chain "main"
# (segments decisions-<seq>.jsonl, lock .lock) and, with `serve --processes N`, chain "w<i>" of
# worker i (segments decisions-w<i>-<seq>.jsonl, lock .lock-w<i>). Each chain has its own seq,
# genesis and checkpoints; its segment records carry "chain" (main omits it).
MAIN_CHAIN = "main"
CHAIN_NAME = re.compile(r"[a-z0-9]{1,16}")
_SEGMENT_NAME = re.compile(r"decisions-(?:([a-z0-9]{1,16})-)?([0-9]{20,})\.jsonl")


def segment_name(first_seq: int, chain_name: str = MAIN_CHAIN) -> str:
    """Segment files are named by their chain and first seq, zero-padded: name order is seq order."""
    infix = "" if chain_name == MAIN_CHAIN else f"{chain_name}-"
    return f"{SEGMENT_PREFIX}{infix}{first_seq:020d}{SEGMENT_SUFFIX}"


def parse_segment_name(name: str) -> tuple[str, int] | None:
    """(chain, first seq) of a segment file name, or None when the name is not one."""
    match = _SEGMENT_NAME.fullmatch(name)
    if match is None or match.group(1) == MAIN_CHAIN:  # main is never spelled out in a name
        return None
    return match.group(1) or MAIN_CHAIN, int(match.group(2))


def is_segment_name(name: str, chain_name: str | None = None) -> bool:
    """True for a segment file name (of `chain_name` only, when given)."""
    parsed = parse_segment_name(name)
    return parsed is not None and (chain_name is None or parsed[0] == chain_name)


def chain_of(name: str) -> str | None:
    """The chain a segment file belongs to by its name; None when the name is not a segment's."""
    parsed = parse_segment_name(name)
    return parsed[0] if parsed else None


def lock_name(chain_name: str = MAIN_CHAIN) -> str:
    """The lock file that keeps a chain to one writer."""
    return ".lock" if chain_name == MAIN_CHAIN else f".lock-{chain_name}"


def worker_chain(index: int) -> str:
    """The chain written by worker `index` of `serve --processes N`: main for worker 0, w<i> after."""
    return MAIN_CHAIN if index == 0 else f"w{index}"


def valid_chain_name(name: str) -> bool:
    return CHAIN_NAME.fullmatch(name) is not None


def chain_order(name: str) -> tuple[bool, int, str]:
    """Sort key: main first, then w1, w2, ... w10 in number order."""
    return (name != MAIN_CHAIN, len(name), name)


def body_of(record: dict[str, Any]) -> bytes:
    """The canonical JSON of the record without its hash: what the hash is taken over."""
    if "hash" in record:
        record = {k: v for k, v in record.items() if k != "hash"}
    return canonical_json(record)


def record_hash(record: dict[str, Any]) -> str:
    """SHA-256 hex of the record's canonical body."""
    return hashlib.sha256(body_of(record)).hexdigest()


def encode(record: dict[str, Any]) -> tuple[bytes, str]:
    """The line to write and the record's hash. `record` must already carry seq and prev_hash."""
    body = body_of(record)
    digest = hashlib.sha256(body).hexdigest()
    return body[:-1] + _HASH_KEY + digest.encode("ascii") + b'"}\n', digest


def split_line(line: bytes) -> tuple[bytes, str] | None:
    """(body, hash) of a line as the writer lays it out, or None when the line is not in that shape."""
    if len(line) <= HASH_SUFFIX_LEN or not line.endswith(b'"}\n') or line[-HASH_SUFFIX_LEN:-67] != _HASH_KEY:
        return None
    return line[:-HASH_SUFFIX_LEN] + b"}", line[-67:-3].decode("ascii", "replace")


def line_hash_ok(line: bytes) -> bool:
    """True when the line is whole and its hash matches its body (the recovery scan's test)."""
    parts = split_line(line)
    return parts is not None and hashlib.sha256(parts[0]).hexdigest() == parts[1]


def parse(line: bytes) -> dict[str, Any]:
    return orjson.loads(line)


def signed_message(checkpoint: dict[str, Any]) -> bytes:
    """The bytes a checkpoint signature is made over."""
    unsigned = {k: v for k, v in checkpoint.items() if k not in ("signature", "hash")}
    return CHECKPOINT_DOMAIN + canonical_json(unsigned)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def unb64(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"), validate=True)
