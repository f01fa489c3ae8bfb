"""The HTTP edge: quart-trio routes that parse, authenticate, call a service, render.

Handlers hold no logic of their own. Input is validated here (types, presence, sizes) and
errors leave as `{"error": {"code", "message"}}` with the matching status.
"""
