"""The analyst side of the CLI: finding the server and calling its REST API."""

from __future__ import annotations

import hashlib
import json
import os
import ssl
from pathlib import Path
from typing import Any

import httpx

from vigil.errors import VigilError


class CliError(VigilError):
    """A CLI command failed; the message is shown to the user as it is."""


class ApiClient:
    """REST calls with the analyst's token, verified against the server's CA."""

    def __init__(self, url: str, token: str, ca: str | None) -> None:
        verify: ssl.SSLContext | bool = ssl.create_default_context(cafile=ca) if ca else True
        self._client = httpx.Client(
            base_url=url.rstrip("/") + "/api/v1",
            headers={"Authorization": f"Bearer {token}"},
            verify=verify,
            timeout=60,
        )

    def close(self) -> None:
        self._client.close()

    @classmethod
    def from_environment(cls, data_dir: Path) -> ApiClient:
        """VIGIL_SERVER, VIGIL_TOKEN and VIGIL_CA win; otherwise the files in the data dir."""
        info_path = data_dir / "server.json"
        info = json.loads(info_path.read_text()) if info_path.exists() else {}
        url = os.environ.get("VIGIL_SERVER") or info.get("url")
        token = os.environ.get("VIGIL_TOKEN")
        token_path = data_dir / "admin-token"
        if not token and token_path.exists():
            token = token_path.read_text().strip()
        if not url or not token:
            raise CliError(
                f"no server found in {data_dir}: start one with 'vigil up', pass --data-dir, "
                "or set VIGIL_SERVER and VIGIL_TOKEN"
            )
        return cls(url, token, os.environ.get("VIGIL_CA") or info.get("ca"))

    def download(self, path: str, target: Path) -> tuple[int, str]:
        """Stream a binary response into ``target``; return the bytes written and their sha256."""
        written = 0
        digest = hashlib.sha256()
        try:
            with self._client.stream("GET", path) as response:
                if response.status_code >= 400:
                    response.read()
                    raise CliError(f"GET {path} failed ({response.status_code}): {response.text}")
                with target.open("wb") as handle:
                    for chunk in response.iter_bytes():
                        handle.write(chunk)
                        digest.update(chunk)
                        written += len(chunk)
        except httpx.HTTPError as exc:
            raise CliError(f"cannot reach the server: {exc}") from exc
        return written, digest.hexdigest()

    def call(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        params: dict[str, Any] | None = None,
        content: str | None = None,
        content_type: str = "application/yaml",
    ) -> Any:
        """One REST call; ``body`` is sent as JSON, or ``content`` as text of ``content_type``."""
        headers = {"Content-Type": content_type} if content is not None else None
        try:
            response = self._client.request(
                method, path, json=body, params=params, content=content, headers=headers
            )
        except httpx.HTTPError as exc:
            raise CliError(f"cannot reach the server: {exc}") from exc
        if response.status_code >= 400:
            try:
                detail = response.json().get("detail", response.text)
            except ValueError:
                detail = response.text
            raise CliError(f"{method} {path} failed ({response.status_code}): {detail}")
        return response.json()
