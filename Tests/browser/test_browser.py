#!/usr/bin/env python3
"""Real-browser tests of the demo page and realtime.js: Selenium driving headless Chromium against a live server.

Run:  python3 Tests/browser/test_browser.py      (exits 0 when every test passed, 1 otherwise; prints a summary)

Needs the Debian packages `chromium` and `chromium-driver`, the PyPI package `selenium`, and a running server that
serves the page (`realtime serve`, embedded demo). Each run makes its own plans, tasks, branch and user through the
REST API, so it can be repeated against the same server.

Environment (the tokens default to the server's demo-tokens.env, see REALTIME_TOKENS_FILE):
  REALTIME_URL            the server, e.g. http://127.0.0.1:8080
  REALTIME_SERVICE_TOKEN  a service_role token: creates the test data (a branch, a user, memberships, plans, tasks)
  REALTIME_ADMIN_TOKEN    a user of REALTIME_BRANCH_ID who may write (page A)
  REALTIME_EDITOR_TOKEN   another user of that branch who may write (page B)
  REALTIME_VIEWER_TOKEN   a viewer of that branch (the policy test)
  REALTIME_BRANCH_ID      the branch of those users (default: the demo branch 11111111-1111-4111-8111-111111111111)
  REALTIME_JWT_SECRET     the server's HS256 secret, to sign a token for the user of another branch; when unset it is
                          read from $REALTIME_DATA_DIR/jwt-secret (default .realtime/jwt-secret)
  REALTIME_TOKENS_FILE    a demo-tokens.env (REALTIME_URL, ADMIN_TOKEN, EDITOR_TOKEN, VIEWER_TOKEN, SERVICE_TOKEN) to take
                          unset values from (default $REALTIME_DATA_DIR/demo-tokens.env)
  REALTIME_BIG_PLAN_TASKS tasks in the virtualization test's plan (default 5000; 0 skips that test)
  CHROMIUM_BINARY, CHROMEDRIVER   default /usr/bin/chromium and /usr/bin/chromedriver
  BROWSER_TEST_ARTIFACTS  where screenshots and browser logs of failures go, and screenshot.png of the page (page B
                          during the presence test) (default /tmp/realtime-browser-test)
  BROWSER_TEST_ONLY       comma-separated test names to run (default: all)
"""

from __future__ import annotations

import base64
import concurrent.futures
import datetime as dt
import hashlib
import hmac
import json
import os
import sys
import time
import traceback
import urllib.error
import urllib.parse
import urllib.request
import uuid

from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import Select

DEMO_BRANCH = "11111111-1111-4111-8111-111111111111"
STALE_AFTER_MS = 2000


# ------------------------------------------------------------------------------------------------ configuration


class Config:
    """Settings from the environment, falling back to the server's demo-tokens.env."""

    def __init__(self) -> None:
        data_dir = os.environ.get("REALTIME_DATA_DIR", ".realtime")
        tokens_file = os.environ.get("REALTIME_TOKENS_FILE", os.path.join(data_dir, "demo-tokens.env"))
        file_values: dict[str, str] = {}
        if os.path.exists(tokens_file):
            for line in open(tokens_file, encoding="utf-8"):
                if "=" in line and not line.startswith("#"):
                    key, value = line.strip().split("=", 1)
                    file_values[key] = value

        def pick(env: str, file_key: str, default: str | None = None) -> str | None:
            return os.environ.get(env) or file_values.get(file_key) or default

        self.url = (pick("REALTIME_URL", "REALTIME_URL", "http://127.0.0.1:8080") or "").rstrip("/")
        self.service_token = pick("REALTIME_SERVICE_TOKEN", "SERVICE_TOKEN")
        self.admin_token = pick("REALTIME_ADMIN_TOKEN", "ADMIN_TOKEN")
        self.editor_token = pick("REALTIME_EDITOR_TOKEN", "EDITOR_TOKEN")
        self.viewer_token = pick("REALTIME_VIEWER_TOKEN", "VIEWER_TOKEN")
        self.branch_id = os.environ.get("REALTIME_BRANCH_ID", DEMO_BRANCH)
        secret = os.environ.get("REALTIME_JWT_SECRET")
        secret_file = os.path.join(data_dir, "jwt-secret")
        if not secret and os.path.exists(secret_file):
            secret = open(secret_file, encoding="utf-8").read().strip()
        self.jwt_secret = secret
        self.big_plan_tasks = int(os.environ.get("REALTIME_BIG_PLAN_TASKS", "5000"))
        self.chromium = os.environ.get("CHROMIUM_BINARY", "/usr/bin/chromium")
        self.chromedriver = os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver")
        self.artifacts = os.environ.get("BROWSER_TEST_ARTIFACTS", "/tmp/realtime-browser-test")
        only = os.environ.get("BROWSER_TEST_ONLY", "")
        self.only = {name.strip() for name in only.split(",") if name.strip()}

    def missing(self) -> list[str]:
        needed = {
            "REALTIME_SERVICE_TOKEN": self.service_token,
            "REALTIME_ADMIN_TOKEN": self.admin_token,
            "REALTIME_EDITOR_TOKEN": self.editor_token,
            "REALTIME_VIEWER_TOKEN": self.viewer_token,
            "REALTIME_JWT_SECRET": self.jwt_secret,
        }
        return [name for name, value in needed.items() if not value]


# ------------------------------------------------------------------------------------------------ REST helpers


class ApiError(Exception):
    pass


def api(config: Config, method: str, path: str, token: str | None, body: object | None = None, headers: dict | None = None):
    """One REST call; returns (status, parsed JSON or None). Never sends an Origin header (service role allowed)."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(config.url + path, data=data, method=method)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    if data is not None:
        request.add_header("Content-Type", "application/json")
    for key, value in (headers or {}).items():
        request.add_header(key, value)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, parse_body(response.read())
    except urllib.error.HTTPError as error:
        return error.code, parse_body(error.read())


def parse_body(raw: bytes):
    """JSON when it is JSON (the API), else the text (the page)."""
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode(errors="replace")


def must(config: Config, method: str, path: str, token: str | None, body: object | None = None, expect=(200, 201, 204)):
    status, payload = api(config, method, path, token, body)
    if status not in expect:
        raise ApiError(f"{method} {path} answered {status}: {payload}")
    return payload


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def sign_token(secret: str, sub: str, ttl_seconds: int = 3600) -> str:
    """An HS256 token as the server issues them (claims sub, role, exp)."""
    header = b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    payload = b64url(json.dumps({"sub": sub, "role": "authenticated", "exp": int(time.time()) + ttl_seconds}).encode())
    signature = hmac.new(secret.encode(), f"{header}.{payload}".encode(), hashlib.sha256).digest()
    return f"{header}.{payload}.{b64url(signature)}"


def token_subject(token: str) -> str:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["sub"]


def short_label(user_id: str) -> str:
    """The page's label for a user it cannot name: "User " and the last four hex digits of the id."""
    return "User " + user_id.replace("-", "")[-4:]


def display_name(config: "Config", user_id: str) -> str:
    """The name the page shows for a user: their display name from the branch's members list, as the page reads it."""
    members = must(config, "GET", f"/rest/v1/branches/{config.branch_id}/members", config.service_token)
    return next((m.get("display_name") for m in members if m["user_id"] == user_id), None) or short_label(user_id)


def iso(moment: dt.datetime) -> str:
    return moment.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def make_plan(config: Config, branch_id: str, title: str, task_titles: list[str], days: int = 7) -> tuple[str, list[str]]:
    """Creates a plan of `days` days from today with tasks an hour apart (as the service role); returns the plan id and
    the task ids in order."""
    today = dt.date.today()
    plan_id = str(uuid.uuid4())
    must(config, "POST", "/rest/v1/plans", config.service_token, {
        "id": plan_id, "branch_id": branch_id, "title": title,
        "period_start": today.isoformat(), "period_end": (today + dt.timedelta(days=days - 1)).isoformat(),
    })
    start = dt.datetime.combine(today, dt.time(8, 0), tzinfo=dt.timezone.utc)
    ids = []
    for index, task_title in enumerate(task_titles):
        task_id = str(uuid.uuid4())
        begins = start + dt.timedelta(hours=index)
        must(config, "POST", "/rest/v1/tasks", config.service_token, {
            "id": task_id, "plan_id": plan_id, "title": task_title,
            "starts_at": iso(begins), "ends_at": iso(begins + dt.timedelta(minutes=50)),
        })
        ids.append(task_id)
    return plan_id, ids


