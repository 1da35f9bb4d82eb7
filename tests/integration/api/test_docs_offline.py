"""`/docs` loads nothing from another host: every asset it names is served by the app."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from fastapi.testclient import TestClient

from app.api.ingress import create_app
from tests.integration.ingress_harness import make_harness
from tests.support.settings import SettingsFactory

ROOT = Path(__file__).resolve().parents[3]
SCRIPT = ROOT / "scripts" / "docs_screenshot.py"


class _Refs(HTMLParser):
    """Every `src` and `href` in the page, and every URL-looking string in its scripts."""

    def __init__(self) -> None:
        super().__init__()
        self.refs: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._in_script = tag == "script"
        self.refs += [value for name, value in attrs if name in ("src", "href") and value]

    def handle_endtag(self, tag: str) -> None:
        self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script:
            self.refs += re.findall(r"""(?:https?:)?//[^\s'"]+""", data)
            self.refs += re.findall(r"""url:\s*['"]([^'"]+)['"]""", data)


def test_docs_names_no_other_host_and_every_asset_is_served(
    settings_factory: SettingsFactory,
) -> None:
    harness = make_harness(settings_factory(public_url="http://testserver"))
    with TestClient(create_app(harness.deps)) as http:
        page = http.get("/docs")
        assert page.status_code == 200
        parser = _Refs()
        parser.feed(page.text)
        assert parser.refs, "the page references nothing: the parser missed its assets"
        external = [ref for ref in parser.refs if urlsplit(ref).netloc]
        assert external == [], f"/docs loads from other hosts: {external}"
        for ref in parser.refs:
            response = http.get(ref)
            assert response.status_code == 200, ref
            assert response.content, ref
        served = {urlsplit(ref).path for ref in parser.refs}
        assert {"/openapi.json", "/docs/assets/swagger-ui-bundle.js"} <= served


def test_only_the_listed_assets_are_served(settings_factory: SettingsFactory) -> None:
    harness = make_harness(settings_factory(public_url="http://testserver"))
    with TestClient(create_app(harness.deps)) as http:
        for name in ("index.html", "..%2Fpyproject.toml", "swagger-ui.js.map"):
            response = http.get(f"/docs/assets/{name}")
            assert response.status_code == 404, name
            assert response.json()["error"]["code"] == "not_found"
            assert "/site-packages" not in response.text


@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium is not installed")
@pytest.mark.timeout(180)
def test_docs_render_in_a_headless_browser(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(tmp_path)],
        env=env,
        check=False,
        capture_output=True,
        text=True,
        timeout=170,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "docs.png").stat().st_size > 0
