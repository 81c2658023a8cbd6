"""Shelly Gen2 digest authentication (SHA-256, user `admin`): HTTP headers and RPC frames' `auth`."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

from evpilot.api.shelly.rpc import UNAUTHORIZED, RpcError

USERNAME = "admin"
# A digest nonce is accepted this long (s); after that the client gets a fresh challenge ("stale").
NONCE_TTL_S = 3600.0
# Remembered (nonce, nc, cnonce) triples: a replayed authorisation is refused.
REPLAY_MEMORY = 4096
# Methods that answer without authentication, as on a real device.
PUBLIC_METHODS = frozenset({"Shelly.GetDeviceInfo"})


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# Shelly's RPC-frame digest hashes a fixed method:uri pair (there is no HTTP request line).
_FRAME_HA2 = _sha("dummy_method:dummy_uri")
_HEADER_PARAM = re.compile(r'(\w+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^,\s]*))')


class DigestAuth:
    """Issues and checks SHA-256 digest nonces for user `admin`."""

    def __init__(self, password: str) -> None:
        self.password = password
        self._secret = secrets.token_bytes(32)
        self._seen: OrderedDict[tuple[str, str, str], None] = OrderedDict()

    def nonce(self) -> str:
        """A fresh nonce: issue time and its MAC, so no nonce table is needed."""
        stamp = f"{int(time.time()):x}"
        mac = hmac.new(self._secret, stamp.encode(), hashlib.sha256).hexdigest()[:24]
        return stamp + mac

    def _nonce_state(self, nonce: str) -> str:
        stamp, mac = nonce[:-24], nonce[-24:]
        good = hmac.new(self._secret, stamp.encode(), hashlib.sha256).hexdigest()[:24]
        if not stamp or not hmac.compare_digest(mac, good):
            return "bad"
        try:
            issued = int(stamp, 16)
        except ValueError:
            return "bad"
        return "ok" if 0 <= time.time() - issued <= NONCE_TTL_S else "stale"

    def _fresh(self, nonce: str, nc: str, cnonce: str) -> bool:
        key = (nonce, nc, cnonce)
        if key in self._seen:
            return False
        self._seen[key] = None
        while len(self._seen) > REPLAY_MEMORY:
            self._seen.popitem(last=False)
        return True

    def _check(self, realm: str, fields: Mapping[str, Any], ha2: str) -> str:
        """'ok', 'stale' or 'bad' for the fields of a digest answer."""
        try:
            username, their_realm, nonce = fields["username"], fields["realm"], fields["nonce"]
            nc, cnonce, response = str(fields["nc"]), fields["cnonce"], fields["response"]
        except KeyError:
            return "bad"
        if not all(isinstance(x, str) for x in (username, their_realm, nonce, cnonce, response)):
            return "bad"
        if fields.get("algorithm", "SHA-256") != "SHA-256" or username != USERNAME or their_realm != realm:
            return "bad"
        state = self._nonce_state(nonce)
        if state != "ok":
            return state
        ha1 = _sha(f"{USERNAME}:{realm}:{self.password}")
        expected = _sha(f"{ha1}:{nonce}:{nc}:{cnonce}:auth:{ha2}")
        if not hmac.compare_digest(expected, response):
            return "bad"
        return "ok" if self._fresh(nonce, nc, cnonce) else "bad"

    def check_frame(self, realm: str, auth: object) -> str:
        """Check the `auth` object of an RPC frame."""
        if not isinstance(auth, dict):
            return "bad"
        if isinstance(auth.get("nc"), bool) or not isinstance(auth.get("nc"), int | str):
            return "bad"
        return self._check(realm, auth, _FRAME_HA2)

    def check_header(self, realm: str, header: str | None, method: str, uri: str) -> str:
        """Check an HTTP `Authorization: Digest ...` header."""
        if header is None or header[:7].lower() != "digest ":
            return "bad"
        fields: dict[str, str] = {}
        for m in _HEADER_PARAM.finditer(header[7:]):
            fields[m.group(1).lower()] = m.group(2) if m.group(2) is not None else m.group(3)
        # A request target with raw quotes (the seed's URLs sent by `curl -g`) cannot be parsed as a
        # quoted-string; it still matches when it appears verbatim.
        if fields.get("qop") != "auth" or (fields.get("uri") != uri and f'uri="{uri}"' not in header):
            return "bad"
        return self._check(realm, fields, _sha(f"{method}:{uri}"))

    def frame_challenge(self, realm: str, stale: bool = False) -> RpcError:
        """The 401 error an RPC frame without (valid) auth gets."""
        challenge: dict[str, Any] = {
            "auth_type": "digest",
            "nonce": self.nonce(),
            "nc": 1,
            "realm": realm,
            "algorithm": "SHA-256",
        }
        if stale:
            challenge["stale"] = True
        return RpcError(UNAUTHORIZED, json.dumps(challenge), stale)

    def www_authenticate(self, realm: str, stale: bool = False) -> str:
        """The HTTP 401 challenge header."""
        extra = ", stale=true" if stale else ""
        return f'Digest qop="auth", realm="{realm}", nonce="{self.nonce()}", algorithm=SHA-256{extra}'