def wait_for_feed(config: Config, plan_id: str, task_id: str, timeout: float = 180) -> float:
    """Writes to a task and waits until the change feed delivers it (a long poll of the plan's channel), so that tests
    start only once any backlog (e.g. thousands of rows written just before) has been relayed. Returns the seconds."""
    started = time.monotonic()
    cursor = must(config, "GET", f"/rest/v1/plans/{plan_id}/snapshot", config.service_token)["cursor"]
    must(config, "PATCH", f"/rest/v1/tasks/{task_id}", config.service_token, {"status": "taken"})
    while time.monotonic() - started < timeout:
        page = must(config, "GET", f"/realtime/v1/changes?channel=plan:{plan_id}&after={urllib.parse.quote(cursor)}&wait=20",
                    config.service_token)
        if any(event["record"].get("id") == task_id for event in page["events"]):
            return time.monotonic() - started
        cursor = page["cursor"]
    raise ApiError(f"the change feed did not deliver a write within {timeout:.0f}s")


def plan_tasks(config: Config, plan_id: str) -> list[dict]:
    return must(config, "GET", f"/rest/v1/tasks?plan_id=eq.{plan_id}&order=starts_at.asc,id.asc&limit=1000", config.service_token)


# ------------------------------------------------------------------------------------------------ browser helpers


class TestFailure(AssertionError):
    pass


def check(condition: bool, message: str) -> None:
    if not condition:
        raise TestFailure(message)


def wait_until(predicate, timeout: float, message: str, interval: float = 0.02):
    """Polls `predicate` until it returns a truthy value (returned) or `timeout` seconds pass (TestFailure)."""
    deadline = time.monotonic() + timeout
    last_error = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except WebDriverException as error:
            last_error = error
        if time.monotonic() > deadline:
            suffix = f" (last error: {last_error.msg if last_error else 'none'})"
            raise TestFailure(f"timed out after {timeout:.1f}s: {message}{suffix}")
        time.sleep(interval)


ROWS_JS = """
return [...document.querySelectorAll('[data-testid="task-row"]')].map((row) => ({
  id: row.dataset.taskId,
  title: row.querySelector('[data-testid="task-title"]').value,
  status: row.dataset.status,
  pending: row.dataset.pending === 'true',
  updated: row.dataset.updated === 'true',
  updatedText: row.querySelector('[data-testid="updated-mark"]').hidden ? '' : row.querySelector('[data-testid="updated-mark"]').textContent,
  presence: row.querySelector('[data-testid="presence-label"]').hidden ? '' : row.querySelector('[data-testid="presence-label"]').textContent,
}));
"""


class Page:
    """One browser window logged in as one user, showing one plan."""

    def __init__(self, config: Config, name: str, token: str, plan_id: str, query: str = "", view: str = "list",
                 width: int = 1280, before_load: str | None = None) -> None:
        self.config = config
        self.name = name
        self.view = view
        options = webdriver.ChromeOptions()
        options.binary_location = config.chromium
        for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", f"--window-size={width},900",
                         "--disable-gpu", "--disable-extensions", "--no-first-run"):
            options.add_argument(argument)
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        self.driver = webdriver.Chrome(options=options, service=Service(executable_path=config.chromedriver))
        self.driver.set_script_timeout(30)
        self.offline = False
        self.closed = False
        if width < 500:
            # Chromium's window cannot be narrower than 500 px: a phone's viewport is emulated instead.
            self.driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
                "width": width, "height": 844, "deviceScaleFactor": 1, "mobile": True})
        if before_load:
            # Runs in every document before the page's own scripts (e.g. a slow clock).
            self.driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": before_load})
        self.open(token, plan_id, query)

    def open(self, token: str, plan_id: str, query: str = "") -> None:
        """Loads the page (the list view unless the page was made for another) and logs in by pasting the token and
        the plan id."""
        driver = self.driver
        driver.get(f"{self.config.url}/?view={self.view}&staleAfterMs={STALE_AFTER_MS}&updatedMarkMs=30000{query}")
        wait_until(lambda: driver.find_element(By.CSS_SELECTOR, '[data-testid="login"]').is_displayed(), 10, f"{self.name}: login form")
        for testid, value in (("token-input", token), ("plan-input", plan_id)):
            field = driver.find_element(By.CSS_SELECTOR, f'[data-testid="{testid}"]')
            field.clear()
            field.send_keys(value)
        driver.find_element(By.CSS_SELECTOR, '[data-testid="login-submit"]').click()

    def wait_live(self, timeout: float = 10) -> None:
        wait_until(lambda: self.status() == "live", timeout, f"{self.name}: status live (is {self.status()!r})")

    def status(self) -> str:
        return self.driver.find_element(By.CSS_SELECTOR, '[data-testid="status"]').get_attribute("data-status")

    def rows(self) -> list[dict]:
        return self.driver.execute_script(ROWS_JS)

    def row(self, task_id: str) -> dict | None:
        return next((row for row in self.rows() if row["id"] == task_id), None)

    def title_input(self, task_id: str):
        return self.driver.find_element(By.CSS_SELECTOR, f'[data-testid="task-row"][data-task-id="{task_id}"] [data-testid="task-title"]')

    def type_title(self, task_id: str, title: str, commit: bool = True) -> None:
        """Edits a title in place: click, select all, type; Enter commits."""
        field = self.title_input(task_id)
        field.click()
        field.send_keys(Keys.CONTROL, "a")
        field.send_keys(title)
        if commit:
            field.send_keys(Keys.ENTER)

    def set_status(self, task_id: str, status: str) -> None:
        element = self.driver.find_element(By.CSS_SELECTOR, f'[data-testid="task-row"][data-task-id="{task_id}"] [data-testid="task-status"]')
        Select(element).select_by_value(status)

    def blur(self) -> None:
        self.driver.execute_script("document.activeElement && document.activeElement.blur()")

    def set_offline(self, offline: bool) -> None:
        """DevTools network emulation: offline drops the connections and fires the page's offline event."""
        self.driver.execute_cdp_cmd("Network.enable", {})
        self.driver.execute_cdp_cmd("Network.emulateNetworkConditions", {
            "offline": offline, "latency": 0, "downloadThroughput": -1, "uploadThroughput": -1,
        })
        self.offline = offline

    def block_api(self, blocked: bool) -> None:
        """Makes every REST and stream request fail (as with no network) while the page's own files still load."""
        self.driver.execute_cdp_cmd("Network.enable", {})
        patterns = ["*/rest/v1/*", "*/realtime/v1/*"] if blocked else []
        self.driver.execute_cdp_cmd("Network.setBlockedURLs", {"urls": patterns})

    def banner_visible(self) -> bool:
        return self.driver.find_element(By.CSS_SELECTOR, '[data-testid="stale-banner"]').is_displayed()

    def toasts(self) -> list[str]:
        return [element.text for element in self.driver.find_elements(By.CSS_SELECTOR, '[data-testid="toast"]')]

    def plan_error(self) -> str:
        element = self.driver.find_element(By.CSS_SELECTOR, '[data-testid="plan-error"]')
        return element.text if element.is_displayed() else ""

    def save_artifacts(self, prefix: str) -> list[str]:
        os.makedirs(self.config.artifacts, exist_ok=True)
        base = os.path.join(self.config.artifacts, f"{prefix}-{self.name}")
        saved = []
        if self.closed:
            return saved
        try:
            self.driver.save_screenshot(base + ".png")
            saved.append(base + ".png")
            with open(base + ".log", "w", encoding="utf-8") as log:
                for entry in self.driver.get_log("browser"):
                    log.write(f"{entry.get('level')} {entry.get('message')}\n")
            saved.append(base + ".log")
        except Exception:  # noqa: BLE001 — artifacts are a courtesy; a dead browser must not stop the run
            pass
        return saved

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            self.driver.quit()
        except Exception:  # noqa: BLE001 — the browser may already be gone
            pass


# ------------------------------------------------------------------------------------------------ the tests


