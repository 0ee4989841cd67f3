"""``/api/webhooks``: endpoints that get the change feed as signed HTTP POSTs (server/running/webhook_delivery.py)."""

from __future__ import annotations

from aiohttp import web

from server.http.app_keys import DATABASE, SETTINGS
from server.http.bearer_auth import actor_of
from server.http.handlers.documents import timestamp
from server.http.handlers.paths import id_from_path, page_query, refuse_unknown_parameters, split_page
from server.http.idempotent_requests import respond
from server.http.request_bodies import EmptyBody, NewWebhook, WebhookPatch, read_json_body
from server.ledger import webhooks
from server.ledger.idempotency import Outcome
from server.running.webhook_delivery import check_target


def webhook_json(endpoint: webhooks.Endpoint) -> dict:
    """An endpoint as the API shows it: never its secret (that is in ``POST``'s answer alone)."""
    return {"webhookId": endpoint.webhook_id, "url": endpoint.url, "types": endpoint.types,
            "description": endpoint.description, "status": endpoint.status, "failures": endpoint.failures,
            "nextAttemptAt": timestamp(endpoint.next_attempt_at) if endpoint.status == "enabled" else None,
            "disabledAt": timestamp(endpoint.disabled_at) if endpoint.disabled_at else None,
            "cursor": endpoint.cursor.encode(), "createdAt": timestamp(endpoint.created_at),
            "updatedAt": timestamp(endpoint.updated_at)}


def delivery_json(delivery: webhooks.Delivery) -> dict:
    return {"deliveryId": delivery.delivery_id, "eventId": delivery.event.encode(), "attempt": delivery.attempt,
            "statusCode": delivery.status_code, "latencyMs": round(delivery.latency_ms, 3), "error": delivery.error,
            "nextRetryAt": timestamp(delivery.next_retry_at) if delivery.next_retry_at else None,
            "at": timestamp(delivery.at)}


async def create_webhook(request: web.Request) -> web.Response:
    """``POST /api/webhooks`` ``{"url", "types"?, "description"?}`` → 201 the endpoint with its
    signing ``secret`` (shown this once); it gets the events committed from about now on. A target
    that is not public is 422 ``webhook_target_not_allowed`` (unless WEBHOOK_ALLOW_PRIVATE_TARGETS)."""
    body = await read_json_body(request, NewWebhook)
    await check_target(body.url, request.app[SETTINGS].webhook_allow_private_targets)

    async def operation(db, key):
        endpoint = await webhooks.create_endpoint(db, body.url, body.types, body.description, actor_of(request))
        return Outcome.of(201, {**webhook_json(endpoint), "secret": endpoint.secret},
                          location=f"/api/webhooks/{endpoint.webhook_id}")

    return await respond(request, body, operation)


async def list_webhooks(request: web.Request) -> web.Response:
    """``GET /api/webhooks`` → 200 ``{"webhooks": [...]}``, oldest first."""
    refuse_unknown_parameters(request)
    async with request.app[DATABASE].connection() as db:
        endpoints = await webhooks.list_endpoints(db)
    return web.json_response({"webhooks": [webhook_json(e) for e in endpoints]})


async def get_webhook(request: web.Request) -> web.Response:
    """``GET /api/webhooks/{id}`` → 200 the endpoint, or 404 ``webhook_not_found``."""
    webhook_id = id_from_path(request)
    refuse_unknown_parameters(request)
    async with request.app[DATABASE].connection() as db:
        return web.json_response(webhook_json(await webhooks.read_endpoint(db, webhook_id)))


async def update_webhook(request: web.Request) -> web.Response:
    """``PATCH /api/webhooks/{id}`` ``{"url"?, "types"?, "description"?, "status"?}`` → 200 the
    endpoint; ``"status": "enabled"`` starts a disabled one again where it stopped."""
    webhook_id = id_from_path(request)
    body = await read_json_body(request, WebhookPatch)
    if body.url is not None:
        await check_target(body.url, request.app[SETTINGS].webhook_allow_private_targets)

    async def operation(db, key):
        endpoint = await webhooks.update_endpoint(db, webhook_id, body.url, body.types,
                                                  "types" in body.model_fields_set, body.description, body.status,
                                                  actor_of(request))
        return Outcome.of(200, webhook_json(endpoint))

    return await respond(request, body, operation)


async def delete_webhook(request: web.Request) -> web.Response:
    """``DELETE /api/webhooks/{id}`` → 204; nothing more is sent to it."""
    webhook_id = id_from_path(request)
    body = await read_json_body(request, EmptyBody) if request.body_exists else EmptyBody()

    async def operation(db, key):
        await webhooks.delete_endpoint(db, webhook_id, actor_of(request))
        return Outcome(204, "", "application/json")

    return await respond(request, body, operation)


async def list_deliveries(request: web.Request) -> web.Response:
    """``GET /api/webhooks/{id}/deliveries?limit=&cursor=`` → 200 ``{"deliveries", "nextCursor"}``,
    newest attempt first."""
    webhook_id = id_from_path(request)
    query = page_query(request)
    async with request.app[DATABASE].connection() as db:
        rows = await webhooks.list_deliveries(db, webhook_id, query.before, query.limit + 1)
    page, cursor = split_page(rows, lambda d: d.delivery_id, query.limit)
    return web.json_response({"webhookId": webhook_id, "deliveries": [delivery_json(d) for d in page],
                              "nextCursor": cursor})

