"""The web dashboard in a real headless Chromium (Debian's `chromium` and `chromedriver`,
driven by Selenium) against a real server: sign in, live updates without reloading, health
changes, token revocation, what a service token sees, and a screenshot of every view.

Screenshots go to the test's temp dir, or to $REGISTRY_SVC_SCREENSHOTS (the README's
images in docs/ are made with `REGISTRY_SVC_SCREENSHOTS=docs pytest tests/test_dashboard.py`).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_health import Backend

from conftest import NO_CHECK, Server

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.common.exceptions import (  # noqa: E402
    NoSuchElementException,
    StaleElementReferenceException,
    TimeoutException,
)
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
pytestmark = pytest.mark.skipif(
    not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()),
    reason="needs Debian's chromium and chromium-driver (`make test` installs them)",
)


def browser(width: int = 1280, height: int = 900) -> WebDriver:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                f"--window-size={width},{height}", "--lang=en-US"):  # fmt: skip
        options.add_argument(arg)
    # The system driver, never a download (Selenium Manager stays offline).
    os.environ["SE_OFFLINE"] = "true"
    return webdriver.Chrome(service=webdriver.ChromeService(executable_path=CHROMEDRIVER), options=options)


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = Server(tmp_path_factory.mktemp("dashboard"), args=["--heartbeat-seconds", "0.5"]).start()
    yield server
    server.kill9()


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = os.environ.get("REGISTRY_SVC_SCREENSHOTS")
    folder = Path(target) if target else tmp_path_factory.mktemp("screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture
def driver() -> Iterator[WebDriver]:
    d = browser()
    yield d
    d.quit()


def wait_for(driver: WebDriver, condition: object, what: str, timeout: float = 15.0) -> object:
    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.1).until(condition)  # type: ignore[arg-type]
    except TimeoutException:
        raise AssertionError(
            f"timed out waiting for {what}; page says: {driver.find_element(By.TAG_NAME, 'body').text[:2000]}"
        ) from None


def sign_in(driver: WebDriver, server: Server, token: str) -> None:
    driver.get(f"{server.url}/ui")
    field = wait_for(
        driver,
        lambda d: d.find_element(By.ID, "token") if d.find_element(By.ID, "token").is_displayed() else None,
        "the sign-in form",
    )
    # The navigation belongs to a signed-in page (CSS once showed it over the sign-in form).
    assert not driver.find_element(By.ID, "nav").is_displayed()
    field.send_keys(token)  # type: ignore[attr-defined]
    driver.find_element(By.CSS_SELECTOR, "#login button[type=submit]").click()
    wait_for(driver, lambda d: "Live: updated" in d.find_element(By.ID, "status").text, "the first refresh")


def text_of(driver: WebDriver, css: str) -> str:
    """The element's text, or '' if it is missing or was just redrawn (the page redraws
    rows whose heartbeat age changed)."""
    try:
        return str(driver.find_element(By.CSS_SELECTOR, css).text)
    except (StaleElementReferenceException, NoSuchElementException):
        return ""


def click(driver: WebDriver, css: str) -> None:
    """Clicks the element, finding it again if the page redrew it meanwhile."""
    for _ in range(20):
        try:
            driver.find_element(By.CSS_SELECTOR, css).click()
            return
        except StaleElementReferenceException:
            continue
    raise AssertionError(f"{css} kept being redrawn")


def live_text(driver: WebDriver) -> str:
    return text_of(driver, "#live")


def test_a_registered_instance_appears_turns_unhealthy_and_tokens_can_be_revoked(
    srv: Server, driver: WebDriver, shots: Path
) -> None:
    sign_in(driver, srv, srv.admin_token)
    assert driver.find_element(By.ID, "who").text == "admin token"
    backend = Backend().start()
    try:
        # Registered after the page loaded: it appears without a reload.
        check = {"type": "http", "path": "/health", "intervalSeconds": 1, "timeoutSeconds": 1, "unhealthyThreshold": 1}
        inst = srv.register({"url": f"http://127.0.0.1:{backend.port}", "slug": "web-shop", "zone": "z1",
                             "tags": ["prod", "eu"], "healthCheck": check}).json["instance"]  # fmt: skip
        srv.register({"url": "http://web-shop-2:80", "slug": "web-shop", "status": "Starting", "healthCheck": NO_CHECK})
        srv.register({"url": "http://billing-1:80", "slug": "billing", "status": "Healthy", "healthCheck": NO_CHECK})
        wait_for(driver, lambda d: "web-shop" in live_text(d) and "billing" in live_text(d), "the new services")
        driver.save_screenshot(str(shots / "services.png"))
        click(driver, "a[href='#/service/web-shop']")
        row = f"tr[data-id='{inst['id']}']"
        wait_for(driver, lambda d: "Healthy" in text_of(d, row), "the instance Healthy")
        driver.save_screenshot(str(shots / "service.png"))
        backend.stop()  # its backend goes away: Unhealthy, on the open page
        wait_for(driver, lambda d: "Unhealthy" in text_of(d, row), "the instance Unhealthy")
        # The reason is the failing probe's: refused, or reset when the stop cut a probe's
        # connection mid-way (seen once in CI).
        reason = text_of(driver, row)
        assert "connect refused" in reason or "Connection reset by peer" in reason, reason
    finally:
        backend.stop()

    driver.get(f"{srv.url}/ui#/nodes")
    wait_for(driver, lambda d: srv.url in live_text(d) and "Healthy" in live_text(d), "this node")
    driver.save_screenshot(str(shots / "nodes.png"))

    srv.call("PUT", "/registry-svc/definition",
             {"definition": {"id": "web-shop", "image": {"name": "nginx:1.27", "internalPorts": [80]},
                             "ports": [{"internal": 80, "host": 8080}]}})  # fmt: skip
    driver.get(f"{srv.url}/ui#/definitions")
    wait_for(driver, lambda d: "nginx:1.27" in live_text(d), "the definition")
    driver.save_screenshot(str(shots / "definitions.png"))
    click(driver, "a[href='#/definition/web-shop']")
    wait_for(driver, lambda d: "name: nginx:1.27" in live_text(d), "the YAML view")

    victim = srv.call("POST", "/registry-svc/tokens", {"role": "proxy", "description": "to revoke"}).json["info"]["id"]
    driver.get(f"{srv.url}/ui#/tokens")
    button = f"button[data-action='revoke'][data-id='{victim}']"
    wait_for(driver, lambda d: d.find_elements(By.CSS_SELECTOR, button), "the token to revoke")
    driver.save_screenshot(str(shots / "tokens.png"))
    click(driver, button)
    driver.switch_to.alert.accept()
    wait_for(driver, lambda d: not d.find_elements(By.CSS_SELECTOR, button), "the revoked token to go")
    ids = {t["id"] for t in srv.call("GET", "/registry-svc/tokens").json["tokens"]}
    assert victim not in ids


def test_tokens_are_created_in_the_page_with_the_secret_shown_once(srv: Server, driver: WebDriver) -> None:
    sign_in(driver, srv, srv.admin_token)
    driver.get(f"{srv.url}/ui#/tokens")
    form = wait_for(driver, lambda d: d.find_element(By.ID, "create-token"), "the create form")
    form.find_element(By.NAME, "slug").send_keys("web-shop")  # type: ignore[attr-defined]
    form.find_element(By.NAME, "description").send_keys("from the dashboard")  # type: ignore[attr-defined]
    form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()  # type: ignore[attr-defined]
    secret = wait_for(driver, lambda d: d.find_element(By.CSS_SELECTOR, "#secret .secret").text, "the secret")
    assert str(secret).startswith("rsv_") and "shown only once" in driver.find_element(By.ID, "secret").text
    created = [
        t for t in srv.call("GET", "/registry-svc/tokens").json["tokens"] if t["description"] == "from the dashboard"
    ]
    assert [(t["role"], t["slug"]) for t in created] == [("service", "web-shop")]


def test_a_service_token_sees_only_its_own_slug(srv: Server, driver: WebDriver, shots: Path) -> None:
    srv.register({"url": "http://mine-1:80", "slug": "mine", "status": "Healthy", "healthCheck": NO_CHECK})
    srv.register({"url": "http://theirs-1:80", "slug": "theirs", "status": "Healthy", "healthCheck": NO_CHECK})
    sign_in(driver, srv, srv.token("service", "mine"))
    wait_for(driver, lambda d: "mine" in live_text(d), "its own service")
    page = driver.find_element(By.TAG_NAME, "body").text
    assert "theirs" not in page and "web-shop" not in page and "billing" not in page
    assert driver.find_element(By.ID, "who").text == "service token"
    nav = {a.text for a in driver.find_elements(By.CSS_SELECTOR, "nav a") if a.is_displayed()}
    assert nav == {"Services", "Definitions"}  # no nodes, no tokens


def test_the_page_works_on_a_phone_and_keeps_the_token_in_the_tab_only(srv: Server, shots: Path) -> None:
    phone = browser(390, 844)
    try:
        sign_in(phone, srv, srv.admin_token)
        assert phone.execute_script("return window.localStorage.length") == 0
        assert phone.execute_script("return window.sessionStorage.getItem('registry-svc-token')") == srv.admin_token
        # Nothing is wider than the screen but the tables, which scroll inside their box.
        assert phone.execute_script("return document.documentElement.scrollWidth <= window.innerWidth + 1")
        phone.save_screenshot(str(shots / "phone-services.png"))
        phone.find_element(By.ID, "logout").click()
        assert phone.execute_script("return window.sessionStorage.getItem('registry-svc-token')") is None
    finally:
        phone.quit()


def test_ui_files_are_served_with_a_strict_content_security_policy(srv: Server) -> None:
    page = srv.call("GET", "/ui", token=None)
    assert page.status == 200 and page.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert b"https://" not in page.body  # no CDN, no external font
    script = srv.call("GET", "/ui/app.js", token=None)
    assert script.status == 200 and b"fetch(" in script.body
    assert srv.call("GET", "/ui/../settings.py", token=None).status == 404
    assert srv.call("GET", "/ui/nope.js", token=None).status == 404
    icon = srv.call("GET", "/favicon.ico", token=None)  # every browser asks for it
    assert icon.status == 200 and icon.headers["content-type"] == "image/svg+xml" and icon.body.startswith(b"<svg")
    routing = srv.call("GET", "/registry-svc/routing").json
    assert routing == {
        "defaultPolicy": "round_robin",
        "slugPolicies": {},
        "proxyTimeoutSeconds": 60.0,
        "slugRoutes": {},
    }


def test_admins_drain_and_deregister_from_the_service_page(srv: Server, driver: WebDriver) -> None:
    inst = srv.register({"url": "http://drain-me:80", "slug": "drainable", "status": "Healthy",
                         "healthCheck": NO_CHECK}).json["instance"]  # fmt: skip
    sign_in(driver, srv, srv.admin_token)
    driver.get(f"{srv.url}/ui#/service/drainable")
    drain = f"button[data-action='drain'][data-id='{inst['id']}']"
    wait_for(driver, lambda d: d.find_elements(By.CSS_SELECTOR, drain), "the drain button")
    click(driver, drain)
    row = f"tr[data-id='{inst['id']}']"
    wait_for(driver, lambda d: "Stopping" in text_of(d, row), "Stopping")
    assert srv.call("GET", f"/registry-svc/instance/{inst['id']}").json["instance"]["status"] == "Stopping"
    click(driver, f"button[data-action='deregister'][data-id='{inst['id']}']")
    driver.switch_to.alert.accept()
    wait_for(driver, lambda d: not d.find_elements(By.CSS_SELECTOR, row), "the instance to go")
    assert srv.call("GET", f"/registry-svc/instance/{inst['id']}").status == 404


def test_a_proxied_page_cannot_read_the_dashboard_s_token(srv: Server, driver: WebDriver) -> None:
    """A page served under `/<slug>/...` shares the dashboard's origin on the API port: it
    is sandboxed there (an opaque origin), so its script cannot read the signed-in token."""
    import http.server
    import threading

    page = (
        b"<!doctype html><title>loading</title><script>let r; try { r = sessionStorage.getItem('registry-svc-token')"
        b" || 'none'; } catch (e) { r = 'blocked'; } document.title = 'read:' + r;</script>"
    )

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(page)))
            self.end_headers()
            self.wfile.write(page)

        def log_message(self, *args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}"
        srv.register({"url": url, "slug": "nosy", "status": "Healthy", "healthCheck": NO_CHECK})
        sign_in(driver, srv, srv.admin_token)
        driver.get(f"{srv.url}/nosy/page")
        wait_for(driver, lambda d: d.title.startswith("read:"), "the proxied page's script")
        assert driver.title == "read:blocked", driver.title
        # The dashboard itself keeps its token.
        driver.get(f"{srv.url}/ui")
        assert driver.execute_script("return window.sessionStorage.getItem('registry-svc-token')") == srv.admin_token
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_a_slug_named_like_an_object_property_shows_its_policy(srv: Server, driver: WebDriver) -> None:
    """The routing column looked slugs up on a plain object: `constructor` showed the
    source of Object's constructor function."""
    srv.register({"url": "http://ctor-1:80", "slug": "constructor", "status": "Healthy", "healthCheck": NO_CHECK})
    sign_in(driver, srv, srv.admin_token)
    row = "tr[data-slug='constructor']"
    wait_for(driver, lambda d: text_of(d, row), "the constructor row")
    assert "round_robin (default)" in text_of(driver, row), text_of(driver, row)
    assert "function" not in text_of(driver, row) and "native code" not in text_of(driver, row)


