"""HTTP: the aiohttp application, its handlers by resource, request bodies, problem details
rendering, the OpenAPI document and middleware."""
