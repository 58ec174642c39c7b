"""`python -m function omi-app --url https://<function URL> [--memories]`: this function's Omi app.

Prints the app as Omi's app store takes it (the `app_data` of `POST /v1/apps` in BasedHardware/omi
`backend/routers/apps.py`, validated there by `AppCreate` in `backend/models/app.py`): the
listing (name, description, category, capabilities, private) and `external_integration`, every
URL pointing at this function. The logo is uploaded separately when the app is created, and Omi
fills in the id, author and e-mail itself, so none of them are here.

- `triggers_on: "audio_bytes"`: Omi posts each ~5-s batch of the user's audio to `webhook_url`
  (`/audio`), one POST per batch, signed with the app's signing secret when one is issued.
- `setup_completed_url`: `GET /audio?uid=` answers `{"is_setup_completed": true}`; nothing
  needs setting up.
- `setup_instructions_file_path` and `app_home_url`: `/setup`, a static page. Omi opens the
  home URL with `?uid=` after a Firebase login, but a uid is not a credential, so the home page
  shows nothing personal; a user's history is only ever behind their keyed `/me/` link.
- `actions`: with `memories`, `create_facts`, the id Omi's app form offers as "Create memories"
  and the only spelling `POST /v1/apps` accepts (its `ActionType` enum has no `create_memories`,
  although `POST /v2/integrations/{app_id}/user/memories` accepts either).

`omi-app.json` at the repository root is `manifest(TEMPLATE_URL, memories=True)`, rendered by
`to_json`; tests/test_omi_app.py keeps the two identical.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import re
import socket
import sys
from urllib.parse import urlsplit

TEMPLATE_URL = "https://YOUR-FUNCTION-URL"
APP_NAME = "Song Recognition"
# One of the ids Omi's GET /v1/app-categories lists (backend/routers/apps.py).
CATEGORY = "entertainment-and-fun"

_LABEL = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
# Names that only ever resolve inside a machine or a private network.
_PRIVATE_SUFFIXES = (".localhost", ".local", ".internal", ".home.arpa", ".localdomain", ".lan", ".intranet")
_PRIVATE_NAMES = ("localhost", "localhost.localdomain")


def _ip_literal(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address a host names literally, including the short and numeric IPv4 forms
    (`127.1`, `2130706433`, `0x7f000001`) that resolvers accept; None for a DNS name."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    if all(re.fullmatch(r"0x[0-9a-f]*|[0-9]+", part) for part in host.split(".")):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    return None


def base_url(url: str) -> str:
    """`url` checked and without its trailing slash; ValueError saying what is wrong with it.

    Omi refuses app URLs that are not publicly reachable (private, loopback, link-local), so
    those are refused here before anyone pastes them into the Omi app. A name is not resolved:
    one that only a private DNS knows passes here and is refused by Omi when the app is saved.
    """
    if not isinstance(url, str) or not url.strip():
        raise ValueError("the function URL is empty: give the https:// URL the deploy printed")
    text = url.strip()
    parts = urlsplit(text)
    if parts.scheme.lower() != "https":
        raise ValueError(f"the function URL must start with https:// (audio must not travel unencrypted), got {text!r}")
    if parts.query or text.endswith("?"):
        raise ValueError(
            f"the function URL must have no query, got {text!r}: Omi appends ?uid=... itself, and it returns an"
            " app's URLs to anyone who views the app, so a token in them would not stay secret"
        )
    if parts.fragment or "#" in text:
        raise ValueError(f"the function URL must have no #fragment, got {text!r}")
    if "@" in parts.netloc:
        raise ValueError(f"the function URL must not carry a user name or password, got {text!r}")
    host = (parts.hostname or "").rstrip(".")
    if not host:
        raise ValueError(f"the function URL has no host name, got {text!r}")
    try:
        parts.port
    except ValueError:
        raise ValueError(f"the function URL has an invalid port, got {text!r}") from None
    unreachable = (
        ": Omi refuses app URLs it cannot reach on the public internet; deploy the function (or run it"
        " behind an HTTPS tunnel) and give that URL"
    )
    address = _ip_literal(host)
    if address is not None and not address.is_global:
        raise ValueError(f"{host} is not a public address (private, loopback, link-local or reserved){unreachable}")
    if address is None:
        if host in _PRIVATE_NAMES or host.endswith(_PRIVATE_SUFFIXES):
            raise ValueError(f"{host} names this machine or a private network{unreachable}")
        if not all(_LABEL.match(label) for label in host.split(".")):
            raise ValueError(f"{host!r} is not a valid host name")
    path = parts.path.rstrip("/")
    if any(c.isspace() for c in path):
        raise ValueError(f"the function URL's path must not contain spaces, got {text!r}")
    return f"https://{parts.netloc}{path}"


def description(base: str, memories: bool) -> str:
    lines = [
        "Names the song playing around you. Song Recognition listens to the audio your Omi streams and, when it"
        " hears a song from its catalog, sends you one notification with the title and artist: at most once per"
        " song and at most 9 an hour. It names only songs it is sure of: unknown music, speech and noise get no"
        " notification.",
        "Once a day a notification carries your private history link: the songs you heard, when, and a search"
        " link for each. You can delete your history there at any time.",
    ]
    if memories:
        lines.append("Each recognised song is also saved as an Omi memory.")
    lines.append(
        "Audio is kept only until a song is recognised (at most a 60-second window) and is never logged."
        f" Privacy: {base}/privacy"
    )
    return "\n\n".join(lines)


def manifest(base_url_: str, memories: bool) -> dict:
    """The app for the function at `base_url_` (https, public, no query); ValueError otherwise."""
    base = base_url(base_url_)
    return {
        "name": APP_NAME,
        "description": description(base, memories),
        "category": CATEGORY,
        "capabilities": ["external_integration"],
        # Only its owner can install a private app: keep it so until it works end to end.
        "private": True,
        "external_integration": {
            "triggers_on": "audio_bytes",
            "webhook_url": f"{base}/audio",
            "setup_completed_url": f"{base}/audio",
            "setup_instructions_file_path": f"{base}/setup",
            "is_instructions_url": True,
            "auth_steps": [],
            "app_home_url": f"{base}/setup",
            "actions": [{"action": "create_facts"}] if memories else [],
        },
    }


def to_json(app: dict) -> str:
    """The manifest as written to omi-app.json and printed by the command."""
    return json.dumps(app, indent=2, ensure_ascii=False) + "\n"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `omi-app` subcommand's options, for function.cli to mount."""
    parser.add_argument("--url", required=True, help="the deployed function's public https:// URL (no query)")
    parser.add_argument(
        "--memories",
        action="store_true",
        help="ask for Omi's 'Create memories' action (deploy with OMI_MEMORIES=true to use it)",
    )


def run(args: argparse.Namespace) -> int:
    """Print the manifest; 0, or 2 with the reason on stderr when the URL is not usable."""
    try:
        app = manifest(args.url, memories=args.memories)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    sys.stdout.write(to_json(app))
    return 0
