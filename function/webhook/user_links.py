"""Each user's private link to their own history: `/me/<uid>?key=<k>`.

Omi's uid is not a credential (anyone can open `app_home_url?uid=<victim>`), so the key is an
HMAC of the uid under a server secret (`Settings.link_secret`): only the server can mint it, it
needs no storage, and it can only be checked, never looked up. The link reaches a user only
through Omi's own authenticated channels to that uid (their notifications and memories), never
from an endpoint that takes a bare uid. Rotating the secret revokes every link.
"""

from __future__ import annotations

import hashlib
import hmac
from urllib.parse import quote, urlencode

KEY_CHARS = 32  # 128 bits of the HMAC: unguessable, and short enough for a notification


def user_key(secret: str, uid: str) -> str:
    return hmac.new(secret.encode("utf-8"), b"me:" + uid.encode("utf-8"), hashlib.sha256).hexdigest()[:KEY_CHARS]


def key_matches(secret: str, uid: str, key: str) -> bool:
    """Constant-time; False when no secret is configured, so no key ever opens anything then."""
    if not secret:
        return False
    return hmac.compare_digest(user_key(secret, uid).encode(), key.encode("utf-8", "replace"))


def history_link(base_url: str, secret: str, uid: str) -> str | None:
    """The absolute link to the uid's page, or None without a secret or a base URL."""
    if not secret or not base_url:
        return None
    return f"{base_url.rstrip('/')}/me/{quote(uid, safe='')}?{urlencode({'key': user_key(secret, uid)})}"


def search_url(title: str | None, artist: str | None) -> str:
    """A web search for the song, for the "search for it" link on the user's page."""
    terms = " ".join(t for t in (title, artist) if t)
    return f"https://duckduckgo.com/?{urlencode({'q': terms})}"
