from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, sync_playwright

from tests.web_client.harness import Browsers, ChatdProcess, launch


@pytest.fixture(scope="module")
def chatd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChatdProcess]:
    root: Path = tmp_path_factory.mktemp("chatd")
    process = ChatdProcess(root / "data", root / "server.log")
    yield process
    process.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        browser = launch(playwright)
        yield browser
        browser.close()


@pytest.fixture
def people(browser: Browser, chatd: ChatdProcess) -> Iterator[Browsers]:
    made = Browsers(browser, chatd.url + "/")
    yield made
    made.close()
    assert not made.errors, made.errors
