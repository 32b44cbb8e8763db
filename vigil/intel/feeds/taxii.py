"""TAXII 2.1 collections: fetch the STIX objects of one collection and read them as a bundle.

The location is the collection's URL (``https://host/api-root/collections/<id>/``). Objects are
fetched page by page with ``taxii2-client`` (``limit``/``next`` paging) and passed to the STIX
reader, so the same patterns are supported and the same ones skipped. ``added_after`` fetches
only what the server added since a previous import.

Reference: TAXII 2.1, section 5.3 (Get Objects),
https://docs.oasis-open.org/cti/taxii/v2.1/taxii-v2.1.html
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import requests
from taxii2client.exceptions import TAXIIServiceException  # type: ignore[import-untyped]
from taxii2client.v21 import Collection, as_pages  # type: ignore[import-untyped]

from vigil.intel.errors import FeedError
from vigil.intel.feeds.base import FeedReader, FeedResult
from vigil.intel.feeds.stix import read_objects

log = logging.getLogger(__name__)

PAGE_SIZE = 500


class TaxiiReader(FeedReader):
    """Indicators from the STIX objects of a TAXII 2.1 collection (by its URL)."""

    name = "taxii"
    formats = "TAXII 2.1 collection URL"

    def __init__(
        self,
        source: str | None = None,
        *,
        user: str | None = None,
        password: str | None = None,
        verify: bool | str = True,
        added_after: str | None = None,
    ) -> None:
        """Set how to reach the collection.

        Args:
            source: The feed name stored with each indicator; by default the collection id.
            user: HTTP basic user, when the server asks for one.
            password: HTTP basic password.
            verify: Check the server's TLS certificate (or the path of a CA bundle to trust).
            added_after: Only objects the server added after this ISO 8601 time.
        """
        super().__init__(source)
        self.user = user
        self.password = password
        self.verify = verify
        self.added_after = added_after

    def read(self, location: str | Path) -> FeedResult:
        """Fetch every object of the collection and read its indicators.

        Raises:
            FeedError: The server cannot be reached, refuses, or the collection is not readable.
        """
        url = str(location).rstrip("/") + "/"
        collection = Collection(url, user=self.user, password=self.password, verify=self.verify)
        filters: dict[str, Any] = {}
        if self.added_after:
            filters["added_after"] = self.added_after
        objects: list[dict[str, Any]] = []
        log.info("fetching TAXII collection %s", url)
        try:
            for envelope in as_pages(collection.get_objects, per_request=PAGE_SIZE, **filters):
                objects.extend(envelope.get("objects", []))
        except (TAXIIServiceException, requests.RequestException) as exc:
            raise FeedError(
                f"cannot read TAXII collection {url}: {exc}; check the URL, credentials and "
                "that the collection is readable"
            ) from exc
        log.info("TAXII collection %s gave %d objects", url, len(objects))
        result = FeedResult(self.source_name(url))
        read_objects(objects, result)
        return result
