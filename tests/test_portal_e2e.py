"""The portal in a browser on the shared end-to-end platform: each role's main flow, as a person does it.

Chromium (Debian's, ``/usr/bin/chromium``) is driven by Playwright; each test signs its role in
through the sign-in form in a browser context of its own (its own cookies) and waits for what a
person would see (Playwright's ``expect``), never for a fixed time. The tests run in order and
build on each other: the configurer creates the other users, a device type, a location and a
device; the AI developer uploads a model; the app developer an app; the end user schedules it.
Each main page is screenshotted into ``test-artifacts/portal/`` (``AIOT_TEST_ARTIFACTS``).

They run on the process runtime only (the portal is the same on both) and after the apps tests,
on the platform those share (``tests/fixtures/platforms.py``): no platform of their own is paid.
"""

from __future__ import annotations

import io
import json
import os
import re
import zipfile
from collections.abc import Iterator
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import missing_component
from tests.platform_driver import Platform, wait_until

pytestmark = [
    pytest.mark.slow,
    pytest.mark.service("kafka"),
    pytest.mark.timeout(900),
    pytest.mark.runtimes("process"),
]

ROOT = Path(__file__).resolve().parents[1]
SAMPLE_DEVICES = ROOT / "configs" / "devices" / "sample.json"
ARTIFACTS = Path(os.environ.get("AIOT_TEST_ARTIFACTS", ROOT / "test-artifacts")) / "portal"
CHROMIUM = os.environ.get("AIOT_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PASSWORD = "portal-password-1"
CONFIGURER = "pcarol"
AI_DEVELOPER = "pada"
APP_DEVELOPER = "pabe"
END_USER = ("peun", "peun@example.com")
README_SHOTS = ("configurer-devices", "end-user-schedule-preview", "ai-developer-model")
LONG = 240_000  # ms: an instance starting, a model deploying


def zipped(folder: Path, rename: tuple[str, str]) -> bytes:
    """``folder`` as a zip, its manifest (``rename[0]``) given the name ``rename[1]``."""
    manifest_name, new_name = rename
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(folder.iterdir()):
            if not path.is_file() or path.suffix == ".pyc":
                continue
            data = path.read_bytes()
            if path.name == manifest_name:
                data = json.dumps(json.loads(data) | {"name": new_name}).encode()
            archive.writestr(path.name, data)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def platform(e2e_platform: Platform) -> Platform:
    """The shared platform with the comfort model, the sample devices and a configurer who has a
    password (what the apps tests leave; run alone, this module adds them)."""
    models = e2e_platform.json("model", "list")
    assert isinstance(models, list)
    if "comfort" not in {model["name"] for model in models}:
        e2e_platform.run("model", "upload", str(ROOT / "examples" / "models" / "comfort"), timeout=600)
    devices = e2e_platform.json("device", "list")
    assert isinstance(devices, list)
    if "home-temp" not in {device["name"] for device in devices}:
        e2e_platform.run("device", "add", str(SAMPLE_DEVICES))
    e2e_platform.run("user", "add", CONFIGURER, "--role", "platform_configurer", "--password", PASSWORD)
    return e2e_platform


@pytest.fixture(scope="module")
def portal_url(platform: Platform) -> str:
    url: str = platform.status()["web_url"]
    return url


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Chromium under Playwright; a missing one fails the test in CI (AIOT_TEST_REQUIRE_SERVICES)."""
    if not Path(CHROMIUM).is_file():
        missing_component("chromium", f"{CHROMIUM} is missing (apt-get install -y chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:
        missing_component("playwright", f"the playwright package is not installed: {exc}")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as driver:
        launched = driver.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def sign_in(browser: Any, portal_url: str) -> Iterator[Any]:
    """Sign a user in through the form in a fresh browser context; its page, on the home page."""
    contexts = []

    def signed_in(username: str, password: str = PASSWORD, viewport: tuple[int, int] = (1280, 860)) -> Any:
        width, height = viewport
        context = browser.new_context(viewport={"width": width, "height": height}, base_url=portal_url)
        context.set_default_timeout(30_000)
        contexts.append(context)
        page = context.new_page()
        page.goto("/")
        page.get_by_label("Username").fill(username)
        page.get_by_label("Password").fill(password)
        page.get_by_role("button", name="Sign in").click()
        expect(page.get_by_role("heading", name=f"Welcome, {username}")).to_be_visible()
        return page

    yield signed_in
    for context in contexts:
        context.close()


def shot(page: Any, name: str) -> None:
    """A screenshot of ``page`` as an artifact; the README's three also to docs/ when
    ``AIOT_UPDATE_DOC_SCREENSHOTS`` is set."""
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    if name in README_SHOTS and os.environ.get("AIOT_UPDATE_DOC_SCREENSHOTS"):
        page.screenshot(path=str(ROOT / "docs" / f"portal-{name}.png"), full_page=False)


def expect(target: Any) -> Any:
    from playwright.sync_api import expect as playwright_expect

    return playwright_expect(target)


def notice(page: Any) -> Any:
    return page.get_by_role("status").first


def test_the_configurer_creates_users_registers_a_type_a_location_and_a_device_and_sees_readings_move(
    sign_in: Any,
) -> None:
    page = sign_in(CONFIGURER)
    nav = page.get_by_role("navigation", name="Main")
    for label in ("Users", "Devices", "Models", "Apps", "Logs", "Mail"):
        expect(nav.get_by_role("link", name=label, exact=True)).to_be_visible()
    shot(page, "configurer-home")

    nav.get_by_role("link", name="Users", exact=True).click()
    for username, role, email in (
        (AI_DEVELOPER, "ai developer", ""),
        (APP_DEVELOPER, "app developer", ""),
        (END_USER[0], "end user", END_USER[1]),
    ):
        page.get_by_label("Username").fill(username)
        page.get_by_label("Password", exact=True).fill(PASSWORD)
        page.get_by_label("Role", exact=True).select_option(label=role)
        page.get_by_label("Email (for mail from apps)").fill(email)
        page.get_by_role("button", name="Create user").click()
        expect(notice(page)).to_contain_text(f"User {username} created")
    expect(page.locator(f'tr[data-user="{END_USER[0]}"]')).to_contain_text(END_USER[1])
    shot(page, "configurer-users")

    page.get_by_role("navigation", name="Main").get_by_role("link", name="Devices").click()
    sample = json.loads(SAMPLE_DEVICES.read_text())
    thermometer = next(kind for kind in sample["device_types"] if kind["name"] == "temperature")
    page.get_by_label("Device type document").fill(json.dumps(thermometer | {"name": "portal-thermo"}))
    page.get_by_role("button", name="Register type").click()
    expect(notice(page)).to_contain_text("Device type portal-thermo registered")

    page.get_by_label("Name", exact=True).nth(1).fill("portal-lab")
    page.get_by_label("Kind (school, bank, home, …)").fill("office")
    page.get_by_label("Time zone (IANA, e.g. Europe/Berlin)").fill("Mars/Olympus")
    page.get_by_role("button", name="Register location").click()
    expect(page.get_by_role("alert")).to_contain_text("unknown time zone 'Mars/Olympus'")
    page.get_by_label("Name", exact=True).nth(1).fill("portal-lab")
    page.get_by_label("Kind (school, bank, home, …)").fill("office")
    page.get_by_label("Time zone (IANA, e.g. Europe/Berlin)").fill("Asia/Tokyo")
    page.get_by_role("button", name="Register location").click()
    expect(notice(page)).to_contain_text("Location portal-lab registered")

    page.get_by_label("Name", exact=True).first.fill("lab-thermo")
    page.get_by_label("Type", exact=True).select_option("portal-thermo")
    page.get_by_label("Location", exact=True).select_option("portal-lab")
    page.get_by_role("button", name="Register device").click()
    expect(notice(page)).to_contain_text("Device lab-thermo registered")

    reading = page.locator('td[data-device="lab-thermo"]')
    expect(reading).to_contain_text("temperature", timeout=60_000)  # the live view, no reload
    first = reading.inner_text()
    expect(reading).not_to_have_text(first, timeout=60_000)
    expect(page.locator("#live-status")).to_contain_text("live, updated")
    shot(page, "configurer-devices")


def test_the_ai_developer_is_told_what_is_wrong_with_a_zip_uploads_a_model_sees_it_deploy_and_tries_it(
    sign_in: Any,
) -> None:
    page = sign_in(AI_DEVELOPER)
    nav = page.get_by_role("navigation", name="Main")
    expect(nav.get_by_role("link", name="Users", exact=True)).to_have_count(0)
    nav.get_by_role("link", name="Models").click()

    broken = {"name": "portal-broken", "version": "1.0.0", "endpoints": "none"}
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("model.json", json.dumps(broken))
    page.get_by_label("Model zip").set_input_files(
        files=[{"name": "broken.zip", "mimeType": "application/zip", "buffer": buffer.getvalue()}]
    )
    page.get_by_role("button", name="Upload and deploy").click()
    alert = page.get_by_role("alert")
    expect(alert).to_contain_text("model.json")
    expect(alert.locator("li").first).to_be_visible()  # each file / field and its reason
    shot(page, "ai-developer-upload-error")

    model = zipped(ROOT / "examples" / "models" / "comfort", ("model.json", "portal-comfort"))
    page.get_by_label("Model zip").set_input_files(
        files=[{"name": "portal-comfort.zip", "mimeType": "application/zip", "buffer": model}]
    )
    page.get_by_role("button", name="Upload and deploy").click()
    expect(page.get_by_role("heading", name="Model portal-comfort")).to_be_visible()
    expect(notice(page)).to_contain_text("uploaded: deploying")
    status = page.locator('[data-version-status="1.0.0"]')
    expect(status).to_have_text("deployed", timeout=LONG)  # the page polls: stages as they happen
    expect(page.locator('[data-version-replicas="1.0.0"]')).to_contain_text(" on ")
    expect(page.locator('[data-version-stages="1.0.0"]')).to_contain_text("deployed")

    page.reload()  # the "try it" form comes with a deployed version
    try_it = page.get_by_role("form", name="Try predict of version 1.0.0")
    try_it.get_by_label("temperature").fill("thirty")
    try_it.get_by_label("humidity").fill("55")
    try_it.get_by_role("button", name="Call predict").click()
    expect(page.get_by_role("alert")).to_contain_text("inputs.temperature")
    try_it = page.get_by_role("form", name="Try predict of version 1.0.0")
    try_it.get_by_label("temperature").fill("30")
    try_it.get_by_role("button", name="Call predict").click()
    expect(page.locator("#try-output")).to_contain_text('"fan_speed"')
    shot(page, "ai-developer-model")


def test_the_app_developer_browses_models_and_uploads_an_app(sign_in: Any) -> None:
    page = sign_in(APP_DEVELOPER)
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Models").click()
    expect(page.get_by_role("link", name="comfort", exact=True)).to_be_visible()
    expect(page.get_by_label("Model zip")).to_have_count(0)  # uploading models is not theirs
    page.get_by_role("link", name="comfort", exact=True).click()
    expect(page.get_by_text('self.app.model_call("comfort", "predict", **inputs)').first).to_be_visible()

    page.get_by_role("navigation", name="Main").get_by_role("link", name="Device types").click()
    expect(page.locator('section[data-type="portal-thermo"]')).to_contain_text("temperature float (°C)")
    expect(page.locator('section[data-type="fan"]')).to_contain_text("set_speed(speed: int)")
    shot(page, "app-developer-device-types")

    page.get_by_role("navigation", name="Main").get_by_role("link", name="Apps").click()
    app = zipped(ROOT / "examples" / "apps" / "smart-home", ("app.json", "portal-home"))
    page.get_by_label("App zip").set_input_files(
        files=[{"name": "portal-home.zip", "mimeType": "application/zip", "buffer": app}]
    )
    page.get_by_role("button", name="Upload app").click()
    expect(notice(page)).to_contain_text("App portal-home 1.0.0 uploaded")
    expect(page.locator('tr[data-app="portal-home"]')).to_contain_text("lake-home")
    page.locator('tr[data-app="portal-home"]').get_by_role("link", name="portal-home").click()
    expect(page.get_by_role("heading", name="App portal-home")).to_be_visible()
    expect(page.locator("table").first).to_contain_text(APP_DEVELOPER)  # the version, uploaded by them
    shot(page, "app-developer-apps")


def preview_weekday_mornings(page: Any) -> None:
    """Fill the schedule form with 08:00-09:00 on weekdays for two weeks and preview it: the next
    runs show in the location's clock (lake-home: New York), no weekend among them."""
    today = date.today()
    page.get_by_label("When").select_option("window")
    page.get_by_label("From date").fill(today.isoformat())
    page.get_by_label("To date").fill((today + timedelta(days=13)).isoformat())
    page.get_by_label("Window opens (HH:MM)").fill("08:00")
    page.get_by_label("Window closes (HH:MM)").fill("09:00")
    page.get_by_label("sat").uncheck()
    page.get_by_label("sun").uncheck()
    page.get_by_role("button", name="Preview next runs").click()
    preview = page.locator("#preview")
    expect(preview).to_contain_text("Next runs in America/New_York")
    expect(preview.locator("li")).to_have_count(5)
    expect(preview.locator("li").first).to_contain_text("08:00 E")  # EST or EDT: the location's clock
    expect(preview).not_to_contain_text("Sat ")


def test_the_end_user_previews_local_times_schedules_the_app_gets_the_mail_and_opens_the_address(
    sign_in: Any,
) -> None:
    page = sign_in(END_USER[0])
    nav = page.get_by_role("navigation", name="Main")
    expect(nav.get_by_role("link", name="Devices")).to_have_count(0)
    page.goto("/users")
    expect(page.get_by_role("heading", name="Not allowed")).to_be_visible()
    nav = page.get_by_role("navigation", name="Main")

    nav.get_by_role("link", name="Apps").click()
    page.locator('tr[data-app="portal-home"]').get_by_role("link", name="lake-home").click()
    expect(page.get_by_label("App", exact=True)).to_have_value("portal-home")
    expect(page.get_by_label("Location (where the app's devices are)")).to_have_value("lake-home")
    preview_weekday_mornings(page)
    shot(page, "end-user-schedule-preview")

    page.get_by_label("When").select_option("now")
    page.get_by_label("Each run lasts (10m, 1h30m)").fill("10m")
    page.get_by_role("button", name="Save schedule").click()
    expect(notice(page)).to_contain_text("of portal-home saved")
    row = page.locator("#instances tr").first
    expect(row).to_contain_text("portal-home", timeout=LONG)  # a new row, from the poll
    expect(row.locator(".status")).to_have_text("running", timeout=LONG)  # polled, no reload
    expect(row.get_by_role("link", name="open the app")).to_be_visible()
    shot(page, "end-user-schedules")

    page.get_by_role("navigation", name="Main").get_by_role("link", name="Mail").click()
    mail = page.locator("article.mail").first
    expect(mail).to_contain_text(f"to {END_USER[1]}")
    with page.context.expect_page() as opened:
        mail.get_by_role("link", name="Open the app").click()
    app_page = opened.value
    expect(app_page).to_have_title(re.compile("Smart Home"), timeout=60_000)
    shot(page, "end-user-mail")
    shot(app_page, "end-user-app")

    page.get_by_role("navigation", name="Main").get_by_role("link", name="Apps").click()
    page.locator('tr[data-app="portal-home"]').get_by_role("link", name="portal-home").click()
    mine = page.locator("tr[data-instance]").first
    expect(mine).to_contain_text("running")
    mine.get_by_role("link", name="logs").click()

    def own_records_shown() -> bool:
        # Its first records reach the logger a few seconds after it starts (its own topic is
        # picked up by pattern); the page shows what was collected when it was made.
        if page.locator("table.logs td.message").count():
            return True
        page.reload()
        return False

    wait_until(own_records_shown, 60, "the instance's own log records on its logs page")
    shot(page, "end-user-app-logs")

    page.get_by_role("navigation", name="Main").get_by_role("link", name="Schedules", exact=True).click()
    page.locator("#instances tr").first.get_by_role("button", name="Stop").click()
    expect(notice(page)).to_contain_text("stopping")
    expect(page.locator("#instances tr").first.locator(".status")).to_contain_text("stop", timeout=60_000)


def test_the_configurer_sees_the_nodes_their_services_and_searches_the_logs(sign_in: Any) -> None:
    page = sign_in(CONFIGURER)
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Nodes").click()
    front_door = page.locator('tr[data-service="web"]')
    expect(front_door).to_contain_text("running")
    node = page.locator("section[data-node]").filter(has=front_door)
    expect(node.locator('[data-field="state"]')).to_have_text("up")
    expect(page.locator("section[data-node]")).to_have_count(2)
    last_heard = node.locator('[data-field="last_seen"]')
    expect(last_heard).not_to_have_text(last_heard.inner_text(), timeout=60_000)  # live
    incidents = page.locator("section[data-incidents]")
    expect(incidents.get_by_role("heading", name="Incidents")).to_be_visible()
    expect(incidents.locator("tbody tr").first).to_be_visible()  # one incident, or "No incidents"
    shot(page, "configurer-nodes")

    page.get_by_role("navigation", name="Main").get_by_role("link", name="Logs").click()
    page.get_by_label("Since (10m, 2h, 1d or a date)").fill("1h")
    page.get_by_role("button", name="Search").click()
    expect(page.locator("table.logs td.message").first).to_be_visible()
    page.get_by_label("Since (10m, 2h, 1d or a date)").fill("yesterday-ish")
    page.get_by_role("button", name="Search").click()
    expect(page.get_by_role("alert")).to_contain_text("invalid query parameter since")
    shot(page, "configurer-logs")


PHONE = (390, 844)  # CSS pixels of a common phone, portrait
UNLABELLED = """() => [...document.querySelectorAll("main input, main select, main textarea")]
    .filter((field) => field.type !== "hidden" && !field.labels.length && !field.getAttribute("aria-label"))
    .map((field) => field.name || field.outerHTML.slice(0, 80))"""


def test_every_main_page_fits_a_phone_and_labels_its_fields(sign_in: Any) -> None:
    """At phone width no page scrolls sideways (wide tables scroll inside their own box), the
    navigation is all there, and every form field has a label a screen reader can say."""
    for username, pages in (
        (CONFIGURER, ("Users", "Devices", "Nodes", "Logs")),
        (AI_DEVELOPER, ("Models",)),
        (APP_DEVELOPER, ("Apps", "Device types")),
        (END_USER[0], ("Apps", "Schedule an app", "Schedules", "Mail", "Password")),
    ):
        page = sign_in(username, viewport=PHONE)
        for name in pages:
            page.get_by_role("navigation", name="Main").get_by_role("link", name=name, exact=True).click()
            expect(page.get_by_role("heading", level=1)).to_be_visible()
            overflow = page.evaluate("() => document.documentElement.scrollWidth - window.innerWidth")
            assert overflow <= 0, f"{username}'s {name} page is {overflow}px wider than a phone"
            assert page.evaluate(UNLABELLED) == [], f"{username}'s {name} page has fields without a label"
            shot(page, f"phone-{username}-{name.lower().replace(' ', '-')}")
