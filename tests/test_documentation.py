"""The documentation: a README that is a front door, and pages under docs/ that stay true.

Every relative link of the README and the docs pages resolves (the file, and the heading an
anchor names, as GitHub makes heading anchors); every project path (``docs/...``,
``tests/...``, ``server/...``) named anywhere in the code and the docs exists; and the API page
names every route of the OpenAPI document and every problem code the service answers, so that a
new route or code cannot land undocumented.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import server.problems
from server.http.openapi import openapi_document
from tests.service_process import PROJECT_ROOT

README = PROJECT_ROOT / "README.md"
DOCS = sorted((PROJECT_ROOT / "docs").glob("*.md"))
PAGES = [README, *DOCS]
API_PAGE = PROJECT_ROOT / "docs" / "api.md"
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
# a path of this project (docs/..., tests/...); not the service's routes such as /api/docs/
PROJECT_PATH = re.compile(r"(?<![\w/.-])(?:docs|tests|server|loadtest|migrations|scripts)/[\w./*-]*[\w/]")


def _prose(text: str) -> str:
    """``text`` without its fenced code blocks (a link or heading there is not one)."""
    return re.sub(r"^```.*?^```", "", text, flags=re.MULTILINE | re.DOTALL)


def _anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation other than ``-`` and ``_`` dropped,
    spaces as ``-``."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    return {_anchor(line.lstrip("#")) for line in _prose(page.read_text()).splitlines()
            if re.match(r"#{1,6} ", line)}


def _links(page: Path) -> list[str]:
    return [target for target in LINK.findall(_prose(page.read_text()))
            if not re.match(r"[a-z][a-z0-9+.-]*:", target)]  # http:, https:, mailto: are not ours


def test_the_readme_is_a_front_door_of_at_most_250_lines():
    text = README.read_text()
    assert len(text.splitlines()) <= 250
    for page in DOCS:  # and a map of every page
        assert f"(docs/{page.name})" in text, page.name


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_every_relative_link_resolves_to_a_file_and_heading(page):
    broken = []
    for target in _links(page):
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        if not resolved.exists():
            broken.append(target)
        elif anchor and resolved.suffix == ".md" and anchor not in _anchors(resolved):
            broken.append(target)
    assert broken == []


def test_every_project_path_named_in_the_code_and_the_docs_exists():
    """A path such as docs/api.md, tests/test_holds.py or server/ledger/sql/ named in a docstring,
    a comment or a page names a file or folder that exists (the history migrations, 0001-0011, may
    name what has moved since)."""
    files = [README, *(PROJECT_ROOT / name for name in ("schemathesis.toml", "pyproject.toml", "Dockerfile",
                                                          "docker-compose.yml", ".ci/run"))]
    for root in ("server", "tests", "loadtest", "scripts", "docs", "migrations"):
        files += [path for path in (PROJECT_ROOT / root).rglob("*")
                  if path.is_file() and path.suffix in (".py", ".md", ".sql", ".sh", ".lua", "")
                  and not (root == "migrations" and path.name[:4] <= "0011")]
    named = {}
    for path in files:
        for found in PROJECT_PATH.findall(path.read_text(errors="replace")):
            if "*" not in found:
                named.setdefault(found.rstrip("/."), str(path.relative_to(PROJECT_ROOT)))
    assert {path: where for path, where in named.items() if not (PROJECT_ROOT / path).exists()} == {}


def test_the_api_page_names_every_route_of_the_openapi_document():
    page = API_PAGE.read_text()
    routes = [f"{method.upper()} {path}" for path, operations in openapi_document().get("paths").items()
              for method in operations if method in ("get", "put", "post", "patch", "delete")]
    assert len(routes) >= 29
    assert [route for route in routes if f"`{route}`" not in page] == []


def _problem_codes() -> set[str]:
    """Every ``code`` a :class:`server.problems.Problem` subclass answers with, and every code the
    OpenAPI document lists in an error response."""
    codes = {cls.code for cls in vars(server.problems).values()
             if isinstance(cls, type) and issubclass(cls, server.problems.Problem)
             and isinstance(getattr(cls, "code", None), str)}
    for operations in openapi_document()["paths"].values():
        for operation in operations.values():
            for status, response in operation.get("responses", {}).items():
                if not status.startswith("2"):
                    codes |= {code for code in response.get("description", "").split(" / ")
                              if re.fullmatch(r"[a-z_]+", code)}
    return codes


def test_the_api_pages_error_table_has_every_problem_code():
    table = {match for match in re.findall(r"^\| [0-9x]{3} \| `([a-z_]+)` \|", API_PAGE.read_text(), re.MULTILINE)}
    codes = _problem_codes()
    assert len(codes) >= 40
    assert sorted(codes - table) == []
