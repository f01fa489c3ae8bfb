"""The browser client's files (`web/static/`), served at `/` on the API's own port.

The files ship inside the package and are served as they are: plain ES modules and CSS,
no build step. At startup they are read once into memory, and a *release* name is made
from a hash of all of them: every asset is served under `/assets/<release>/<path>` with a
year-long immutable cache, and `index.html` (served at `/`, never cached) names that
release. Modules import each other by relative path (`./api.js`), so they resolve under
the same release directory and nothing inside them is rewritten; a change to any file
makes a new release, and a browser holding the old page fetches every asset anew
(about 30 KB compressed: cheaper than the import rewriting per-file hashes would need).
docs/architecture.md, "The web client", says more.

The service worker is the exception: a browser checks its script at a fixed URL
(`/sw.js`) and the scope it controls is its directory, so it is served at the root
without caching.

Every answer carries a strict Content-Security-Policy (scripts, styles and connections
from this origin only, no inline code, no eval, never framed), `Referrer-Policy:
no-referrer` and `X-Content-Type-Options: nosniff`. Compressible files are gzipped once
at startup and sent so to clients that accept it.
"""

from __future__ import annotations

import gzip
import hashlib
import mimetypes
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable

from quart import Response, request
from quart_trio import QuartTrio

#: The page's policy. `connect-src 'self'` covers the same-origin WebSocket (CSP level 3);
#: `img-src`/`media-src` take `blob:` for media the app fetched with its token.
CONTENT_SECURITY_POLICY = "; ".join([
    "default-src 'none'",
    "script-src 'self'",
    "style-src 'self'",
    "img-src 'self' blob: data:",
    "media-src 'self' blob:",
    "connect-src 'self'",
    "font-src 'self'",
    "manifest-src 'self'",
    "worker-src 'self'",
    "base-uri 'none'",
    "form-action 'none'",
    "frame-ancestors 'none'",
])
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cross-Origin-Opener-Policy": "same-origin",
}
IMMUTABLE = "public, max-age=31536000, immutable"
NO_CACHE = "no-cache"
#: Where index.html names the release directory; replaced when the bundle loads.
ASSETS_MARK = "__ASSETS__"
#: Files served outside the release directory, at fixed URLs.
ROOT_FILES = ("index.html", "sw.js")
#: The app's endpoints on the quart app: not API routes (tests/web/test_ops.py leaves them
#: out of its comparison with /openapi.json).
ENDPOINTS = frozenset({"web_index", "web_service_worker", "web_asset"})
_COMPRESSIBLE = (".html", ".js", ".css", ".svg", ".json", ".webmanifest", ".txt")
_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8",
          ".html": "text/html; charset=utf-8", ".svg": "image/svg+xml",
          ".webmanifest": "application/manifest+json", ".txt": "text/plain; charset=utf-8"}


@dataclass(frozen=True)
class StaticFile:
    content: bytes
    gzipped: bytes | None
    content_type: str
    etag: str


def _static_file(name: str, content: bytes) -> StaticFile:
    suffix = name[name.rfind("."):] if "." in name else ""
    content_type = _TYPES.get(suffix) or mimetypes.guess_type(name)[0] or "application/octet-stream"
    gzipped = gzip.compress(content, 9, mtime=0) if suffix in _COMPRESSIBLE else None
    if gzipped is not None and len(gzipped) >= len(content):
        gzipped = None
    etag = '"' + hashlib.sha256(content).hexdigest()[:32] + '"'
    return StaticFile(content, gzipped, content_type, etag)


def _walk(root: Traversable, prefix: str = "") -> dict[str, bytes]:
    found: dict[str, bytes] = {}
    for entry in sorted(root.iterdir(), key=lambda item: item.name):
        if entry.name.startswith(".") or entry.name == "__pycache__":
            continue
        name = prefix + entry.name
        if entry.is_dir():
            found.update(_walk(entry, name + "/"))
        elif entry.is_file():
            found[name] = entry.read_bytes()
    return found


class StaticBundle:
    """The app's files in memory: the page, the service worker, and the assets of one
    release (`release` is the hash of every file)."""

    def __init__(self, files: dict[str, bytes]) -> None:
        missing = [name for name in ROOT_FILES if name not in files]
        if missing:
            raise ValueError(f"the web client's files are incomplete: missing {missing}")
        digest = hashlib.sha256()
        for name in sorted(files):
            digest.update(name.encode() + b"\0" + hashlib.sha256(files[name]).digest())
        self.release = digest.hexdigest()[:16]
        self.prefix = f"/assets/{self.release}/"
        page = files["index.html"].replace(ASSETS_MARK.encode() + b"/", self.prefix.encode())
        self.index = _static_file("index.html", page)
        self.service_worker = _static_file("sw.js", files["sw.js"])
        self.assets = {name: _static_file(name, content) for name, content in files.items()
                       if name not in ROOT_FILES}

    @classmethod
    def from_package(cls) -> StaticBundle:
        return cls(_walk(resources.files("chatd.web") / "static"))


def _respond(item: StaticFile, cache: str, extra: dict[str, str] | None = None) -> Response:
    headers = {**SECURITY_HEADERS, "Cache-Control": cache, "ETag": item.etag,
               "Vary": "Accept-Encoding", **(extra or {})}
    if item.etag in request.headers.get("If-None-Match", ""):
        return Response(b"", 304, headers)
    body = item.content
    accepts = request.headers.get("Accept-Encoding", "")
    if item.gzipped is not None and "gzip" in accepts:
        body = item.gzipped
        headers["Content-Encoding"] = "gzip"
    response = Response(body, 200, headers, content_type=item.content_type)
    if request.method == "HEAD":
        response.set_data(b"")
        response.headers["Content-Length"] = str(len(body))
    return response


def _not_found() -> Response:
    response = Response(b'{"error": {"code": "not_found", "message": "no such file of the web '
                        b'client (an old page? reload it)"}}', 404,
                        {**SECURITY_HEADERS, "Cache-Control": NO_CACHE},
                        content_type="application/json")
    return response


def register(app: QuartTrio, bundle: StaticBundle) -> None:
    """Serve `bundle` on `app`: `/`, `/sw.js` and `/assets/<release>/<path>`. These routes
    are not part of the API, so they are not in /openapi.json."""

    async def web_index() -> Response:
        return _respond(bundle.index, NO_CACHE)

    async def web_service_worker() -> Response:
        return _respond(bundle.service_worker, NO_CACHE, {"Service-Worker-Allowed": "/"})

    async def web_asset(release: str, name: str) -> Response:
        item = bundle.assets.get(name)
        if release != bundle.release or item is None:
            return _not_found()
        return _respond(item, IMMUTABLE)

    methods = ["GET", "HEAD"]
    app.add_url_rule("/", "web_index", web_index, methods=methods)
    app.add_url_rule("/sw.js", "web_service_worker", web_service_worker, methods=methods)
    app.add_url_rule("/assets/<release>/<path:name>", "web_asset", web_asset, methods=methods)
