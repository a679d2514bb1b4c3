"""Which reader handles a blob: magic bytes first, then the declared type, then the name.

Magic bytes win because senders mislabel files all the time (a PDF as application/octet-stream,
a CSV as application/vnd.ms-excel). A file declared as a container format whose bytes say
otherwise is "corrupt", so a renamed file cannot slip through as unreadable binary.
"""

from __future__ import annotations

from .text import looks_like_text

# Formats: text html ics rtf pdf zip gzip tar tnef rfc822 ole image binary; plus "bad:<fmt>" for a
# file declared as <fmt> whose bytes do not match. "ole": legacy Office files and Outlook items;
# one declared so whose bytes are text (a CSV or HTML "xls") is read as text.

_EXT_TYPES = {
    "txt": "text/plain", "text": "text/plain", "log": "text/plain", "md": "text/markdown",
    "csv": "text/csv", "tsv": "text/tab-separated-values", "json": "application/json",
    "xml": "application/xml", "hl7": "x-application/hl7-v2+er7", "htm": "text/html",
    "html": "text/html", "ics": "text/calendar", "vcs": "text/calendar", "vcf": "text/vcard",
    "rtf": "application/rtf", "pdf": "application/pdf", "zip": "application/zip",
    "gz": "application/gzip", "tgz": "application/gzip", "tar": "application/x-tar",
    "eml": "message/rfc822", "dat": "application/octet-stream",
    "docx": "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    "docm": "application/vnd.ms-word.document.macroenabled.12",
    "xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    "xlsm": "application/vnd.ms-excel.sheet.macroenabled.12",
    "pptx": "application/vnd.openxmlformats-officedocument.presentationml.presentation",
    "pptm": "application/vnd.ms-powerpoint.presentation.macroenabled.12",
    "odt": "application/vnd.oasis.opendocument.text",
    "ods": "application/vnd.oasis.opendocument.spreadsheet",
    "odp": "application/vnd.oasis.opendocument.presentation",
    "doc": "application/msword", "xls": "application/vnd.ms-excel",
    "ppt": "application/vnd.ms-powerpoint", "msg": "application/vnd.ms-outlook",
    "dot": "application/msword", "xlt": "application/vnd.ms-excel",
    "pps": "application/vnd.ms-powerpoint", "pot": "application/vnd.ms-powerpoint",
    "png": "image/png", "jpg": "image/jpeg", "jpeg": "image/jpeg", "gif": "image/gif",
    "tif": "image/tiff", "tiff": "image/tiff", "bmp": "image/bmp", "svg": "image/svg+xml",
    "dcm": "application/dicom", "exe": "application/x-msdownload",
    "7z": "application/x-7z-compressed", "rar": "application/vnd.rar",
}  # fmt: skip

_TEXT_APPS = frozenset(
    {
        "application/json", "application/xml", "application/csv", "application/x-csv",
        "application/hl7-v2", "application/x-hl7", "x-application/hl7-v2+er7",
        "application/edi-x12", "application/x-sh", "application/javascript", "application/sql",
        "application/xhtml+xml", "image/svg+xml", "application/x-vcard", "application/ics",
    }
)  # fmt: skip
_DECLARED = {
    "application/pdf": "pdf", "application/x-pdf": "pdf",
    "application/zip": "zip", "application/x-zip-compressed": "zip",
    "application/x-zip": "zip", "application/gzip": "gzip", "application/x-gzip": "gzip",
    "application/x-tar": "tar", "application/rtf": "rtf", "text/rtf": "rtf",
    "application/ms-tnef": "tnef", "application/vnd.ms-tnef": "tnef",
    "message/rfc822": "rfc822", "message/global": "rfc822",
    "text/html": "html", "application/xhtml+xml": "html", "image/svg+xml": "html",
    "text/calendar": "ics", "text/vcard": "ics", "text/x-vcard": "ics",
    "text/directory": "ics", "application/ics": "ics", "application/x-vcard": "ics",
    "application/msword": "ole", "application/vnd.ms-word": "ole",
    "application/vnd.ms-excel": "ole", "application/msexcel": "ole",
    "application/x-msexcel": "ole", "application/vnd.ms-powerpoint": "ole",
    "application/mspowerpoint": "ole", "application/vnd.ms-outlook": "ole",
    "application/x-ole-storage": "ole", "application/cdfv2": "ole",
}  # fmt: skip
_ZIP_EXTS = frozenset({"zip", "docx", "docm", "xlsx", "xlsm", "pptx", "pptm", "odt", "ods", "odp"})
_OOXML_PREFIX = (
    "application/vnd.openxmlformats-officedocument.",
    "application/vnd.ms-word.",
    "application/vnd.ms-excel.sheet.",
    "application/vnd.ms-powerpoint.presentation.",
    "application/vnd.oasis.opendocument.",
)
_BINARY_MAJOR = ("image/", "audio/", "video/", "font/", "model/")
_ENCRYPTED_PACKAGE = "EncryptedPackage".encode("utf-16-le")


