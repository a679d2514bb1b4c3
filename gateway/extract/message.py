"""The MIME walk: headers, every part, nested messages; attachments go to ``blob.handle``.

Messages are parsed with ``email.policy.compat32``. The parse is the same code as with
``policy.default`` except that the default policy parses structured headers while parsing (the
feed parser asks for each part's Content-Type twice), which makes it about five times slower on
a plain 5 KB message. Header values are decoded here instead (RFC 2047 words, RFC 2231
parameters, raw 8-bit bytes), and compat32 never raises on a malformed header. A tree parsed
with either policy can be passed to ``extract_message``.
"""

from __future__ import annotations

import email
import email.policy
import email.utils
import re
from email.header import decode_header, make_header
from email.message import Message
from email.parser import BytesParser

from .blob import handle
from .budget import Blob, Budget
from .model import Extracted, ExtractLimits
from .text import decode_text

_PARSE_POLICY = email.policy.compat32
_ADDRESS_HEADERS = ("from", "to", "cc", "bcc", "reply-to", "sender")
_ENCRYPTED_TYPES = frozenset(
    {"multipart/encrypted", "application/pkcs7-mime", "application/x-pkcs7-mime"}
)
_FOLD = re.compile(r"\r?\n")
_PARAM = re.compile(r""";\s*([^\s=;"]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^;\s]*))""")
_UNQUOTE = re.compile(r"\\(.)")
_SIMPLE_ADDRESS = re.compile(
    r"""\s*(?:(?:"([^"\\]*)"|([^<>",;@]*?))\s*<[^<>"]*>|[^<>",;@\s]+@[^<>",;@\s]+)\s*(?:,|$)"""
)


def extract(raw: bytes, limits: ExtractLimits = ExtractLimits()) -> Extracted:  # noqa: B008
    """Every piece of scannable text in a raw RFC 5322 message; never raises."""
    budget = Budget(limits)
    try:
        walk_bytes(budget, raw, "", -1)
    except MemoryError:
        budget.fail("message", "too_large")
    except Exception:  # last line of defence: the message as a whole is unreadable
        budget.fail("message", "corrupt")
    return budget.result()


def extract_message(msg: Message, limits: ExtractLimits = ExtractLimits()) -> Extracted:  # noqa: B008
    """``extract`` for a message already parsed (with any policy), to avoid parsing twice."""
    budget = Budget(limits)
    try:
        walk_message(budget, msg, "", 0)
    except RecursionError:
        budget.fail("message", "too_deep")
    except Exception:
        budget.fail("message", "corrupt")
    return budget.result()


def walk_bytes(budget: Budget, raw: bytes, prefix: str, depth: int) -> None:
    """Parse ``raw`` and walk it as a message at nesting ``depth + 1``."""
    where = f"{prefix}message" if prefix else "message"
    msg: Message | None
    try:
        msg = email.message_from_bytes(raw, policy=_PARSE_POLICY)
    except RecursionError:  # the parser recurses once per nesting level
        budget.fail(where, "too_deep")
        msg = _headers_only(raw)
    except Exception:
        budget.fail(where, "corrupt")
        msg = _headers_only(raw)
    if msg is not None:
        walk_message(budget, msg, prefix, depth + 1)


def _headers_only(raw: bytes) -> Message | None:
    try:
        return BytesParser(policy=_PARSE_POLICY).parsebytes(raw, headersonly=True)
    except Exception:
        return None


def walk_message(budget: Budget, msg: Message, prefix: str, depth: int) -> None:
    """Headers of ``msg`` then its parts; ``prefix`` places it ("" or "attachment[3]/")."""
    if budget.expired():
        return
    headers = _raw_headers(msg)
    subject = headers.get("subject")
    if subject is not None:
        budget.text(f"{prefix}subject", "subject", header_text(subject))
    for name in _ADDRESS_HEADERS:
        value = headers.get(name)
        if value:
            names = display_names(value)
            if names:
                budget.text(f"{prefix}header {name}", "header", "\n".join(names))
    _walk(budget, msg, prefix, depth, [0], headers)


def _walk(
    budget: Budget,
    part: Message,
    prefix: str,
    depth: int,
    counter: list[int],
    headers: dict[str, str] | None = None,
) -> None:
    if headers is None:
        headers = _raw_headers(part)
    ctype, params = _content_type(part, headers)
    container = part.is_multipart()
    # get_payload() without decode=True re-decodes 8-bit text by its declared charset: never used
    # on a leaf here (it would also run whatever codec the sender names)
    payload = part.get_payload() if container else None
    if isinstance(payload, list) and not ctype.startswith("message/"):
        where = f"{prefix}{ctype}"
        if not budget.part(where) or budget.deep(where, depth):
            return
        if ctype in _ENCRYPTED_TYPES:
            budget.fail(where, "encrypted")
            return
        for child in payload:
            if budget.stopped:
                return
            if isinstance(child, Message):
                _walk(budget, child, prefix, depth + 1, counter)
        return

    index = counter[0]
    counter[0] += 1
    disposition, dparams = _split_params(headers.get("content-disposition", ""))
    filename = dparams.get("filename") or params.get("name") or ""
    if "*" in filename or "*" in headers.get("content-disposition", "") + headers.get(
        "content-type", ""
    ):  # RFC 2231 parameters: the email package knows all their forms
        filename = _filename(part)
    elif filename:
        filename = header_text(filename)
    is_body = (
        ctype in ("text/plain", "text/html", "text/enriched", "text/markdown")
        and disposition != "attachment"
        and not filename
    )
    kind = "body" if is_body else "attachment"
    base = f"{prefix}{kind}[{index}]"
    where = f"{base} {ctype}"
    if not budget.part(where):
        return
    if budget.deep(where, depth):
        budget.types.append(ctype)
        return
    if isinstance(payload, list):  # message/rfc822 and the like, parsed by the email package
        budget.types.append(ctype)
        if filename:
            budget.names.append(filename)
        for sub in payload:
            if isinstance(sub, Message) and not budget.stopped:
                walk_message(budget, sub, f"{base}/", depth + 1)
        return
    if ctype in _ENCRYPTED_TYPES:
        budget.types.append(ctype)
        budget.fail(where, "encrypted")
        return
    data = _decode(budget, part, headers, where)
    if data is None:
        budget.types.append(ctype)
        return
    charset = params.get("charset") or None
    handle(budget, Blob(data, base, kind, ctype, filename, charset, depth))


