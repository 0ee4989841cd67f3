"""Check every response a test receives against the service's OpenAPI 3.1 document.

``contract_middleware(document)`` is an aiohttp client middleware: it reads each response and
validates its status, content type and JSON body (JSON Schema 2020-12, the dialect of OpenAPI 3.1)
against the operation the request matched. Paths or methods the document does not describe (a test
of an unknown route, or of a wrong method) are not checked here.
"""

from __future__ import annotations

import json
import re

from aiohttp import ClientHandlerType, ClientRequest, ClientResponse
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

DOCUMENT_URI = "urn:balance-api:openapi"


class ContractViolation(AssertionError):
    pass


class OpenApiContract:
    """The operations of an OpenAPI document, and response validation against them."""

    def __init__(self, document: dict):
        self.document = document
        self.registry = Registry().with_resource(DOCUMENT_URI, Resource(document, specification=DRAFT202012))
        self.operations = [
            (re.compile("^" + re.sub(r"\{[^/]+\}", "[^/]+", path) + "$"), path, methods)
            for path, methods in document["paths"].items()
        ]

    def operation(self, method: str, path: str) -> tuple[str, dict] | None:
        for pattern, template, methods in self.operations:
            if pattern.match(path) and method.lower() in methods:
                return template, methods[method.lower()]
        return None

    def validate(self, method: str, path: str, status: int, content_type: str, body: bytes) -> None:
        """Raise :class:`ContractViolation` unless the response is one the document describes."""
        found = self.operation(method, path)
        if found is None:
            return
        template, operation = found
        where = f"{method} {template} -> {status}"
        response = operation["responses"].get(str(status))
        if response is None and status in HTTP_LAYER_STATUSES:  # answered before any handler ran
            response = operation["responses"].get("default")
        if response is None:
            raise ContractViolation(f"{where}: status not documented")
        media = response.get("content", {}).get(content_type)
        if media is None:
            raise ContractViolation(f"{where}: content type {content_type!r} not documented")
        if not content_type.endswith("json"):  # e.g. /metrics' text/plain: status and type checked
            return
        schema = {"$ref": f"{DOCUMENT_URI}#/{_pointer_to(operation, self.document)}/responses/{status}"
                          f"/content/{content_type.replace('/', '~1')}/schema"}
        errors = sorted(Draft202012Validator(schema, registry=self.registry).iter_errors(json.loads(body)),
                        key=lambda error: error.path)
        if errors:
            raise ContractViolation(f"{where}: {errors[0].message} at {list(errors[0].path)}")


def _pointer_to(operation: dict, document: dict) -> str:
    for path, methods in document["paths"].items():
        for method, candidate in methods.items():
            if candidate is operation:
                return f"paths/{path.replace('~', '~0').replace('/', '~1')}/{method}"
    raise KeyError("operation not in document")


HTTP_LAYER_STATUSES = (400, 417, 501)  # the document's "default" response (server/http/http_edges.py)


def contract_middleware(contract: OpenApiContract):
    """An aiohttp client middleware validating every response against ``contract``."""

    async def validate_response(request: ClientRequest, handler: ClientHandlerType) -> ClientResponse:
        response = await handler(request)
        body = await response.read()
        contract.validate(request.method, request.url.raw_path, response.status, response.content_type, body)
        return response

    return validate_response
