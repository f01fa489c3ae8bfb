"""The web client's files as served (web/webapp.py): the page, its assets, the headers."""

from __future__ import annotations

import gzip
import re
import zipfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import httpx
import pytest

from chatd.web.webapp import CONTENT_SECURITY_POLICY, StaticBundle
from tests.conftest import ServerFactory
from tests.helpers import assert_error


def _assets(page: str) -> list[str]:
    return re.findall(r'(?:href|src)="(/assets/[^"]+)"', page)


def _check_security_headers(response: httpx.Response) -> None:
    csp = response.headers["content-security-policy"]
    assert csp == CONTENT_SECURITY_POLICY
    directives = dict(part.strip().split(" ", 1) for part in csp.split(";"))
    assert directives["script-src"] == "'self'"
    assert directives["style-src"] == "'self'"
    assert directives["frame-ancestors"] == "'none'"
    assert "unsafe" not in csp
    assert response.headers["referrer-policy"] == "no-referrer"
    assert response.headers["x-content-type-options"] == "nosniff"


async def test_index_assets_and_headers(http: httpx.AsyncClient) -> None:
    page = await http.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert page.headers["cache-control"] == "no-cache"
    _check_security_headers(page)
    # No inline script or style, and nothing from another origin.
    assert "<style" not in page.text
    assert re.search(r"<script(?![^>]*\bsrc=)", page.text) is None
    assert "http://" not in page.text and "https://" not in page.text
    assets = _assets(page.text)
    assert any(path.endswith("/js/main.js") for path in assets)
    assert any(path.endswith("/app.css") for path in assets)
    release = {path.split("/")[2] for path in assets}
    assert len(release) == 1 and re.fullmatch(r"[0-9a-f]{16}", release.pop())
    for path in assets:
        asset = await http.get(path)
        assert asset.status_code == 200, path
        assert asset.headers["cache-control"] == "public, max-age=31536000, immutable"
        _check_security_headers(asset)
    script = await http.get(next(p for p in assets if p.endswith("/js/main.js")))
    assert script.headers["content-type"].startswith("text/javascript")
    assert "innerHTML" not in script.text


async def test_gzip_etag_and_head(http: httpx.AsyncClient) -> None:
    page = (await http.get("/")).text
    css = next(p for p in _assets(page) if p.endswith("app.css"))
    raw = await http.get(css, headers={"accept-encoding": "identity"})
    assert "content-encoding" not in raw.headers
    zipped = await http.get(css, headers={"accept-encoding": "gzip"})
    assert zipped.headers["content-encoding"] == "gzip"
    assert zipped.content == raw.content  # httpx decodes it
    assert int(zipped.headers["content-length"]) < len(raw.content)
    again = await http.get(css, headers={"if-none-match": raw.headers["etag"]})
    assert again.status_code == 304 and again.content == b""
    head = await http.head("/")
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-security-policy"] == CONTENT_SECURITY_POLICY


async def test_unknown_release_and_files_are_404(http: httpx.AsyncClient) -> None:
    page = (await http.get("/")).text
    main = next(p for p in _assets(page) if p.endswith("/js/main.js"))
    stale = main.replace(main.split("/")[2], "0" * 16)
    assert_error(await http.get(stale), 404, "not_found")
    release = main.split("/")[2]
    for path in (f"/assets/{release}/nope.js", f"/assets/{release}/../index.html",
                 f"/assets/{release}/index.html", f"/assets/{release}/sw.js"):
        response = await http.get(path)
        assert response.status_code == 404, path
    assert (await http.post("/", json={})).status_code == 405


async def test_service_worker_at_the_root(http: httpx.AsyncClient) -> None:
    worker = await http.get("/sw.js")
    assert worker.status_code == 200
    assert worker.headers["cache-control"] == "no-cache"
    assert worker.headers["service-worker-allowed"] == "/"
    assert "addEventListener(\"push\"" in worker.text


async def test_the_api_is_unchanged_beside_the_app(http: httpx.AsyncClient) -> None:
    assert (await http.get("/healthz")).json()["status"] == "ok"
    assert_error(await http.get("/no/such/route"), 404, "not_found")
    spec = (await http.get("/openapi.json")).json()
    assert "/" not in spec["paths"] and not any(p.startswith("/assets") for p in spec["paths"])


async def test_disabled(start_server: ServerFactory) -> None:
    server = await start_server(web={"enabled": False})
    async with httpx.AsyncClient(base_url=server.url) as http:
        assert_error(await http.get("/"), 404, "not_found")
        assert (await http.get("/sw.js")).status_code == 404
        assert (await http.get("/healthz")).status_code == 200


def test_bundle_release_follows_content() -> None:
    files = {"index.html": b'<script type="module" src="__ASSETS__/js/main.js"></script>',
             "sw.js": b"", "js/main.js": b"1"}
    one = StaticBundle(files)
    two = StaticBundle({**files, "js/main.js": b"2"})
    assert one.release != two.release
    expected = f'<script type="module" src="/assets/{one.release}/js/main.js"></script>'
    assert one.index.content == expected.encode()
    assert gzip.decompress(StaticBundle.from_package().index.gzipped or b"") == (
        StaticBundle.from_package().index.content)
    with pytest.raises(ValueError, match="missing"):
        StaticBundle({"index.html": b""})


@pytest.mark.slow
def test_wheel_ships_the_static_files(tmp_path: Path) -> None:
    """A non-editable install has the app: the wheel holds every file of web/static."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    # Without build isolation when this environment's setuptools can build a wheel by
    # itself (70.1 brought bdist_wheel in): no download. Otherwise pip fetches the build
    # requirements from pyproject.toml, as a user's install would.
    try:
        major, minor = (int(part) for part in version("setuptools").split(".")[:2])
        builds_alone = (major, minor) >= (70, 1)
    except PackageNotFoundError:
        builds_alone = False
    flags = ["--no-build-isolation"] if builds_alone else ["--use-pep517"]
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", *flags,
                    "-q", "-w", str(tmp_path), str(root)], check=True, capture_output=True)
    wheel = next(tmp_path.glob("chatd-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    static = root / "src" / "chatd" / "web" / "static"
    expected = {f"chatd/web/static/{p.relative_to(static).as_posix()}"
                for p in static.rglob("*") if p.is_file()}
    assert expected and expected <= names, sorted(expected - names)


def test_no_script_parses_html_or_evals() -> None:
    """The app puts user text into the page as text only (docs/web.md): none of its
    scripts uses an HTML-parsing sink or eval (the CSP would refuse eval anyway)."""
    bundle = StaticBundle.from_package()
    scripts = {name: item.content.decode() for name, item in bundle.assets.items()
               if name.endswith(".js")}
    scripts["sw.js"] = bundle.service_worker.content.decode()
    assert len(scripts) >= 10
    for name, text in scripts.items():
        for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write",
                     "eval(", "new Function", "setAttribute(\"style\""):
            assert sink not in text, (name, sink)
