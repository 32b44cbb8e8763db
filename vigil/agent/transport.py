"""The agent's HTTPS client: mTLS with its enrolled certificate, CA pinned at enrollment.

While the host is isolated, DNS is blocked, so the link can be pinned to the server address the
isolation proved reachable: requests then go to that address, while TLS still checks the
certificate against the server's name (SNI) and the ``Host`` header still carries it.
"""

from __future__ import annotations

import ipaddress
import logging
import ssl
import time
from typing import Any
from urllib.parse import urlsplit

import httpx

from vigil.agent.identity import Identity
from vigil.schema import jsonfast

log = logging.getLogger(__name__)

API_PATH = "/api/v1/agent"


def _same_address(address: str, host: str) -> bool:
    try:
        return ipaddress.ip_address(address) == ipaddress.ip_address(host)
    except ValueError:
        return False


class ServerLink:
    """Calls to the server's agent endpoints; raises httpx errors for the caller to retry.

    Attributes:
        last_contact: ``time.monotonic()`` of the last response from the server (any status),
            or of the link's creation; the isolation lease is measured from it.
    """

    def __init__(self, identity: Identity, timeout: float = 30.0) -> None:
        context = ssl.create_default_context(cafile=str(identity.ca_path))
        context.load_cert_chain(str(identity.cert_path), str(identity.key_path))
        self._server = urlsplit(identity.server_url)
        self._route: tuple[str, dict[str, str], dict[str, Any]] | None = None
        self._pinned: str | None = None
        self.last_contact = time.monotonic()
        self._client = httpx.Client(
            base_url=identity.server_url + API_PATH,
            verify=context,
            timeout=timeout,
            event_hooks={"response": [self._heard]},
        )

    def _heard(self, response: httpx.Response) -> None:
        self.last_contact = time.monotonic()

    @property
    def pinned(self) -> str | None:
        """The address requests go to instead of the server's name, if any."""
        return self._pinned

    def pin(self, address: str | None) -> None:
        """Send to ``address`` instead of resolving the server's name; None resolves it again.

        Pinning to the address the server URL already names changes nothing.
        """
        host = self._server.hostname or ""
        if address is None or _same_address(address, host):
            if self._route is not None:
                log.info("server link: back to resolving %s", host)
            self._route = self._pinned = None
            return
        netloc = f"[{address}]" if ":" in address else address
        base = f"https://{netloc}:{self._server.port or 443}{API_PATH}"
        self._route = (base, {"Host": self._server.netloc}, {"sni_hostname": host})
        self._pinned = address
        log.info("server link: sending to %s for %s while isolated", address, host)

    def close(self) -> None:
        self._client.close()

    def _request(
        self, method: str, path: str, headers: dict[str, str] | None = None, **kwargs: Any
    ) -> httpx.Response:
        route = self._route
        if route is None:
            return self._client.request(method, path, headers=headers, **kwargs)
        base, route_headers, extensions = route
        return self._client.request(
            method,
            base + path,
            headers={**route_headers, **(headers or {})},
            extensions=extensions,
            **kwargs,
        )

    def post(self, path: str, payload: dict[str, Any]) -> httpx.Response:
        return self.post_json(path, jsonfast.dumps(payload))

    def post_json(self, path: str, body: bytes) -> httpx.Response:
        """POST a body that is JSON already."""
        return self._request(
            "POST", path, content=body, headers={"content-type": "application/json"}
        )

    def poll_tasks(self, wait: float) -> list[dict[str, Any]]:
        response = self._request("GET", "/tasks", params={"wait": wait}, timeout=wait + 15)
        response.raise_for_status()
        tasks: list[dict[str, Any]] = response.json()
        return tasks
