"""The web dashboard, served by the API's process at `/`: server-rendered Jinja templates, a
little script of our own for live updates, inline SVG charts, no asset from elsewhere.

`web_routes(settings)` gives the app its routes; `template_config()` its template engine;
`api_docs_plugin()` the /schema viewer, loaded from the swagger-ui package (works offline).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from litestar import Request, Response, Router
from litestar.openapi.plugins import SwaggerRenderPlugin
from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.response import Redirect, Template
from litestar.static_files import create_static_files_router
from litestar.template.config import TemplateConfig
from litestar.types import ControllerRouterHandler
from swagger_ui_bundle import swagger_ui_path

from app.errors import to_api_error
from app.web import filters
from app.web.actions import StartForm, login, login_page, logout
from app.web.pages import WorkspacePages, dn_link, home
from app.web.session import NotSignedIn, login_url, web_middleware
from infrastructure.settings import Settings

HERE = Path(__file__).parent
STATIC_URL = "/static"
SWAGGER_URL = "/vendor/swagger-ui"


def _not_signed_in(request: Request[Any, Any, Any], error: NotSignedIn) -> Response[Any]:
    target = login_url(error.next_url)
    if error.reason:
        target += "&reason=" + error.reason.replace(" ", "+").replace(";", "%3B")
    return Redirect(target, status_code=303)


def _error_page(request: Request[Any, Any, Any], error: Exception) -> Response[Any]:
    """Any refusal (or failure) as a page, with the status and words `app.errors` gives it."""
    answer = to_api_error(request, error)
    return Template(
        "error.html",
        context={"status": answer.status, "detail": answer.detail},
        status_code=answer.status,
    )


def web_routes(settings: Settings) -> list[ControllerRouterHandler]:
    pages = Router(
        path="/",
        route_handlers=[home, dn_link, login_page, login, logout, WorkspacePages, StartForm],
        middleware=web_middleware(settings),
        exception_handlers={
            NotSignedIn: _not_signed_in,
            Exception: _error_page,
        },
        include_in_schema=False,
    )
    return [
        pages,
        create_static_files_router(
            path=STATIC_URL, directories=[HERE / "static"], include_in_schema=False
        ),
        create_static_files_router(
            path=SWAGGER_URL, directories=[Path(str(swagger_ui_path))], include_in_schema=False
        ),
    ]


def template_config() -> TemplateConfig[JinjaTemplateEngine]:
    return TemplateConfig(
        directory=HERE / "templates",
        engine=JinjaTemplateEngine,
        engine_callback=filters.register,
    )


def api_docs_plugin() -> SwaggerRenderPlugin:
    """The /schema page with its viewer served from this process, not a CDN."""
    return SwaggerRenderPlugin(
        path="/",
        js_url=f"{SWAGGER_URL}/swagger-ui-bundle.js",
        css_url=f"{SWAGGER_URL}/swagger-ui.css",
        standalone_preset_js_url=f"{SWAGGER_URL}/swagger-ui-standalone-preset.js",
        favicon=f"<link rel='icon' type='image/png' href='{SWAGGER_URL}/favicon-32x32.png'>",
    )