class Suite:
    """Sets up the data once, opens pages as tests need them, and closes them all at the end."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.pages: list[Page] = []
        self.admin_id = token_subject(config.admin_token)
        self.editor_id = token_subject(config.editor_token)
        stamp = time.strftime("%H:%M:%S")
        titles = ["Morning shift", "Client visit", "Weekly report", "Inventory", "Team call"]
        self.plan_id, self.tasks = make_plan(config, config.branch_id, f"Browser test {stamp}", titles)
        # A second branch, with its own user, membership and plan.
        self.other_branch = must(config, "POST", "/rest/v1/branches", config.service_token, {"name": f"Other branch {stamp}"})["id"]
        self.other_user = must(config, "POST", "/rest/v1/users", config.service_token, {"display_name": f"Other user {stamp}"})["id"]
        must(config, "PUT", f"/rest/v1/branches/{self.other_branch}/members/{self.other_user}", config.service_token, {"role": "editor"})
        self.other_token = sign_token(config.jwt_secret, self.other_user)
        self.other_plan, self.other_tasks = make_plan(config, self.other_branch, f"Other plan {stamp}", ["Elsewhere"])
        self.plans_made = [self.plan_id, self.other_plan]
        self.feed_wait = wait_for_feed(config, self.plan_id, self.tasks[0])
        self.a: Page | None = None
        self.b: Page | None = None

    def page(self, name: str, token: str, plan_id: str, query: str = "", **options) -> Page:
        page = Page(self.config, name, token, plan_id, query, **options)
        self.pages.append(page)
        return page

    def two_pages(self) -> tuple[Page, Page]:
        """Page A (admin) and page B (editor) on the test plan, both live."""
        if self.a is None:
            self.a = self.page("A-admin", self.config.admin_token, self.plan_id)
            self.b = self.page("B-editor", self.config.editor_token, self.plan_id)
        for page in (self.a, self.b):
            if page.offline:
                page.set_offline(False)
            page.wait_live()
            wait_until(lambda: len(page.rows()) >= len(self.tasks), 10, f"{page.name}: the plan's rows")
        return self.a, self.b

    def close(self) -> None:
        for page in self.pages:
            page.close()

    def remove_data(self) -> None:
        """Deletes the plans this run made (with their tasks); the extra branch and user stay (no API removes them)."""
        for plan_id in self.plans_made:
            api(self.config, "DELETE", f"/rest/v1/plans/{plan_id}", self.config.service_token)

    # -------------------------------------------------------------------------------------- two users, live

    def test_edit_appears_on_other_page_within_1s(self) -> str:
        a, b = self.two_pages()
        task = self.tasks[0]
        timings = []
        for attempt in range(3):
            title = f"Live edit {attempt} {uuid.uuid4().hex[:6]}"
            a.type_title(task, title, commit=False)
            field = a.title_input(task)
            started = time.monotonic()
            field.send_keys(Keys.ENTER)
            wait_until(lambda: (b.row(task) or {}).get("title") == title, 5, f"B shows A's title {title!r}")
            timings.append(time.monotonic() - started)
        check(max(timings) < 1.0, f"an edit took {max(timings):.3f}s to reach the other page (limit 1 s): {timings}")
        row = b.row(task)
        check(row["updated"], f"B marks the row as updated by someone else: {row}")
        # A status change travels too, with its colour.
        a.set_status(self.tasks[1], "done")
        wait_until(lambda: (b.row(self.tasks[1]) or {}).get("status") == "done", 2, "B shows the new status")
        colour = b.driver.execute_script(
            f"return getComputedStyle(document.querySelector('[data-task-id=\"{self.tasks[1]}\"]')).borderLeftColor")
        check(colour == "rgb(22, 163, 74)", f"a done task is green on B, got {colour}")
        check(not a.row(task)["updated"], "A does not mark its own edit as updated elsewhere")
        return "edit → other page in " + ", ".join(f"{t * 1000:.0f} ms" for t in timings)

    def test_presence_label_appears_then_disappears(self) -> str:
        a, b = self.two_pages()
        task = self.tasks[2]
        expected = f"{display_name(self.config, self.admin_id)} is editing"
        a.title_input(task).click()
        started = time.monotonic()
        wait_until(lambda: (b.row(task) or {}).get("presence") == expected, 5, f"B shows {expected!r} on the slot")
        shown = time.monotonic() - started
        # A picture of the page as a user sees it (the presence label, the updated mark, status colours).
        os.makedirs(self.config.artifacts, exist_ok=True)
        b.driver.save_screenshot(os.path.join(self.config.artifacts, "screenshot.png"))
        check(not a.row(task)["presence"], "A does not label its own editing")
        others = [row for row in b.rows() if row["id"] != task and row["presence"]]
        check(not others, f"only the edited slot is labelled: {others}")
        a.blur()
        started = time.monotonic()
        wait_until(lambda: (b.row(task) or {}).get("presence") == "", 5, "the label disappears after A stops editing")
        gone = time.monotonic() - started
        return f"label shown after {shown * 1000:.0f} ms, gone {gone * 1000:.0f} ms after blur"

    def test_user_of_other_branch_sees_nothing(self) -> str:
        a, _ = self.two_pages()
        outsider = self.page("C-other-branch", self.other_token, self.plan_id)
        wait_until(outsider.plan_error, 10, "the outsider is told the plan cannot be seen")
        check(outsider.rows() == [], f"the outsider sees no rows of the plan: {outsider.rows()}")
        # The same user on their own plan sees it live, and nothing of the other branch arrives.
        outsider.close()
        own = self.page("C-own-plan", self.other_token, self.other_plan)
        own.wait_live()
        wait_until(lambda: [row["title"] for row in own.rows()] == ["Elsewhere"], 10, "the outsider's own plan")
        secret = f"Secret {uuid.uuid4().hex[:6]}"
        a.type_title(self.tasks[3], secret)
        wait_until(lambda: (a.row(self.tasks[3]) or {}).get("pending") is False, 5, "A's edit is confirmed")
        # And a live edit on the outsider's own plan still arrives, so the stream works while showing nothing else.
        must(self.config, "PATCH", f"/rest/v1/tasks/{self.other_tasks[0]}", self.config.service_token, {"title": "Elsewhere, edited"})
        wait_until(lambda: [row["title"] for row in own.rows()] == ["Elsewhere, edited"], 5, "the outsider's own plan updates live")
        texts = own.driver.execute_script("return document.body.innerText + JSON.stringify([...document.querySelectorAll('input')].map(i => i.value))")
        check(secret not in texts, "nothing of the other branch reaches the outsider's page")
        status, rows = api(self.config, "GET", f"/rest/v1/tasks?plan_id=eq.{self.plan_id}", self.other_token)
        check(status == 200 and rows == [], f"REST agrees: {status} {rows}")
        own.close()
        return "404 on the other branch's plan, own plan live, no foreign rows"

    # -------------------------------------------------------------------------------------- offline

    def test_offline_queue_drains_in_order(self) -> str:
        a, b = self.two_pages()
        before = plan_tasks(self.config, self.plan_id)
        # The stream is live until it drops, so the stale period starts no earlier than this.
        offline_at = time.monotonic()
        a.set_offline(True)
        wait_until(lambda: a.status() in ("offline", "stale"), 5, f"A goes offline (status {a.status()!r})")
        went_offline = time.monotonic()
        edits = [(self.tasks[0], "Offline one"), (self.tasks[2], "Offline three")]
        a.type_title(edits[0][0], edits[0][1])
        time.sleep(0.05)
        a.set_status(self.tasks[1], "posted")
        time.sleep(0.05)
        a.type_title(edits[1][0], edits[1][1])
        time.sleep(0.05)
        # A new task, made offline: its client-made id must end up as exactly one row.
        known = {row["id"] for row in a.rows()}
        a.driver.find_element(By.CSS_SELECTOR, '[data-testid="add-task"]').click()
        new_id = wait_until(lambda: next((row["id"] for row in a.rows() if row["id"] not in known), None), 3, "the new task shows")
        wait_until(lambda: a.driver.switch_to.active_element.get_attribute("data-testid") == "task-title", 2, "the new title has focus")
        a.driver.switch_to.active_element.send_keys(Keys.CONTROL, "a")
        a.driver.switch_to.active_element.send_keys("Made offline", Keys.ENTER)
        written = (self.tasks[0], self.tasks[1], self.tasks[2], new_id)
        wait_until(lambda: all((a.row(task_id) or {}).get("pending") for task_id in written), 2,
                   f"the four rows show as pending while offline: {[a.row(task_id) for task_id in written]}")
        count = a.driver.find_element(By.CSS_SELECTOR, '[data-testid="pending-count"]').text
        check(count == "5 pending", f"the pending counter says so: {count!r}")
        # No banner before the stale period: on a busy machine the steps above may take longer than the period itself,
        # so a banner seen now must come at least the period after the stream dropped.
        banner_now, elapsed = a.banner_visible(), time.monotonic() - offline_at
        check(not banner_now or elapsed >= STALE_AFTER_MS / 1000,
              f"no banner before the stale period (banner shown {elapsed:.2f} s after going offline)")
        wait_until(a.banner_visible, STALE_AFTER_MS / 1000 + 5, "the yellow banner after the stale period")
        banner_after = time.monotonic() - went_offline
        check(a.status() == "stale", f"status is stale: {a.status()}")
        check((b.row(self.tasks[0]) or {}).get("title") != "Offline one", "B has not seen the offline edit yet")

        a.set_offline(False)
        wait_until(lambda: a.status() == "live", 10, "A reconnects")
        wait_until(lambda: not any(row["pending"] for row in a.rows()), 10, "A's queue drains")
        check(not a.banner_visible(), "the banner is gone once live")
        wait_until(lambda: (b.row(self.tasks[0]) or {}).get("title") == "Offline one", 5, "B converges (1)")
        wait_until(lambda: (b.row(self.tasks[1]) or {}).get("status") == "posted", 5, "B converges (2)")
        wait_until(lambda: (b.row(self.tasks[2]) or {}).get("title") == "Offline three", 5, "B converges (3)")
        wait_until(lambda: (b.row(new_id) or {}).get("title") == "Made offline", 5, "B shows the task made offline")

        after = plan_tasks(self.config, self.plan_id)
        ids = [row["id"] for row in after]
        check(len(ids) == len(set(ids)), "no duplicate ids")
        check(len(after) == len(before) + 1, f"exactly one new row: {len(before)} → {len(after)}")
        check([row["title"] for row in after].count("Made offline") == 1, "the offline task exists once")
        by_id = {row["id"]: row for row in after}
        order = [by_id[self.tasks[0]]["updated_at"], by_id[self.tasks[1]]["updated_at"], by_id[self.tasks[2]]["updated_at"],
                 by_id[new_id]["updated_at"]]
        check(order == sorted(order), f"the writes kept the order they were made in: {order}")
        check(by_id[new_id]["title"] == "Made offline", "the insert and then the title edit were replayed in order")
        history = must(self.config, "GET", f"/rest/v1/status_history?task_id=eq.{self.tasks[1]}&order=changed_at.asc",
                       self.config.service_token)
        check([entry["to_status"] for entry in history][-1] == "posted", f"one status change recorded: {history}")
        return f"5 writes queued, banner after {banner_after:.1f}s, drained in order, {len(after)} rows, no duplicates"

    # -------------------------------------------------------------------------------------- policy and conflicts

    def test_viewer_edit_is_rolled_back_with_toast(self) -> str:
        viewer = self.page("V-viewer", self.config.viewer_token, self.plan_id)
        viewer.wait_live()
        task = self.tasks[4]
        wait_until(lambda: viewer.row(task), 10, "the viewer sees the plan")
        original = viewer.row(task)["title"]
        viewer.type_title(task, "Viewer was here")
        wait_until(viewer.toasts, 5, "a toast tells the viewer")
        toast = viewer.toasts()[0]
        check("not saved" in toast and "not allowed" in toast, f"the toast says why: {toast!r}")
        wait_until(lambda: viewer.row(task)["title"] == original, 2, "the title is rolled back")
        check(viewer.row(task)["pending"] is False, "nothing stays pending")
        stored = must(self.config, "GET", f"/rest/v1/tasks/{task}", self.config.service_token)
        check(stored["title"] == original, f"the database kept {original!r}: {stored['title']!r}")
        viewer.close()
        return f"rolled back to {original!r}, toast {toast!r}"

    def test_conflict_last_write_wins_with_updated_mark(self) -> str:
        a, b = self.two_pages()
        task = self.tasks[3]
        # A edits offline first; B edits the same task later, online: B's edit is the last write.
        a.set_offline(True)
        wait_until(lambda: a.status() in ("offline", "stale"), 5, "A offline")
        a.type_title(task, "A's earlier offline edit")
        wait_until(lambda: (a.row(task) or {}).get("pending") is True, 2, "A's edit is pending")
        # B's edit must be later than A's by more than two pages' estimates of the server's clock may differ: each
        # reads it from `Date` headers, to the second. 0.3 s was less, and A's stamp came out later than B's in CI.
        time.sleep(1.5)
        b.type_title(task, "B's later edit")
        wait_until(lambda: (b.row(task) or {}).get("pending") is False, 5, "B's edit is confirmed")
        a.set_offline(False)
        wait_until(lambda: (a.row(task) or {}).get("title") == "B's later edit", 10, "A takes the server's (later) row")
        # B's row can reach A on its stream before the answer (409) to A's queued edit does: the mark follows that answer.
        wait_until(lambda: (a.row(task) or {}).get("updatedText") == "updated elsewhere", 10, "A's edit answered 409")
        row = a.row(task)
        check(row["updated"] and row["updatedText"] == "updated elsewhere", f"A marks it updated elsewhere: {row}")
        check(not row["pending"], "nothing pending")
        check(b.row(task)["title"] == "B's later edit", "B keeps its edit")
        stored = must(self.config, "GET", f"/rest/v1/tasks/{task}", self.config.service_token)
        check(stored["title"] == "B's later edit", f"the database has the last write: {stored['title']!r}")

        # Both online, one after the other: the later write wins everywhere, and the other page marks it.
        a.type_title(task, "A online edit")
        wait_until(lambda: (b.row(task) or {}).get("title") == "A online edit", 3, "B sees A's edit")
        b.type_title(task, "B online edit")
        wait_until(lambda: (a.row(task) or {}).get("title") == "B online edit", 3, "A sees B's later edit")
        check(a.row(task)["updated"], "A marks B's change as updated")
        stored = must(self.config, "GET", f"/rest/v1/tasks/{task}", self.config.service_token)
        check(stored["title"] == "B online edit", "the last write is stored")
        return "offline edit lost to the later online one (409 → updated elsewhere); online edits: last wins"

    def test_queue_survives_reload(self) -> str:
        a, b = self.two_pages()
        task = self.tasks[4]
        title = f"Survives reload {uuid.uuid4().hex[:6]}"
        # Block the API only: the page's own files still load, so the page can be reloaded "offline".
        a.block_api(True)
        a.type_title(task, title)
        wait_until(lambda: (a.row(task) or {}).get("pending") is True, 2, "the edit is pending")
        time.sleep(0.5)  # IndexedDB has written the queue by now (it is written at once; this is a margin)
        a.driver.refresh()
        wait_until(lambda: a.driver.find_element(By.CSS_SELECTOR, '[data-testid="pending-count"]').text == "1 pending", 10,
                   "after the reload the queue is back from IndexedDB")
        stored = must(self.config, "GET", f"/rest/v1/tasks/{task}", self.config.service_token)
        check(stored["title"] != title, "nothing reached the server yet")
        a.block_api(False)
        wait_until(lambda: (a.row(task) or {}).get("title") == title and not a.row(task)["pending"], 40,
                   "the queue drains once the server is reachable again")
        wait_until(lambda: (b.row(task) or {}).get("title") == title, 5, "B converges")
        a.wait_live(40)
        stored = must(self.config, "GET", f"/rest/v1/tasks/{task}", self.config.service_token)
        check(stored["title"] == title, f"the database has the edit made before the reload: {stored['title']!r}")
        return "a pending edit survived a reload (IndexedDB) and was replayed"

    # -------------------------------------------------------------------------------------- many rows

    def test_many_tasks_are_virtualized(self) -> str:
        count = self.config.big_plan_tasks
        if count <= 0:
            return "skipped (REALTIME_BIG_PLAN_TASKS=0)"
        today = dt.date.today()
        plan_id, _ = make_plan(self.config, self.config.branch_id, f"Big plan ({count} tasks)", [], days=31)
        self.plans_made.append(plan_id)
        start = dt.datetime.combine(today, dt.time(0, 0), tzinfo=dt.timezone.utc)

        def create(index: int) -> None:
            begins = start + dt.timedelta(minutes=10 * index)
            must(self.config, "POST", "/rest/v1/tasks", self.config.service_token, {
                "plan_id": plan_id, "title": f"Task {index:05d}",
                "starts_at": iso(begins), "ends_at": iso(begins + dt.timedelta(minutes=9)),
                "status": ["taken", "done", "posted", "edited"][index % 4],
            })

        made = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(create, range(count)))
        made = time.monotonic() - made
        first = must(self.config, "GET", f"/rest/v1/tasks?plan_id=eq.{plan_id}&limit=1", self.config.service_token)[0]["id"]
        relayed = wait_for_feed(self.config, plan_id, first)
        page = self.page("big", self.config.admin_token, plan_id, "&measure=1")
        opened = time.monotonic()
        wait_until(lambda: page.driver.find_element(By.CSS_SELECTOR, '[data-testid="plan-meta"]').text == f"{count} tasks",
                   60, f"the page counts {count} tasks")
        loaded = time.monotonic() - opened
        page.wait_live(30)
        in_dom = len(page.rows())
        check(0 < in_dom < 100, f"only the rows in view are in the DOM: {in_dom}")
        # Scroll fast (120 px a frame, some 7,000 px a second) for 300 frames, timing each frame and each render (the
        # page's own JS work, which virtualization keeps small); then jump to the end.
        frames = page.driver.execute_async_script("""
          const done = arguments[arguments.length - 1];
          performance.clearMeasures("render");
          const grid = document.querySelector('[data-testid="grid"]');
          const times = [];
          let last = performance.now();
          function tick(now) {
            times.push(now - last); last = now;
            if (times.length > 300) { grid.scrollTop = grid.scrollHeight; done(times); return; }
            grid.scrollTop += 120;
            requestAnimationFrame(tick);
          }
          requestAnimationFrame(tick);
        """)
        frames = sorted(frames[1:])
        p95 = frames[int(len(frames) * 0.95)]
        renders = sorted(page.driver.execute_script(
            "return performance.getEntriesByName('render').map((entry) => entry.duration)"))
        check(len(renders) > 100, f"the scroll drew frames: {len(renders)} renders")
        render_p95 = renders[int(len(renders) * 0.95)]
        last_title = f"Task {count - 1:05d}"
        wait_until(lambda: any(row["title"] == last_title for row in page.rows()), 5, "the last task is drawn at the bottom")
        in_dom_after = len(page.rows())
        check(in_dom_after < 100, f"still only the rows in view after scrolling: {in_dom_after}")
        check(render_p95 < 16, f"drawing a scrolled frame fits in a 60 Hz frame: p95 {render_p95:.1f} ms of JS per render")
        # A live change deep in the list reaches the page too.
        task = must(self.config, "GET", f"/rest/v1/tasks?plan_id=eq.{plan_id}&title=eq.{last_title.replace(' ', '%20')}",
                    self.config.service_token)[0]
        must(self.config, "PATCH", f"/rest/v1/tasks/{task['id']}", self.config.service_token, {"title": "Last, renamed"})
        wait_until(lambda: any(row["title"] == "Last, renamed" for row in page.rows()), 5, "a live change of the last task")
        page.close()
        return (f"{count} tasks made in {made:.1f}s (relayed {relayed:.1f}s later), shown in {loaded:.1f}s, {in_dom} rows in the DOM, "
                f"render p95 {render_p95:.1f} ms / max {renders[-1]:.1f} ms, frame interval p95 {p95:.1f} ms / max {frames[-1]:.1f} ms")


    # -------------------------------------------------------------------------------------- the plan grid (issue 15)

    def grid_pages(self) -> tuple[str, Page, Page]:
        """A fresh, empty plan of today and tomorrow, open in the grid on page A (admin) and page B (editor)."""
        plan_id, _ = make_plan(self.config, self.config.branch_id, f"Grid test {uuid.uuid4().hex[:6]}", [])
        self.plans_made.append(plan_id)
        a = self.page("GA-admin", self.config.admin_token, plan_id, view="grid")
        b = self.page("GB-editor", self.config.editor_token, plan_id, view="grid")
        for page in (a, b):
            page.wait_live()
            wait_until(lambda: page.driver.find_elements(By.CSS_SELECTOR, '[data-testid="slot-add"]'), 10, f"{page.name}: the grid's slots")
        return plan_id, a, b

    def test_grid_two_browsers_see_each_other_within_1s(self) -> str:
        """Creating in an empty slot, a status change, a client card and an attachment: each reaches the other browser
        within 1 s of the write's acknowledgment (A's row no longer pending)."""
        plan_id, a, b = self.grid_pages()
        delays = {}

        def race(what: str, acknowledged, seen, timeout: float = 10) -> None:
            """Polls A and B together: the delay from A's acknowledgment to B showing it (negative: B saw it first)."""
            acked = shown = None
            deadline = time.monotonic() + timeout
            while (acked is None or shown is None) and time.monotonic() < deadline:
                now = time.monotonic()
                if acked is None and acknowledged():
                    acked = now
                if shown is None and seen():
                    shown = now
                time.sleep(0.01)
            check(acked is not None, f"{what}: A's write was acknowledged")
            check(shown is not None, f"{what}: B shows it")
            delays[what] = shown - acked

        # Create: A clicks the empty 09:00 slot of the first day.
        slot = GRID_SLOT_JS
        wait_until(lambda: a.driver.execute_script(slot + "pick(0, '09:00').click(); return true;"), 5, "A clicks the empty 09:00 slot")
        new_id = wait_until(lambda: a.driver.execute_script(GRID_TASKS_JS), 5, "A shows the new task")[0]["id"]
        race("create",
             lambda: any(t["id"] == new_id and not t["pending"] for t in a.driver.execute_script(GRID_TASKS_JS)),
             lambda: any(t["id"] == new_id for t in b.driver.execute_script(GRID_TASKS_JS)))
        # The panel opened on A with the title selected: name it.
        title = a.driver.find_element(By.CSS_SELECTOR, '[data-testid="panel-title-input"]')
        title.send_keys(Keys.CONTROL, "a")
        title.send_keys("Grid task", Keys.ENTER)
        wait_until(lambda: any(t["title"] == "Grid task" for t in b.driver.execute_script(GRID_TASKS_JS)), 5, "B shows the title")
        # Status: a quick status button on A.
        a.driver.find_element(By.CSS_SELECTOR, f'[data-testid="grid-task"][data-task-id="{new_id}"] [data-testid="quick-done"]').click()
        race("status",
             lambda: any(t["id"] == new_id and t["status"] == "done" and not t["pending"] for t in a.driver.execute_script(GRID_TASKS_JS)),
             lambda: any(t["id"] == new_id and t["status"] == "done" for t in b.driver.execute_script(GRID_TASKS_JS)))
        # B opens the same task's panel: the card and the attachment are to appear there.
        b.driver.find_element(By.CSS_SELECTOR, f'[data-testid="grid-task"][data-task-id="{new_id}"] [data-testid="grid-task-open"]').click()
        wait_until(lambda: b.driver.find_element(By.CSS_SELECTOR, '[data-testid="panel"]').is_displayed(), 5, "B's panel")
        # Client card: A makes a new one for the task.
        Select(a.driver.find_element(By.CSS_SELECTOR, '[data-testid="card-select"]')).select_by_value("__new")
        card_value = lambda page: page.driver.execute_script("return document.querySelector('[data-testid=\"card-select\"]').value")
        race("client card",
             lambda: card_value(a) not in ("", "__new") and not a.driver.execute_script(
                 f"return document.querySelector('[data-task-id=\"{new_id}\"]').dataset.pending === 'true'"),
             lambda: card_value(b) not in ("", "__new") and b.driver.find_element(By.CSS_SELECTOR, '[data-testid="card-name"]').get_attribute("value") == "New client")
        # Attachment: A adds one.
        for testid, value in (("att-name", "contract.pdf"), ("att-url", "https://files.example/contract.pdf"), ("att-size", "2048")):
            field = a.driver.find_element(By.CSS_SELECTOR, f'[data-testid="{testid}"]')
            field.clear()
            field.send_keys(value)
        a.driver.find_element(By.CSS_SELECTOR, '[data-testid="att-add"]').click()
        attachments = lambda page: page.driver.execute_script(
            "return [...document.querySelectorAll('[data-testid=\"attachment\"]')].map((item) => item.textContent)")
        race("attachment",
             lambda: any("contract.pdf" in text and "saving" not in text for text in attachments(a)),
             lambda: any("contract.pdf" in text for text in attachments(b)))
        stored = must(self.config, "GET", f"/rest/v1/tasks/{new_id}", self.config.service_token)
        check(stored["status"] == "done" and stored["client_card_id"], f"the server has the task as written: {stored}")
        slow = {what: delay for what, delay in delays.items() if delay >= 1.0}
        check(not slow, f"each reached the other browser within 1 s of its acknowledgment: {delays}")
        return ", ".join(f"{what} {delay * 1000:.0f} ms" for what, delay in delays.items()) + " (from A's acknowledgment to B)"

    def test_viewer_grid_is_read_only(self) -> str:
        plan_id, _ = make_plan(self.config, self.config.branch_id, f"Viewer grid {uuid.uuid4().hex[:6]}", ["Look only"])
        self.plans_made.append(plan_id)
        viewer = self.page("V-grid", self.config.viewer_token, plan_id, view="grid")
        viewer.wait_live()
        wait_until(lambda: viewer.driver.find_element(By.CSS_SELECTOR, '[data-testid="readonly-banner"]').is_displayed(), 10,
                   "the viewer is told the plan is read-only")
        tasks = wait_until(lambda: viewer.driver.execute_script(GRID_TASKS_JS), 10, "the viewer sees the task")
        visible = viewer.driver.execute_script("""
          const shown = (selector) => [...document.querySelectorAll(selector)].filter((e) => e.offsetParent !== null).length;
          return { add: shown('[data-testid="slot-add"]'), quick: shown('[data-testid^="quick-"]'),
                   addTask: shown('[data-testid="add-task"]') };
        """)
        check(visible == {"add": 0, "quick": 0, "addTask": 0}, f"no controls that write: {visible}")
        viewer.driver.find_element(By.CSS_SELECTOR, '[data-testid="grid-task-open"]').click()
        wait_until(lambda: viewer.driver.find_element(By.CSS_SELECTOR, '[data-testid="panel"]').is_displayed(), 5, "the panel opens")
        enabled = viewer.driver.execute_script("""
          return [...document.querySelectorAll('#panel input, #panel select, #panel textarea, #panel button')]
            .filter((e) => e.offsetParent !== null && !e.disabled && e.id !== 'panel-close').map((e) => e.dataset.testid || e.id);
        """)
        check(enabled == [], f"the panel's fields are read-only: {enabled}")
        viewer.close()
        return f"{len(tasks)} task shown; no slot, status, add or panel control enabled"

    def test_grid_overlapping_tasks_stand_side_by_side(self) -> str:
        """Tasks that overlap in time on a day share its width in lanes, so none hides another; a task that overlaps
        nothing keeps the whole width."""
        plan_id, _ = make_plan(self.config, self.config.branch_id, f"Overlaps {uuid.uuid4().hex[:6]}", [])
        self.plans_made.append(plan_id)
        day = dt.datetime.combine(dt.date.today(), dt.time(0, 0), tzinfo=dt.timezone.utc)
        ids = {}
        for title, begins, minutes in [("Long", 9, 120), ("Inside", 10, 50), ("Alone", 12, 50)]:
            ids[title] = str(uuid.uuid4())
            starts = day + dt.timedelta(hours=begins)
            must(self.config, "POST", "/rest/v1/tasks", self.config.service_token, {
                "id": ids[title], "plan_id": plan_id, "title": title,
                "starts_at": iso(starts), "ends_at": iso(starts + dt.timedelta(minutes=minutes)),
            })
        page = self.page("O-grid", self.config.editor_token, plan_id, view="grid")
        page.wait_live()
        wait_until(lambda: len(page.driver.execute_script(GRID_TASKS_JS)) == 3, 10, "the three tasks show")
        boxes = page.driver.execute_script("""
          const box = (id) => { const r = document.querySelector(`[data-testid="grid-task"][data-task-id="${id}"]`).getBoundingClientRect();
                                return { left: r.left, right: r.right, top: r.top, bottom: r.bottom, width: r.width }; };
          return { long: box(arguments[0]), inside: box(arguments[1]), alone: box(arguments[2]) };
        """, ids["Long"], ids["Inside"], ids["Alone"])
        long, inside, alone = boxes["long"], boxes["inside"], boxes["alone"]
        check(long["bottom"] > inside["top"] and inside["bottom"] > long["top"], f"the two overlap in time on screen: {boxes}")
        check(long["right"] <= inside["left"] or inside["right"] <= long["left"], f"overlapping tasks stand side by side: {boxes}")
        check(alone["width"] > 1.5 * long["width"], f"a task that overlaps nothing keeps the day's width: {boxes}")
        page.close()
        return f"two overlapping tasks {long['width']:.0f} px wide each, the one alone {alone['width']:.0f} px"

    def test_slow_clock_gets_no_false_409(self) -> str:
        """A browser whose clock is 60 s slow edits a task right after another user: its edit is the last one, not a
        false 409 (the client stamps updated_at in the server's time)."""
        plan_id, tasks = make_plan(self.config, self.config.branch_id, f"Slow clock {uuid.uuid4().hex[:6]}", ["Clock test"])
        self.plans_made.append(plan_id)
        slow = self.page("S-slow", self.config.editor_token, plan_id, before_load=SLOW_CLOCK_JS)
        slow.wait_live()
        wait_until(lambda: slow.row(tasks[0]), 10, "the slow page shows the task")
        skew = slow.driver.execute_script("return Date.now() - new Date().getTime()")
        check(skew < -55_000, f"the page's Date.now is 60 s slow: {skew} ms")
        must(self.config, "PATCH", f"/rest/v1/tasks/{tasks[0]}", self.config.admin_token, {"title": "Someone else first"})
        wait_until(lambda: (slow.row(tasks[0]) or {}).get("title") == "Someone else first", 5, "the other edit arrives")
        slow.type_title(tasks[0], "Slow clock wins")
        wait_until(lambda: (slow.row(tasks[0]) or {}).get("pending") is False, 10, "the edit is confirmed")
        row = slow.row(tasks[0])
        check(row["title"] == "Slow clock wins", f"the page keeps its edit: {row}")
        check(row["updatedText"] != "updated elsewhere", f"no conflict: {row}")
        check(not any("newer version" in toast for toast in slow.toasts()), f"no conflict toast: {slow.toasts()}")
        stored = must(self.config, "GET", f"/rest/v1/tasks/{tasks[0]}", self.config.service_token)
        check(stored["title"] == "Slow clock wins", f"the server has the later edit: {stored['title']!r}")
        slow.close()
        return "an edit from a page 60 s slow was accepted after another user's edit"

    def test_two_tabs_offline_every_write_lands_once(self) -> str:
        plan_id, tasks = make_plan(self.config, self.config.branch_id, f"Two tabs {uuid.uuid4().hex[:6]}", ["One", "Two"])
        self.plans_made.append(plan_id)
        first = self.page("T-tab1", self.config.editor_token, plan_id)
        first.wait_live()
        driver = first.driver
        tab1 = driver.current_window_handle
        driver.switch_to.new_window("tab")
        tab2 = driver.current_window_handle
        first.open(self.config.editor_token, plan_id)
        first.wait_live()
        wait_until(lambda: first.row(tasks[1]), 10, "tab 2 shows the plan")
        for handle in (tab1, tab2):
            driver.switch_to.window(handle)
            first.set_offline(True)
            wait_until(lambda: first.status() in ("offline", "stale"), 5, "a tab goes offline")
        driver.switch_to.window(tab1)
        first.type_title(tasks[0], "From tab one")
        first.set_status(tasks[0], "done")
        driver.switch_to.window(tab2)
        first.type_title(tasks[1], "From tab two")
        first.set_status(tasks[1], "posted")
        pending = lambda: driver.find_element(By.CSS_SELECTOR, '[data-testid="pending-count"]').text
        wait_until(lambda: pending() == "4 pending", 5, f"tab 2 sees all four pending writes, its own and tab 1's ({pending()!r})")
        wait_until(lambda: (first.row(tasks[0]) or {}).get("title") == "From tab one", 5, "tab 2 shows tab 1's pending edit")
        for handle in (tab1, tab2):
            driver.switch_to.window(handle)
            first.set_offline(False)
        for handle in (tab1, tab2):
            driver.switch_to.window(handle)
            first.wait_live(20)
            wait_until(lambda: first.driver.find_element(By.CSS_SELECTOR, '[data-testid="pending-count"]').is_displayed() is False,
                       20, "the queue drains in every tab")
        stored = {row["id"]: row for row in plan_tasks(self.config, plan_id)}
        check(stored[tasks[0]]["title"] == "From tab one" and stored[tasks[0]]["status"] == "done", f"tab 1's writes: {stored[tasks[0]]}")
        check(stored[tasks[1]]["title"] == "From tab two" and stored[tasks[1]]["status"] == "posted", f"tab 2's writes: {stored[tasks[1]]}")
        for task_id, status in ((tasks[0], "done"), (tasks[1], "posted")):
            history = must(self.config, "GET", f"/rest/v1/status_history?task_id=eq.{task_id}&to_status=eq.{status}",
                           self.config.service_token)
            check(len(history) == 1, f"the status change of {task_id} landed once: {history}")
        first.close()
        return "4 writes from 2 offline tabs: each tab saw all 4 pending; each landed once"

    def test_bad_channel_beside_good_one(self) -> str:
        plan_id, tasks = make_plan(self.config, self.config.branch_id, f"Channels {uuid.uuid4().hex[:6]}", ["Channel test"])
        self.plans_made.append(plan_id)
        page = self.page("C-channels", self.config.editor_token, plan_id)
        page.wait_live()
        page.driver.execute_async_script(CHANNELS_JS, self.config.editor_token, plan_id)
        wait_until(lambda: page.driver.execute_script("return window.__channels && window.__channels.good.includes('SUBSCRIBED')"), 15,
                   "the good channel subscribes")
        must(self.config, "PATCH", f"/rest/v1/tasks/{tasks[0]}", self.config.service_token, {"title": "Still live"})
        wait_until(lambda: page.driver.execute_script("return window.__channels.changes.includes('Still live')"), 10,
                   "the good channel still receives changes")
        result = page.driver.execute_script("return window.__channels")
        check(result["bad"] == ["CHANNEL_ERROR"], f"only the bad channel errors: {result}")
        check("CHANNEL_ERROR" not in result["good"], f"the good channel never errors: {result}")
        page.close()
        return f"good channel {result['good']}, bad channel {result['bad']}"

    def test_hung_write_times_out_and_queue_moves_on(self) -> str:
        plan_id, tasks = make_plan(self.config, self.config.branch_id, f"Hung write {uuid.uuid4().hex[:6]}", ["First", "Second"])
        self.plans_made.append(plan_id)
        page = self.page("H-hung", self.config.editor_token, plan_id)
        page.wait_live()
        started = time.monotonic()
        outcome = page.driver.execute_async_script(HUNG_WRITE_JS, self.config.editor_token, plan_id, tasks[0], tasks[1])
        took = time.monotonic() - started
        check(outcome["hung"] == 1, f"the first attempt hung: {outcome}")
        check(outcome["first"] is None and outcome["second"] is None, f"both writes succeeded: {outcome}")
        stored = {row["id"]: row["title"] for row in plan_tasks(self.config, plan_id)}
        check(stored == {tasks[0]: "After the hang", tasks[1]: "Behind the hang"}, f"both landed: {stored}")
        page.close()
        return f"a PATCH that never answered timed out (2 s deadline) and was sent again; both writes landed in {took:.1f}s"

    def test_accessibility_and_screenshots(self) -> str:
        """axe-core on the grid at 1280 and 390 px wide: no violation of impact serious or critical. Screenshots of
        both go to BROWSER_TEST_SCREENSHOTS (docs/ when making the README's pictures)."""
        from axe_selenium_python import Axe  # noqa: PLC0415 — only this test needs it

        titles = ["Morning delivery", "Client visit", "Inventory", "Team call", "Report"]
        plan_id, tasks = make_plan(self.config, self.config.branch_id, f"Accessible week {uuid.uuid4().hex[:4]}", titles)
        self.plans_made.append(plan_id)
        for task_id, status in zip(tasks, ["taken", "done", "posted", "edited", "done"]):
            must(self.config, "PATCH", f"/rest/v1/tasks/{task_id}", self.config.service_token, {"status": status})
        other = self.page("X-other", self.config.admin_token, plan_id, view="grid")
        other.wait_live()
        wait_until(lambda: other.driver.execute_script(GRID_TASKS_JS), 10, "the other page's grid")
        other.driver.find_element(By.CSS_SELECTOR, f'[data-task-id="{tasks[1]}"] [data-testid="grid-task-open"]').click()
        summary = []
        shots = os.environ.get("BROWSER_TEST_SCREENSHOTS", self.config.artifacts)
        os.makedirs(shots, exist_ok=True)
        for width in (1280, 390):
            page = self.page(f"A11y-{width}", self.config.editor_token, plan_id, view="grid", width=width)
            page.wait_live()
            wait_until(lambda: page.driver.execute_script(GRID_TASKS_JS), 10, f"{width} px: the grid's tasks")
            wait_until(lambda: page.driver.find_elements(By.CSS_SELECTOR, '.people:not([hidden])'), 10, f"{width} px: presence shows")
            viewport = page.driver.execute_script("return window.innerWidth")
            check(viewport == width, f"the page is {viewport} px wide")
            page.driver.execute_script("document.querySelector('[data-testid=\"slots\"]').scrollLeft = 0")
            time.sleep(0.2)  # one frame for the scroll to be drawn: only the picture depends on it
            page.driver.save_screenshot(os.path.join(shots, f"grid-{width}.png"))
            axe = Axe(page.driver)
            axe.inject()
            results = axe.run()
            bad = [v for v in results["violations"] if v.get("impact") in ("serious", "critical")]
            check(not bad, f"{width} px: axe found {[(v['id'], v['impact'], len(v['nodes'])) for v in bad]}")
            minor = sorted({v["id"] for v in results["violations"]})
            summary.append(f"{width} px: 0 serious/critical ({len(results['passes'])} rules passed; minor: {minor or 'none'})")
            page.close()
        other.close()
        return "; ".join(summary)

    def test_grid_many_tasks_are_virtualized(self) -> str:
        """Four weeks with thousands of tasks in the grid: only the slots and tasks in view are in the DOM, before and
        after scrolling, and a live change arrives. The render times are reported (see below)."""
        count = min(self.config.big_plan_tasks, 2000)
        if count <= 0:
            return "skipped (REALTIME_BIG_PLAN_TASKS=0)"
        today = dt.date.today()
        plan_id, _ = make_plan(self.config, self.config.branch_id, f"Busy month ({count} tasks)", [], days=28)
        self.plans_made.append(plan_id)
        start = dt.datetime.combine(today, dt.time(0, 0))
        per_day = -(-count // 28)

        def create(index: int) -> None:
            # Local times, as the grid shows them: the tasks of a day spread over its 48 slots.
            day, n = divmod(index, per_day)
            begins = (start + dt.timedelta(days=day, minutes=(n * 1440 // per_day))).astimezone()
            must(self.config, "POST", "/rest/v1/tasks", self.config.service_token, {
                "plan_id": plan_id, "title": f"Busy {index:05d}",
                "starts_at": iso(begins), "ends_at": iso(begins + dt.timedelta(minutes=25)),
                "status": ["taken", "done", "posted", "edited"][index % 4],
            })

        with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(create, range(count)))
        first = must(self.config, "GET", f"/rest/v1/tasks?plan_id=eq.{plan_id}&limit=1", self.config.service_token)[0]["id"]
        wait_for_feed(self.config, plan_id, first)
        page = self.page("grid-big", self.config.admin_token, plan_id, "&measure=1", view="grid")
        wait_until(lambda: page.driver.find_element(By.CSS_SELECTOR, '[data-testid="plan-meta"]').text.startswith(f"{count} tasks"),
                   60, f"the grid counts {count} tasks")
        page.wait_live(30)
        in_dom = len(page.driver.execute_script(GRID_TASKS_JS))
        check(0 < in_dom < count // 4, f"only the tasks in view are in the DOM: {in_dom} of {count}")
        def scroll(down: int, right: int) -> list[float]:
            """Scrolls the grid by (down, right) px a frame for 200 frames; the JS time of each render."""
            return sorted(page.driver.execute_async_script("""
              const [down, right, done] = arguments;
              performance.clearMeasures("render");
              const grid = document.querySelector('[data-testid="slots"]');
              let frames = 0;
              function tick() {
                if (++frames > 200) {
                  done(performance.getEntriesByName('render').map((entry) => entry.duration));
                  return;
                }
                grid.scrollTop = (grid.scrollTop + down) % (grid.scrollHeight - grid.clientHeight);
                grid.scrollLeft = (grid.scrollLeft + right) % Math.max(1, grid.scrollWidth - grid.clientWidth);
                requestAnimationFrame(tick);
              }
              requestAnimationFrame(tick);
            """, down, right))

        # Through the day, then across the days too. The JS time per render is measured and reported, not asserted:
        # on a busy 2-core machine its p95 went from 11 to 63 ms between runs of the same build (the list's test,
        # with 21 rows in the DOM, stays under 16 ms); issue 15's report gives the figures.
        renders = scroll(60, 0)
        check(len(renders) > 50, f"the scroll drew frames: {len(renders)} renders")
        p95 = renders[int(len(renders) * 0.95)]
        in_dom_after = len(page.driver.execute_script(GRID_TASKS_JS))
        check(in_dom_after < count // 4, f"still only the tasks in view after scrolling: {in_dom_after}")
        diagonal = scroll(60, 25)
        in_dom_after = len(page.driver.execute_script(GRID_TASKS_JS))
        check(in_dom_after < count // 4, f"still only the tasks in view after scrolling across days: {in_dom_after}")
        diagonal_p95 = diagonal[int(len(diagonal) * 0.95)]
        # A live change to a task in view arrives.
        target = page.driver.execute_script(GRID_TASKS_JS)[0]["id"]
        must(self.config, "PATCH", f"/rest/v1/tasks/{target}", self.config.service_token, {"title": "Busy, renamed"})
        wait_until(lambda: any(t["title"] == "Busy, renamed" for t in page.driver.execute_script(GRID_TASKS_JS)), 5,
                   "a live change reaches the grid")
        page.close()
        return (f"{count} tasks in 4 weeks, {in_dom} in the DOM; JS per render (not asserted) p95 {p95:.1f} ms / max "
                f"{renders[-1]:.1f} ms through the day, p95 {diagonal_p95:.1f} ms / max {diagonal[-1]:.1f} ms across days too")

GRID_TASKS_JS = """
return [...document.querySelectorAll('[data-testid="grid-task"]')].map((task) => ({
  id: task.dataset.taskId,
  status: task.dataset.status,
  pending: task.dataset.pending === 'true',
  title: task.querySelector('.task-title').textContent,
}));
"""

# `pick(dayIndex, "HH:MM")`: the empty-slot button of that day and time, scrolled into view.
GRID_SLOT_JS = """
const pick = (day, time) => {
  const cell = [...document.querySelectorAll('[role="gridcell"]')]
    .find((c) => c.dataset.day === String(day) && c.dataset.slotKey.endsWith('T' + time));
  if (!cell) {
    const grid = document.querySelector('[data-testid="slots"]');
    const [h, m] = time.split(':').map(Number);
    grid.scrollTop = Math.max(0, (h * 2 + m / 30) * 44 - 100);
    throw new Error('slot not drawn yet; scrolled to it');
  }
  return cell.querySelector('[data-testid="slot-add"]');
};
"""

# A page clock 60 s behind the real one (as a device whose clock is off would be).
SLOW_CLOCK_JS = "(() => { const real = Date.now.bind(Date); Date.now = () => real() - 60000; })();"

# One client with a good and a bad channel; records what each hears.
CHANNELS_JS = """
const [token, planId, done] = arguments;
import('/client/realtime.js').then(({ createClient, createMemoryStorage }) => {
  const client = createClient({ url: location.origin, token, storage: createMemoryStorage() });
  window.__channels = { good: [], bad: [], changes: [] };
  client.channel('plan:' + planId)
    .on('postgres_changes', { table: 'task' }, (change) => window.__channels.changes.push(change.new.title))
    .subscribe((status) => window.__channels.good.push(status));
  client.channel('plan:not-a-uuid').subscribe((status) => window.__channels.bad.push(status));
  done(true);
});
"""

# Two writes through a client whose first PATCH never gets an answer: the deadline (2 s) gives it up, it is sent
# again, and the write queued behind it lands too.
HUNG_WRITE_JS = """
const [token, planId, first, second, done] = arguments;
import('/client/realtime.js').then(async ({ createClient, createMemoryStorage }) => {
  let hung = 0;
  const fetchOnce = (url, init = {}) => {
    if ((init.method || 'GET') === 'PATCH' && hung === 0) {
      hung++;
      return new Promise((_, reject) => init.signal?.addEventListener('abort', () => reject(init.signal.reason)));
    }
    return fetch(url, init);
  };
  const client = createClient({ url: location.origin, token, fetch: fetchOnce, storage: createMemoryStorage(), requestTimeoutMs: 2000 });
  await client.loadPlan(planId);
  const a = client.from('tasks').update({ title: 'After the hang' }).eq('id', first);
  const b = client.from('tasks').update({ title: 'Behind the hang' }).eq('id', second);
  const [ra, rb] = await Promise.all([a, b]);
  client.close();
  done({ hung, first: ra.error, second: rb.error });
});
"""

TESTS = [
    "test_edit_appears_on_other_page_within_1s",
    "test_presence_label_appears_then_disappears",
    "test_user_of_other_branch_sees_nothing",
    "test_offline_queue_drains_in_order",
    "test_viewer_edit_is_rolled_back_with_toast",
    "test_conflict_last_write_wins_with_updated_mark",
    "test_queue_survives_reload",
    "test_many_tasks_are_virtualized",
    "test_grid_two_browsers_see_each_other_within_1s",
    "test_viewer_grid_is_read_only",
    "test_grid_overlapping_tasks_stand_side_by_side",
    "test_slow_clock_gets_no_false_409",
    "test_two_tabs_offline_every_write_lands_once",
    "test_bad_channel_beside_good_one",
    "test_hung_write_times_out_and_queue_moves_on",
    "test_accessibility_and_screenshots",
    "test_grid_many_tasks_are_virtualized",
]


def main() -> int:
    config = Config()
    missing = config.missing()
    if missing:
        print(f"browser tests: cannot run, missing {', '.join(missing)} (see the top of {__file__})")
        return 1
    status, _ = api(config, "GET", "/", None)
    if status != 200:
        print(f"browser tests: {config.url}/ answered {status}: is the server running and serving the page?")
        return 1
    suite = Suite(config)
    if suite.feed_wait > 1:
        print(f"(waited {suite.feed_wait:.1f}s for the change feed to catch up before starting)", flush=True)
    results = []
    try:
        for name in TESTS:
            if config.only and name not in config.only:
                continue
            started = time.monotonic()
            try:
                detail = getattr(suite, name)()
                results.append((name, True, detail, time.monotonic() - started))
                print(f"PASS {name} ({time.monotonic() - started:.1f}s): {detail}", flush=True)
            except Exception as error:  # noqa: BLE001 — every failure is reported, then the next test runs
                saved = []
                for page in suite.pages:
                    saved += page.save_artifacts(name)
                reason = f"{type(error).__name__}: {error}"
                results.append((name, False, reason, time.monotonic() - started))
                print(f"FAIL {name} ({time.monotonic() - started:.1f}s): {reason}", flush=True)
                if not isinstance(error, TestFailure):
                    traceback.print_exc()
                if saved:
                    print(f"     artifacts: {', '.join(saved)}", flush=True)
                # A failed test may leave pages in any state: start the next one with fresh pages.
                suite.close()
                suite.pages, suite.a, suite.b = [], None, None
    finally:
        suite.close()
        suite.remove_data()
    passed = sum(1 for _, ok, _, _ in results if ok)
    failed = len(results) - passed
    print()
    print("Browser tests against", config.url)
    for name, ok, detail, seconds in results:
        print(f"  {'ok  ' if ok else 'FAIL'} {name} ({seconds:.1f}s)")
    print(f"{passed} passed, {failed} failed")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
