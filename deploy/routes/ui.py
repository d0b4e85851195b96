"""The web UI: a playground, an arena and the loop's dashboard, as static pages under /ui.

The pages hold no data and no key: their scripts call the public API (/v1/models, /v1/chat/completions,
/v1/feedback, /v1/comparisons) and, for the dashboard, the admin routes, with the key the person typed in
sent as `Authorization: Bearer` from the tab's sessionStorage. Because no cookie ever authenticates, a
page on another site cannot make the browser send an authenticated request (cross-site request forgery
needs ambient credentials), and the Content-Security-Policy below allows only this server's own scripts,
so model output, which the scripts insert as text, cannot run either.
"""

from __future__ import annotations

from pathlib import Path
from string import Template

from fastapi import APIRouter
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse

from serving.errors import APIError

router = APIRouter(include_in_schema=False)
FILES = Path(__file__).resolve().parent.parent / "ui"
PAGES = {"": ("Playground", "playground"), "/arena": ("Arena", "arena"), "/dashboard": ("Dashboard", "dashboard")}
SHELL = Template((FILES / "page.html").read_text(encoding="utf-8"))  # one HTML shell: a title and a script
ASSETS = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml"}
HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


@router.get("/")
async def root() -> RedirectResponse:
    return RedirectResponse("/ui", status_code=307)


def _page(title: str, script: str):
    html = SHELL.substitute(title=title, script=script)

    async def page() -> HTMLResponse:
        return HTMLResponse(html, headers=HEADERS)

    return page


for suffix, (title, script) in PAGES.items():
    router.add_api_route("/ui" + suffix, _page(title, script), methods=["GET", "HEAD"])


@router.get("/ui/assets/{name}")
async def asset(name: str) -> FileResponse:
    path = FILES / name
    media = ASSETS.get(Path(name).suffix)
    if media is None or "/" in name or name.startswith(".") or not path.is_file():
        raise APIError(404, f"no UI asset {name!r}", code="not_found")
    return FileResponse(path, media_type=media, headers=HEADERS)
