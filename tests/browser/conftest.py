"""The browser tier: Debian's chromium, driven by Playwright, against the running Airflow UI.

Playwright's own browser download is never used: the tests launch the system binary
(``CHROMIUM``, default ``/usr/bin/chromium``; `make install` installs Debian's package)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


def chromium_binary() -> str:
    path = os.environ.get("CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(path).exists():
        pytest.fail(
            f"no chromium at {path}: `make install` installs Debian's chromium (or set CHROMIUM to "
            "a Chromium binary)"
        )
    return path


# Per module, never per session: Playwright's sync API keeps an asyncio loop running in this
# thread while it is started, and every later test that calls asyncio.run would fail.
@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_binary(), headless=True)
        yield browser
        browser.close()


@pytest.fixture
def login(stack, browser):
    """A function that opens a fresh browser context logged in to Airflow as ``user``."""
    contexts = []

    def as_user(user: str = "admin"):
        context = browser.new_context(viewport={"width": 1440, "height": 1100})
        contexts.append(context)
        page = context.new_page()
        page.goto(stack.url("AIRFLOW_PORT", "/auth/login"))
        page.get_by_label("Username").fill(user)
        page.get_by_label("Password").fill(stack.credentials[f"airflow_{user}_password"])
        page.get_by_role("button", name="Sign in").click()
        page.wait_for_url(lambda url: "/auth/login" not in url, timeout=30_000)
        return page

    yield as_user
    for context in contexts:
        context.close()
