"""The one request path (SPEC C4a): every way in is a thin adapter over it; no aiohttp.web here."""
