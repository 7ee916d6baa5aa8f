"""Keep credentials out of params, tags, logs and printed links."""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

_SECRET_QUERY = re.compile(
    r"(token|key|secret|password|passwd|pwd|sig|signature|credential|auth|x-amz-)",
    re.IGNORECASE,
)
REDACTED = "REDACTED"


def redact_url(value: str) -> str:
    """``value`` with a URL's password and secret-looking query values masked.

    Strings that are not URLs with a scheme and host come back unchanged.
    """
    try:
        parts = urlsplit(value)
    except ValueError:
        return value
    if not parts.scheme or not parts.netloc:
        return value
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        user = userinfo.split(":", 1)[0]
        netloc = (
            f"{user}:{REDACTED}@{host}" if ":" in userinfo else f"{REDACTED}@{host}"
        )
    query = urlencode(
        [
            (k, REDACTED if _SECRET_QUERY.search(k) else v)
            for k, v in parse_qsl(parts.query, keep_blank_values=True)
        ],
        safe=REDACTED,
    )
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def redact_text(text: str) -> str:
    """Every URL inside ``text`` redacted."""
    return re.sub(
        r"[a-zA-Z][a-zA-Z0-9+.-]*://[^\s'\"()]+", lambda m: redact_url(m[0]), text
    )
