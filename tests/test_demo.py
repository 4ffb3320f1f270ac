"""The demo page is served by the service, under its own security headers."""

import re

import pytest


def test_demo_page_is_html_under_a_strict_csp(client):
    response = client.get("/demo")
    assert response.status_code == 200
    assert response.mimetype == "text/html"
    policy = response.headers["Content-Security-Policy"]
    assert "default-src 'self'" in policy
    assert "script-src" not in policy or "'unsafe-inline'" not in policy
    page = response.get_data(as_text=True)
    assert "<script>" not in page and "http://" not in page and "https://" not in page


@pytest.mark.parametrize(
    ("asset", "mimetype"),
    [
        ("demo.js", "text/javascript"),
        ("api.js", "text/javascript"),
        ("sse.js", "text/javascript"),
        ("demo.css", "text/css"),
    ],
)
def test_page_assets_are_served_from_the_static_folder(client, asset, mimetype):
    page = client.get("/demo").get_data(as_text=True)
    response = client.get(f"/static/demo/{asset}")
    assert response.status_code == 200
    assert response.mimetype == mimetype
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    if asset in {"demo.js", "demo.css"}:
        assert f"/static/demo/{asset}" in page


def test_page_uses_only_public_routes(client):
    script = "".join(
        client.get(f"/static/demo/{name}").get_data(as_text=True) for name in ("demo.js", "api.js")
    )
    routes = set(re.findall(r"`(/api/[^`?]*)", script)) | set(re.findall(r'"(/api/[^"]*)"', script))
    assert len(routes) >= 5
    documented = client.get("/openapi.json").json["paths"]
    templates = {re.sub(r"\{[^}]+\}", "{}", path) for path in documented}
    for route in routes:
        assert re.sub(r"\$\{[^}]+\}", "{}", route) in templates, route


def test_demo_page_is_documented_as_html(client):
    operation = client.get("/openapi.json").json["paths"]["/demo"]["get"]
    assert list(operation["responses"]["200"]["content"]) == ["text/html"]
