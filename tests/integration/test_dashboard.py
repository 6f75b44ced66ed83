"""The dashboard in a real browser: Debian's chromium, headless, driven by selenium.

A broker, a worker and the API with tokens; the page is opened, given a token, and read
as a user would: the worker, the counts moving without a reload, a completed task's
decoded result, a failed one's error, and the cancel button cancelling a pending task;
then a task's dependents as links, finished ones included, the retry button running a
failed task again, and the drain button keeping a new task pending until Resume.
Screenshots of each step are saved under the test's tmp_path (and copied to
``var/screenshots/``, which is not committed).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.wait import WebDriverWait

from common.client import Client
from tests.conftest import ROOT, Stack
from tests.integration.test_http_auth import TOKENS, write_tokens

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
#: Generous: two cores shared with other work, and a browser starting cold.
DEADLINE = 60.0


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[WebDriver]:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless=new",
        "--no-sandbox",  # run as root in a container
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1400,2000",
        f"--user-data-dir={tmp_path / 'chromium'}",
    ):
        options.add_argument(argument)
    service = Service(CHROMEDRIVER, log_output=str(tmp_path / "chromedriver.log"))
    driver = webdriver.Chrome(options=options, service=service)
    try:
        yield driver
    finally:
        driver.quit()


def poll(driver: WebDriver, check: Callable[[WebDriver], Any], what: str) -> Any:
    """``check`` until it is truthy; a page redrawn under a lookup is looked up again."""

    def tolerant(d: WebDriver) -> Any:
        try:
            return check(d)
        except StaleElementReferenceException:
            return None

    return WebDriverWait(driver, DEADLINE, poll_frequency=0.1).until(tolerant, what)


def click(driver: WebDriver, css: str, what: str) -> None:
    """Click the element ``css`` finds, looked up again if the page redraws it meanwhile (a
    live update replaces the tables it fills)."""

    def clicked(d: WebDriver) -> bool:
        found = d.find_elements(By.CSS_SELECTOR, css)
        if not found:
            return False
        found[0].click()
        return True

    poll(driver, clicked, what)


def text(driver: WebDriver, css: str) -> str:
    found = driver.find_elements(By.CSS_SELECTOR, css)
    return found[0].text if found else ""


def count(driver: WebDriver, status: str) -> int:
    value = text(driver, f"#count-{status} b")
    return int(value) if value else -1


def shoot(driver: WebDriver, tmp_path: Path, name: str) -> None:
    path = tmp_path / f"dashboard-{name}.png"
    driver.save_screenshot(str(path))
    kept = ROOT / "var" / "screenshots"
    kept.mkdir(parents=True, exist_ok=True)
    shutil.copy(path, kept / path.name)


def start_stack(stack: Stack, tmp_path: Path) -> Client:
    """A broker, the worker ``dash-worker`` online, the API with tokens; a client of it."""
    stack.start_broker()
    stack.start_worker(worker_id="dash-worker")
    stack.start_api("--api-tokens", str(write_tokens(tmp_path / "tokens")))
    stack.wait_workers("dash-worker")
    return stack.client()


def test_the_dashboard_shows_the_stack_live_and_cancels_a_task(
    stack: Stack, browser: WebDriver, tmp_path: Path
) -> None:
    # given a broker, a worker and the API with tokens, a completed task and a failed one
    client = start_stack(stack, tmp_path)
    done = client.submit("fibonacci", b'{"n": 10}', name="fib-10")
    bad = client.submit("fibonacci", b'{"n": "ten"}', name="fib-bad")
    finished = client.wait_many([done, bad], timeout=DEADLINE)
    assert [task["status"] for task in finished] == ["completed", "failed"]
    error = client.get(bad)["error"]

    # when the page is opened without a token, it asks for one
    browser.get(stack.api_url + "/")
    poll(browser, lambda d: "token" in text(d, "#connection"), "the page to ask for a token")
    shoot(browser, tmp_path, "1-token-needed")
    # and given one, it goes live
    use_token(browser, TOKENS["client"])

    # then it shows the worker, the counts, and the failure with its error
    row = '#workers tr[data-worker="dash-worker"]'
    poll(browser, lambda d: text(d, f"{row} .worker-status") == "online", "the worker, online")
    assert "fibonacci" in text(browser, row)
    poll(browser, lambda d: count(d, "completed") == 1, "one completed task counted")
    assert count(browser, "failed") == 1
    failure = f'#failures tr[data-task="{bad}"]'
    poll(browser, lambda d: error[:40] in text(d, failure), "the failure and its error")
    shoot(browser, tmp_path, "2-live")

    # when more tasks finish, the counts move without a reload
    browser.execute_script("window.notReloaded = true")
    more = [client.submit("echo", str(i).encode()) for i in range(3)]
    client.wait_many(more, timeout=DEADLINE)
    poll(browser, lambda d: count(d, "completed") == 4, "the completed count to move")
    assert browser.execute_script("return window.notReloaded") is True

    # and the task view shows the completed task's result decoded from base64
    browser.get(f"{stack.api_url}/#task/{done}")
    poll(browser, lambda d: '"result": 55' in text(d, "#task-result"), "the decoded result")
    assert json.loads(text(browser, "#task-args")) == {"n": 10}
    assert text(browser, "#task-status") == "completed"
    assert "dash-worker" in text(browser, "#task-leases")
    shoot(browser, tmp_path, "3-completed-task")

    # and the failed task's error
    browser.get(f"{stack.api_url}/#task/{bad}")
    poll(browser, lambda d: error[:40] in text(d, "#task-error"), "the failed task's error")
    assert browser.find_element(By.ID, "retry").is_displayed()

    # when a pending task (no worker has its tag) is cancelled with the button
    pending = client.submit("echo", b"never", requires=["no-such-tag"], name="stuck")
    poll(browser, lambda d: count(d, "pending") == 1, "the pending task counted")
    browser.get(f"{stack.api_url}/#task/{pending}")
    poll(browser, lambda d: text(d, "#task-status") == "pending", "the pending task shown")
    assert "no-such-tag" in text(browser, "#task-message")
    shoot(browser, tmp_path, "4-pending-task")
    click(browser, "#cancel", "the cancel button")

    # then the broker has it cancelled, and the page says so, counts included
    poll(browser, lambda d: text(d, "#task-status") == "cancelled", "the task shown cancelled")
    assert client.get(pending)["status"] == "cancelled"
    poll(browser, lambda d: count(d, "cancelled") == 1 and count(d, "pending") == 0, "counts")
    shoot(browser, tmp_path, "5-cancelled")


def use_token(driver: WebDriver, token: str) -> None:
    """Give the page this token, as a user types it, and wait for the stream to go live."""
    field = driver.find_element(By.ID, "token")
    field.clear()
    field.send_keys(token)
    driver.find_element(By.CSS_SELECTOR, "#token-form button").click()
    poll(driver, lambda d: text(d, "#connection") == "live", "the stream to go live")


def links(driver: WebDriver, css: str) -> list[str]:
    """The task ids a list of links in the task view points to."""
    return [a.get_attribute("data-task") or "" for a in driver.find_elements(By.CSS_SELECTOR, css)]


def test_the_dashboard_links_dependents_retries_a_task_and_drains_a_worker(
    stack: Stack, browser: WebDriver, tmp_path: Path
) -> None:
    # given a completed parent with two dependents that ran too, and a failed task
    client = start_stack(stack, tmp_path)
    parent = client.submit("fibonacci", b'{"n": 10}', name="parent")
    children = [
        client.submit("echo", b"child %d" % i, name=f"child-{i}", dependencies=[parent])
        for i in (1, 2)
    ]
    bad = client.submit("fibonacci", b'{"n": "ten"}', name="fib-bad")
    finished = client.wait_many([parent, *children, bad], timeout=DEADLINE)
    assert [task["status"] for task in finished] == ["completed"] * 3 + ["failed"]
    browser.get(stack.api_url + "/")
    use_token(browser, TOKENS["client"])

    # when the parent's view is opened
    browser.get(f"{stack.api_url}/#task/{parent}")
    # then its dependents, finished, are listed as links
    dependents = "#task-dependents a"
    poll(browser, lambda d: links(d, dependents) == children, "the dependents as links")
    assert text(browser, "#task-dependencies") == "none"
    shoot(browser, tmp_path, "6-dependents")
    # and a dependent's link opens that task, which links back to its dependency
    click(browser, f'{dependents}[data-task="{children[0]}"]', "the dependent's link")
    poll(browser, lambda d: children[0] in text(d, "#task-title"), "the dependent's view")
    poll(browser, lambda d: links(d, "#task-dependencies a") == [parent], "the link back")
    assert text(browser, "#task-dependents") == "none"
    assert "child 1" in text(browser, "#task-result")

    # when the failed task's Retry button is pressed
    browser.get(f"{stack.api_url}/#task/{bad}")
    poll(browser, lambda d: text(d, "#task-status") == "failed", "the failed task shown")
    assert client.get(bad)["attempts"] == 1
    click(browser, "#retry", "the retry button")
    # then it is pending again and runs again (bad args: it fails once more, a second run)
    poll(browser, lambda d: text(d, "#task-message") == "to run again", "the retry's answer")
    poll(
        browser,
        lambda d: (t := client.get(bad))["attempts"] == 2 and t["status"] == "failed",
        "the second run to end",
    )
    browser.refresh()
    poll(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#task-leases tbody tr")) == 2,
         "two runs in the lease history")  # fmt: skip
    assert text(browser, "#task-status") == "failed"
    shoot(browser, tmp_path, "7-retried")

    # when an admin drains the worker with its button
    use_token(browser, TOKENS["admin"])
    row = '#workers tr[data-worker="dash-worker"]'
    poll(browser, lambda d: text(d, f"{row} button.drain") == "Drain", "the drain button")
    click(browser, f"{row} button.drain", "the drain button")
    # then the page shows it draining, with a Resume button, and so does the broker
    poll(browser, lambda d: text(d, f"{row} .worker-draining") == "yes", "the worker draining")
    poll(browser, lambda d: text(d, f"{row} button.drain") == "Resume", "the resume button")
    assert client.worker("dash-worker")["draining"] is True
    # and a new task stays pending: no worker takes it, and the page says why
    waiting = client.submit("echo", b"after the drain", name="waits")
    poll(browser, lambda d: count(d, "pending") == 1, "the new task counted pending")
    browser.get(f"{stack.api_url}/#task/{waiting}")
    poll(browser, lambda d: "but for 1 draining" in text(d, "#task-message"), "why it waits")
    assert client.get(waiting)["status"] == "pending"
    shoot(browser, tmp_path, "8-draining")

    # when the worker is resumed with the same button
    poll(browser, lambda d: text(d, f"{row} button.drain") == "Resume", "the resume button")
    click(browser, f"{row} button.drain", "the drain button")
    # then it takes the task, which completes, and the page shows it taking work again
    assert client.wait(waiting, timeout=DEADLINE)["status"] == "completed"
    poll(browser, lambda d: text(d, f"{row} .worker-draining") == "", "the worker resumed")
    poll(browser, lambda d: count(d, "pending") == 0, "nothing pending")
    assert client.worker("dash-worker")["draining"] is False
    shoot(browser, tmp_path, "9-resumed")
