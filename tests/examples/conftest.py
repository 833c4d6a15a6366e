"""The examples' tests drive real Chromium with the browser tests' fixtures."""

from browser.conftest import browser, new_page

__all__ = ["browser", "new_page"]
