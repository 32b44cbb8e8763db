"""TAXII 2.1: read a collection through taxii2-client from a stand-in server on loopback.

The server below stands in for a remote TAXII 2.1 server (a threat-intel provider's), which
cannot be reached from the test environment. It answers discovery, API root, collections and
paged Get Objects as TAXII 2.1 section 4-5 describe, serving the objects of the OASIS Poison Ivy
report from the shared data.
"""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from taxii2client.v21 import Server

from tests.intel.data import STIX_SCHEMAS
from vigil.intel import FeedError, IntelStore, import_feed
from vigil.intel.feeds import REGISTRY

MEDIA = "application/taxii+json;version=2.1"
COLLECTION = "91a7b528-80eb-42ed-a74d-c6fbd5a26116"
PAGE = 40
OBJECTS: list[dict[str, Any]] = json.loads(
    (STIX_SCHEMAS / "threat-reports" / "poisonivy.json").read_text()
)["objects"]
AUTH = "Basic " + base64.b64encode(b"analyst:secret").decode()


class StandIn(BaseHTTPRequestHandler):
    """Answers the TAXII 2.1 endpoints taxii2-client calls, with basic authentication."""

    def do_GET(self) -> None:  # noqa: N802 (the name http.server calls)
        if self.headers.get("Authorization") != AUTH:
            self.send_error(401)
            return
        url = urlsplit(self.path)
        base = f"http://{self.headers['Host']}"
        pages = {
            "/taxii2/": {"title": "stand-in", "api_roots": [f"{base}/api1/"]},
            "/api1/": {"title": "api1", "versions": [MEDIA], "max_content_length": 10_000_000},
            "/api1/collections/": {"collections": [self.collection()]},
            f"/api1/collections/{COLLECTION}/": self.collection(),
        }
        if url.path == f"/api1/collections/{COLLECTION}/objects/":
            self.reply(self.objects(parse_qs(url.query)))
        elif url.path in pages:
            self.reply(pages[url.path])
        else:
            self.send_error(404)

    @staticmethod
    def collection() -> dict[str, Any]:
        return {"id": COLLECTION, "title": "poisonivy", "can_read": True, "can_write": False}

    @staticmethod
    def objects(query: dict[str, list[str]]) -> dict[str, Any]:
        start = int(query.get("next", ["0"])[0])
        limit = min(int(query.get("limit", [str(PAGE)])[0]), PAGE)
        page = OBJECTS[start : start + limit]
        more = start + limit < len(OBJECTS)
        envelope: dict[str, Any] = {"more": more, "objects": page}
        if more:
            envelope["next"] = str(start + limit)
        return envelope

    def reply(self, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", MEDIA)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        """Keep the test output quiet."""


@pytest.fixture(scope="module")
def taxii_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), StandIn)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_collection_is_found_by_discovery_and_read_page_by_page(taxii_url: str) -> None:
    server = Server(f"{taxii_url}/taxii2/", user="analyst", password="secret")
    collection = server.api_roots[0].collections[0]
    assert collection.title == "poisonivy"

    reader = REGISTRY["taxii"]("poisonivy-taxii", user="analyst", password="secret")
    result = reader.read(collection.url)
    # The same indicators as reading the bundle file, fetched in pages of 40 objects.
    from_file = REGISTRY["stix"]("poisonivy-taxii").read(
        STIX_SCHEMAS / "threat-reports" / "poisonivy.json"
    )
    assert len(OBJECTS) > PAGE
    assert result.indicators == from_file.indicators and len(result.indicators) == 66
    assert result.skipped == from_file.skipped


def test_import_from_taxii(taxii_url: str, tmp_path: Path) -> None:
    store = IntelStore.open(tmp_path)
    url = f"{taxii_url}/api1/collections/{COLLECTION}/"
    report = import_feed(store, url, "taxii", user="analyst", password="secret")
    assert report.source == COLLECTION
    assert report.counts()["added"] == 44
    store.close()


def test_refused_credentials_say_what_to_check(taxii_url: str) -> None:
    reader = REGISTRY["taxii"](user="analyst", password="wrong")
    with pytest.raises(FeedError, match="check the URL, credentials"):
        reader.read(f"{taxii_url}/api1/collections/{COLLECTION}/")
