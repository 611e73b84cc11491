"""The dashboard in a real headless Chromium (Debian's chromium and
chromium-driver, installed by scripts/observability-env.sh), driven with
Selenium: log in, find a queue another client declared, see its depth
change after a publish, purge it through the page.

Warren's own page: against another broker (WARREN_TEST_ADDR) it is skipped.
"""
import os
import shutil
import tempfile

import pika
import pytest

from conftest import ROOT, wait_for

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


@pytest.fixture
def browser(broker):
    if not broker.is_warren:
        pytest.skip("Warren's own dashboard")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    assert os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER), \
        "Chromium is not installed: run scripts/observability-env.sh (scripts/test.sh does)"
    profile = tempfile.mkdtemp(prefix="warren-chromium-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--window-size=1280,1000"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)
    driver.implicitly_wait(0)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


def text_of(driver, css):
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException

    try:
        return driver.find_element("css selector", css).text
    except (NoSuchElementException, StaleElementReferenceException):
        return None


def click(driver, css, timeout=15):
    """Clicks the element `css` names, finding it again if the page redrew
    it between the find and the click (tables refresh on a timer)."""
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException

    def attempt():
        try:
            driver.find_element("css selector", css).click()
            return True
        except (NoSuchElementException, StaleElementReferenceException):
            return False

    assert wait_for(attempt, timeout=timeout), f"could not click {css}"


def test_dashboard_login_queue_depth_and_purge(broker, browser, conn, name):
    ch = conn.channel()
    ch.queue_declare(name)
    browser.get(f"{broker.http}/?refresh=1")
    # A wrong password is refused on the page.
    browser.find_element("id", "username").send_keys("guest")
    browser.find_element("id", "password").send_keys("wrong")
    browser.find_element("id", "login-button").click()
    assert wait_for(lambda: "Login failed" in (text_of(browser, "#login-error") or ""), timeout=15)
    browser.find_element("id", "password").clear()
    browser.find_element("id", "password").send_keys("guest")
    browser.find_element("id", "login-button").click()
    assert wait_for(lambda: "guest" in (text_of(browser, "#user") or ""), timeout=15)
    # The overview shows the totals and draws its charts.
    assert wait_for(lambda: text_of(browser, "[data-stat=queues] .n") not in (None, ""), timeout=15)
    browser.find_element("css selector", "a[data-tab=queues]").click()
    row = f"tr[data-queue='{name}']"
    assert wait_for(lambda: text_of(browser, f"{row} td[data-col=messages]") == "0", timeout=15)
    for _ in range(3):
        ch.basic_publish("", name, b"x")
    assert wait_for(lambda: text_of(browser, f"{row} td[data-col=messages]") == "3", timeout=15)
    click(browser, row)
    assert wait_for(lambda: name in (text_of(browser, "#qd-name") or ""), timeout=15)
    browser.find_element("id", "qd-purge").click()
    browser.switch_to.alert.accept()
    assert wait_for(lambda: text_of(browser, f"{row} td[data-col=messages]") == "0", timeout=15)
    assert ch.queue_declare(name, passive=True).method.message_count == 0
    # Publish through the page, then see it arrive over AMQP.
    browser.find_element("css selector", "#qd-publish textarea").send_keys("from the page")
    browser.find_element("css selector", "#qd-publish button").click()
    assert wait_for(lambda: ch.queue_declare(name, passive=True).method.message_count == 1, timeout=15)
    _, _, body = ch.basic_get(name, auto_ack=True)
    assert body == b"from the page"
    if os.environ.get("WARREN_SCREENSHOT"):
        browser.find_element("css selector", "a[data-tab=overview]").click()
        assert wait_for(lambda: text_of(browser, "[data-stat=queues] .n") not in (None, ""), timeout=15)
        browser.save_screenshot(os.environ["WARREN_SCREENSHOT"])
    logs = browser.get_log("browser") if hasattr(browser, "get_log") else []
    # The one refused login above is the only error the page may have logged.
    errors = [entry for entry in logs if entry.get("level") == "SEVERE"
              and not ("/api/whoami" in entry["message"] and "401" in entry["message"])]
    assert not errors, errors
    ch.queue_delete(name)


def log_in(browser, broker):
    browser.get(f"{broker.http}/?refresh=1")
    browser.find_element("id", "username").send_keys("guest")
    browser.find_element("id", "password").send_keys("guest")
    browser.find_element("id", "login-button").click()
    assert wait_for(lambda: "guest" in (text_of(browser, "#user") or ""), timeout=15)


def test_dashboard_moves_messages_and_lists_shovels(broker, browser, conn, name):
    import requests

    ch = conn.channel()
    ch.queue_declare(f"{name}-from")
    ch.queue_declare(f"{name}-to", durable=True)
    for i in range(5):
        ch.basic_publish("", f"{name}-from", f"{i}".encode())
    log_in(browser, broker)
    browser.find_element("css selector", "a[data-tab=queues]").click()
    row = f"tr[data-queue='{name}-from']"
    assert wait_for(lambda: text_of(browser, f"{row} td[data-col=messages]") == "5", timeout=15)
    click(browser, row)
    assert wait_for(lambda: f"{name}-from" in (text_of(browser, "#qd-name") or ""), timeout=15)
    browser.find_element("css selector", "#qd-move input[name=dest]").send_keys(f"{name}-to")
    browser.find_element("css selector", "#qd-move button").click()
    # The one-off shovel moves them and removes itself, as RabbitMQ's "Move messages".
    assert wait_for(lambda: ch.queue_declare(f"{name}-to", durable=True, passive=True).method.message_count == 5,
                    timeout=30)
    assert ch.queue_declare(f"{name}-from", passive=True).method.message_count == 0
    auth = ("guest", "guest")
    assert wait_for(lambda: requests.get(f"{broker.http}/api/parameters/shovel", auth=auth).json() == [], timeout=15)
    # A running shovel is listed with its state, and deleted from the page.
    r = requests.put(f"{broker.http}/api/parameters/shovel/%2F/{name}", auth=auth, json={"value": {
        "src-uri": "amqp://", "src-queue": f"{name}-from", "dest-uri": "amqp://", "dest-queue": f"{name}-to"}})
    assert r.status_code == 201, r.text
    browser.find_element("css selector", "a[data-tab=links]").click()
    shovel = f"tr[data-shovel='{name}']"
    assert wait_for(lambda: text_of(browser, f"{shovel} td[data-col=state]") == "running", timeout=15)
    ch.basic_publish("", f"{name}-from", b"more")
    assert wait_for(lambda: text_of(browser, f"{shovel} td[data-col=moved]") == "1", timeout=15)
    click(browser, f"{shovel} button.danger")
    browser.switch_to.alert.accept()
    assert wait_for(lambda: text_of(browser, shovel) is None, timeout=15)
    assert requests.get(f"{broker.http}/api/parameters/shovel/%2F/{name}", auth=auth).status_code == 404
    ch.queue_delete(f"{name}-from")
    ch.queue_delete(f"{name}-to")