def test_a_model_server_s_load_and_its_age_are_shown(srv: Server, driver: WebDriver) -> None:
    reply = srv.register({"url": "http://127.0.0.1:19101", "slug": "dash-llm", "status": "Healthy",
                          "healthCheck": NO_CHECK, "load": {"type": "push", "intervalMs": 60000}})  # fmt: skip
    instance = reply.json["instance"]["id"]
    pushed = srv.call(
        "PUT", f"/registry-svc/instance/{instance}/load", {"queued": 7, "running": 3, "kvCacheUsage": 0.42}
    )
    assert pushed.status == 204, pushed.body
    sign_in(driver, srv, srv.admin_token)
    driver.get(f"{srv.url}/ui#/service/dash-llm")
    cell = f'tr[data-id="{instance}"] td.load'
    wait_for(driver, lambda d: "7 queued · 3 running · KV 42%" in text_of(d, cell), "the load reading")
    assert " old" in text_of(driver, cell)


def test_each_node_shows_its_gpus_free_memory(tmp_path: Path, driver: WebDriver) -> None:
    from test_health import FAKE_NVML

    path = os.pathsep.join([FAKE_NVML, os.environ.get("PYTHONPATH", "")])
    gpu_srv = Server(tmp_path / "data", env={"PYTHONPATH": path}).start()
    try:
        sign_in(driver, gpu_srv, gpu_srv.admin_token)
        driver.get(f"{gpu_srv.url}/ui#/nodes")
        # The fake H100: 81,559 MiB, 2,592 used and 615 reserved by the driver.
        wait_for(driver, lambda d: "78352 MiB free of 81559" in live_text(d), "the GPU's free memory")
    finally:
        gpu_srv.kill9()