def _raw_headers(part: Message) -> dict[str, str]:
    """First value of each header, unparsed (cheap with any policy)."""
    found: dict[str, str] = {}
    for name, value in part.raw_items():
        key = name.lower()
        if key not in found:
            found[key] = value if isinstance(value, str) else str(value)
    return found


def _content_type(part: Message, headers: dict[str, str]) -> tuple[str, dict[str, str]]:
    """Content type and its parameters, read as compat32's ``get_content_type`` does."""
    value = headers.get("content-type")
    if value is None:
        return part.get_default_type(), {}
    ctype, params = _split_params(value)
    return (ctype if ctype.count("/") == 1 else "text/plain"), params


def _split_params(value: str) -> tuple[str, dict[str, str]]:
    """``"text/plain; charset=utf-8"`` -> ``("text/plain", {"charset": "utf-8"})``."""
    head, _, rest = _FOLD.sub("", value).partition(";")
    params: dict[str, str] = {}
    if rest:
        for m in _PARAM.finditer(";" + rest):
            key = m.group(1).lower()
            if key not in params:
                quoted = m.group(2)
                params[key] = _UNQUOTE.sub(r"\1", quoted) if quoted is not None else m.group(3)
    return head.strip().lower(), params


def _filename(part: Message) -> str:
    try:
        name = part.get_filename() or part.get_param("name") or ""
    except Exception:
        return ""
    if isinstance(name, tuple):  # an RFC 2231 value get_param did not collapse
        name = email.utils.collapse_rfc2231_value(name)
    return header_text(str(name)) if name else ""


def _decode(budget: Budget, part: Message, headers: dict[str, str], where: str) -> bytes | None:
    """The part's bytes after its transfer encoding; None (recorded) when it cannot be had.

    The email package decodes leniently (stray characters skipped, padding repaired, raw 8-bit
    bytes given back as they came); "bad_encoding" only when nothing at all came out.
    """
    try:
        data = part.get_payload(decode=True)
    except Exception:
        data = None
    if not isinstance(data, bytes):
        data = b""
    if not data:
        cte = headers.get("content-transfer-encoding", "").strip().lower()
        if cte in ("base64", "quoted-printable", "x-uuencode", "uuencode", "x-uue", "uue"):
            raw = part.get_payload()
            if isinstance(raw, str) and raw.strip():
                budget.fail(where, "bad_encoding")
                return None
    if not budget.reserve(where, len(data)):
        return None
    return data


def _simple_display_names(value: str) -> list[str] | None:
    """The common forms (``Name <a@b>``, ``"Last, First" <a@b>``, ``a@b``) without the full
    RFC 5322 parser, which costs ~70 us a header; None for anything else (groups, comments)."""
    if "(" in value or "\\" in value or ":" in value:
        return None
    names: list[str] = []
    pos, end = 0, len(value)
    while pos < end:
        m = _SIMPLE_ADDRESS.match(value, pos)
        if m is None or m.end() == pos:
            return None
        name = m.group(1) if m.group(1) is not None else m.group(2)
        if name:
            text = header_text(name).strip()
            if text:
                names.append(text)
        pos = m.end()
    return names


def header_text(value: str) -> str:
    """A header value as text: unfolded, RFC 2047 words decoded, raw 8-bit bytes decoded."""
    value = _FOLD.sub("", value)
    if any("\udc80" <= ch <= "\udcff" for ch in value):
        value = decode_text(value.encode("utf-8", "surrogateescape"), None)[0]
    if "=?" not in value:
        return value
    try:
        return str(make_header(decode_header(value)))
    except Exception:  # unknown charset or broken word: decode what can be decoded
        try:
            pieces = decode_header(value)
        except Exception:
            return value
        return " ".join(p if isinstance(p, str) else decode_text(p, cs)[0] for p, cs in pieces)


def display_names(value: str) -> list[str]:
    """Display names in an address header ("Jane Testperson" of "Jane Testperson <j@x.test>")."""
    names = _simple_display_names(value)
    if names is not None:
        return names
    try:
        pairs = email.utils.getaddresses([_FOLD.sub("", value)])
    except Exception:
        return []
    return [text for name, _addr in pairs if name and (text := header_text(name).strip())]
