"""The API reference page, GET /api/docs: Swagger UI rendering the service's own OpenAPI document,
every asset served by the service itself (users run it offline and behind firewalls)."""

import json
import re
import shutil
import subprocess
import urllib.request
from html.parser import HTMLParser

import pytest


def fetch(url: str) -> tuple[int, str, bytes]:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.status, response.headers["Content-Type"], response.read()


class _References(HTMLParser):
    """The ``src`` and ``href`` attributes of a page, in order."""

    def __init__(self):
        super().__init__()
        self.found: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.found += [value for name, value in attrs if name in ("src", "href") and value]


def references(page: bytes) -> list[str]:
    parser = _References()
    parser.feed(page.decode())
    return parser.found


def test_the_reference_page_is_html_naming_the_service(service_url):
    status, content_type, page = fetch(f"{service_url}/api/docs")
    assert (status, content_type.split(";")[0]) == (200, "text/html")
    assert b"<title>balance-api: API reference</title>" in page


def test_every_asset_the_page_references_is_served_by_the_service_itself(service_url):
    _, _, page = fetch(f"{service_url}/api/docs")
    assets = references(page)
    assert len(assets) >= 4  # stylesheets, icons, the Swagger UI bundle and its preset
    for asset in assets:
        assert asset.startswith("/api/docs/"), f"{asset} is not the service's own (no CDN)"
        status, _, body = fetch(service_url + asset)
        assert status == 200 and body, asset


def test_the_page_renders_the_services_own_openapi_document(service_url):
    _, _, page = fetch(f"{service_url}/api/docs")
    (document_path,) = re.findall(r'url: "([^"]+)"', page.decode())
    _, content_type, rendered = fetch(service_url + document_path)
    _, _, served = fetch(f"{service_url}/api/openapi.json")
    assert content_type.startswith("application/json") and json.loads(rendered) == json.loads(served)


@pytest.mark.skipif(shutil.which("chromium") is None,
                    reason="Debian's chromium is not installed (apt-get install chromium) to render the page")
def test_a_headless_browser_renders_every_route_of_the_api(service_url):
    """Swagger UI builds the page in the browser from the document: every path must show up."""
    dom = subprocess.run(
        ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=15000", "--dump-dom",
         f"{service_url}/api/docs"], capture_output=True, text=True, timeout=120).stdout
    _, _, served = fetch(f"{service_url}/api/openapi.json")
    paths = json.loads(served)["paths"]
    rendered = set(re.findall(r'data-path="([^"]+)"', dom))
    assert set(paths) <= rendered, sorted(set(paths) - rendered)
