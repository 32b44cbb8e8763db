"""Exposing the client certificate of an mTLS connection to the app.

uvicorn verifies client certificates against our CA but does not put them in the ASGI scope;
this protocol class adds the verified certificate of the connection as
``scope["extensions"]["tls"]["client_cert_der"]``.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol


class ClientCertH11Protocol(H11Protocol):
    """H11 protocol that hands each request the peer's certificate, when one was presented."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        ssl_object = transport.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        if der is None:
            return
        app = self.app

        async def with_cert(scope: Any, receive: Any, send: Any) -> None:
            scope.setdefault("extensions", {})["tls"] = {"client_cert_der": der}
            await app(scope, receive, send)

        self.app = with_cert
