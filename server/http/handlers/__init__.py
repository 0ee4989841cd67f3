"""HTTP handlers by resource: parse the request, call the ledger, shape the response. Nothing else.
JSON field names are camelCase; amounts and balances are integers in minor units; times are
RFC 3339 with a UTC offset.
"""