def extension(filename: str) -> str:
    base = filename.rsplit("/", 1)[-1].rsplit("\\", 1)[-1]
    return base.rsplit(".", 1)[-1].lower() if "." in base else ""


def guess_type(filename: str) -> str:
    """Content type from a file name alone (no system mime.types: no I/O, same everywhere)."""
    return _EXT_TYPES.get(extension(filename), "application/octet-stream")


def sniff(data: bytes) -> str | None:
    """Format from magic bytes, or None."""
    head = data[:8]
    if head.startswith(b"%PDF") or (b"%PDF-" in data[:1024] and not head.startswith(b"PK")):
        return "pdf"
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return "zip"
    if head.startswith(b"\x1f\x8b"):
        return "gzip"
    if head.startswith(b"{\\rtf"):
        return "rtf"
    if head.startswith(b"\x78\x9f\x3e\x22"):
        return "tnef"
    if head.startswith(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"):
        return "ole"
    if data[257:262] == b"ustar":
        return "tar"
    if image_kind(data) is not None:
        return "image"
    return None


def image_kind(data: bytes) -> str | None:
    """The raster image format of ``data`` from its magic bytes, or None."""
    head = data[:16]
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "gif"
    if head.startswith((b"II*\x00", b"MM\x00*")):
        return "tiff"
    if head.startswith(b"BM") and len(data) > 26 and head[6:10] == b"\x00\x00\x00\x00":
        return "bmp"
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return "webp"
    if head[4:8] == b"ftyp" and head[8:12] in (b"heic", b"heix", b"mif1", b"avif"):
        return "heif"
    if head.startswith((b"\x00\x00\x00\x0cjP  ", b"\xff\x4f\xff\x51")):
        return "jpeg2000"
    return None


def ole_is_encrypted_ooxml(data: bytes) -> bool:
    """Password-protected DOCX/XLSX/PPTX are OLE files holding an "EncryptedPackage" stream."""
    return _ENCRYPTED_PACKAGE in data[: 1 << 20]


def declared_format(ctype: str, filename: str) -> str | None:
    """The format the sender claims, from the content type, else from the file extension."""
    fmt = _DECLARED.get(ctype)
    if fmt:
        return fmt
    ext = extension(filename)
    if ctype.startswith(_OOXML_PREFIX) or ext in _ZIP_EXTS:
        return "zip"
    by_ext = _DECLARED.get(_EXT_TYPES.get(ext, ""))
    if by_ext:
        return by_ext
    if ext == "dat" and filename.lower().endswith("winmail.dat"):
        return "tnef"
    if ctype.startswith("text/") or ctype in _TEXT_APPS:
        return "text"
    if ctype.startswith(_BINARY_MAJOR):
        return "binary"
    if _EXT_TYPES.get(ext, "").startswith("text/") or ext in ("json", "xml", "hl7"):
        return "text"
    return None


def choose(data: bytes, ctype: str, filename: str) -> str:
    """The reader for a blob (see the module docstring for the order of evidence)."""
    declared = declared_format(ctype, filename)
    magic = sniff(data)
    if magic is not None:
        if magic == "pdf" and declared in ("text", "html") and not data.startswith(b"%PDF"):
            return declared  # a text that mentions "%PDF-"
        return magic
    if declared == "ole":  # Excel "exports" are often CSV or HTML named .xls
        return "text" if looks_like_text(data) else "bad:ole"
    if declared in ("pdf", "zip", "gzip", "tnef"):
        return "bad:" + declared
    if declared is not None:
        return declared
    return "text" if looks_like_text(data) else "binary"
