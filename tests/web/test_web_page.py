"""The "Subscriber numbers" page end to end in a real headless Chromium (Debian's package,
driven by Playwright; no browser is downloaded). Screenshots are saved under the test's tmp
folder (or $ZVONOK_SCREENSHOTS)."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

from web_helpers import TOKEN, admin_api, helpers

playwright = pytest.importorskip("playwright.async_api", reason="needs the playwright package")

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
ACME, NEWBIE = helpers.ACME, helpers.NEWBIE
MOSCOW_1, MOSCOW_2 = helpers.MOSCOW_1, helpers.MOSCOW_2

pytestmark = pytest.mark.skipif(
    not (os.path.exists(CHROMIUM) or shutil.which("chromium")),
    reason="Debian's chromium is not installed (apt-get install -y chromium)",
)


@pytest.fixture
def shots(tmp_path) -> Path:
    folder = Path(os.environ.get("ZVONOK_SCREENSHOTS") or tmp_path / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture
async def page(settings, store_url):
    async with admin_api(settings, store_url) as (service, server, _client), \
            playwright.async_playwright() as p:
        browser = await p.chromium.launch(
            executable_path=os.path.exists(CHROMIUM) and CHROMIUM or shutil.which("chromium"),
            args=CHROMIUM_ARGS,
        )
        try:
            tab = await browser.new_page(viewport={"width": 1280, "height": 860})
            errors: list[str] = []
            tab.on("pageerror", lambda exc: errors.append(str(exc)))
            tab.service, tab.base = service, server.url
            yield tab
            assert errors == []  # no script error on the way
        finally:
            await browser.close()


def row(page, did: str):
    return page.locator(f"tr[data-did='{did}']")


async def test_the_numbers_page_does_everything_the_seed_lists(page, shots):
    expect = playwright.expect
    service = page.service
    await service.reserve("setup", ACME, helpers.KAZAN)
    await service.update_campaign("setup", "acme-sale", caller_id=helpers.KAZAN)

    await page.goto(f"{page.base}/?account={ACME}#token={TOKEN}")
    await expect(page.locator("#summary")).to_have_text("Reserved numbers: 1 landline")
    await expect(page.locator("#verified")).to_have_text("verified")
    await expect(page.locator("#tab-active .count")).to_have_text("(3)")
    await expect(row(page, helpers.KAZAN).locator(".campaigns")).to_have_text(
        "caller ID of acme-sale")
    await expect(row(page, helpers.KAZAN).locator(".rule")).to_have_text("As set in the campaign")
    pool = row(page, helpers.POOL_1)
    await expect(pool.locator(".rule")).to_have_text("")  # no rule for service numbers
    await expect(pool.locator("button.change")).to_have_count(0)
    assert "#token" not in page.url  # the token leaves the address bar
    await page.screenshot(path=shots / "1-list.png", full_page=True)

    # Add: three choices, the regions with their counts, an empty one files a request
    await page.click("#add")
    await expect(page.locator("[data-choice]")).to_have_count(3)
    await page.screenshot(path=shots / "2-add-menu.png")
    await page.click("[data-choice=landline_popular]")
    await expect(page.locator("[data-region=Moscow]")).to_have_text("Moscow (2)")
    await expect(page.locator("[data-region='St Petersburg']")).to_have_text(
        "St Petersburg (0)")
    await page.screenshot(path=shots / "3-regions.png")
    await page.click("[data-region='St Petersburg']")
    await expect(page.locator("#add-result")).to_contain_text("sales team will call you back")
    await page.screenshot(path=shots / "4-request.png")
    [request] = await service.requests()
    assert (request.account, request.region) == (ACME, "St Petersburg")

    # ... a region with numbers: choose one, Continue
    await page.click("#add-dialog [data-close]")
    await page.click("#add")
    await page.click("[data-choice=landline_popular]")
    await page.click("[data-region=Moscow]")
    await expect(page.locator("#offer input[name=did]")).to_have_count(2)
    await page.check(f"#offer input[value='{MOSCOW_2}']")
    await page.screenshot(path=shots / "5-numbers.png")
    await page.click("#continue")
    await expect(page.locator("#add-result")).to_have_text("+7 495 111-00-02 is yours.")
    await page.click("#add-dialog [data-close]")
    await expect(page.locator("#summary")).to_have_text("Reserved numbers: 2 landline")
    assert (await service.number(MOSCOW_2)).row.number.owner == ACME

    # search by any part of the number
    await page.fill("#search", "111-00-02")
    await expect(page.locator("#numbers tbody tr")).to_have_count(1)
    await expect(row(page, MOSCOW_2)).to_be_visible()
    await page.fill("#search", "")
    await expect(page.locator("#numbers tbody tr")).to_have_count(4)

    # Change: the inbound campaign and the callback rule
    await row(page, MOSCOW_2).locator("button.change").click()
    await page.select_option("#change-campaign", "acme-line")
    await page.check("#change-form input[value=force_no]")
    await page.screenshot(path=shots / "6-change.png")
    await page.click("#change-form button[type=submit]")
    await expect(row(page, MOSCOW_2).locator(".rule")).to_have_text("Forced NO")
    await expect(row(page, MOSCOW_2).locator(".campaigns")).to_have_text("inbound: acme-line")
    number = (await service.number(MOSCOW_2)).row.number
    assert (number.inbound_campaign, number.callback_rule) == ("acme-line", "force_no")
    assert (await service.data.load()).numbers[MOSCOW_2].callback_rule == "force_no"

    # View: the details and the history
    await row(page, MOSCOW_2).locator("button.view").click()
    await expect(page.locator("#view-fields")).to_contain_text("Rule on a callback")
    await expect(page.locator("#view-history li").first).to_contain_text("change_number")
    await page.screenshot(path=shots / "7-view.png")
    await page.click("#view-dialog [data-close]")

    # Disable: off the active tab, on the disabled one, binding kept; enable again
    await row(page, MOSCOW_2).locator("button.change").click()
    await page.click("#toggle-status")
    await expect(row(page, MOSCOW_2)).to_have_count(0)
    await page.click("#tab-disabled")
    await expect(row(page, MOSCOW_2).locator(".campaigns")).to_have_text("inbound: acme-line")
    await page.screenshot(path=shots / "8-disabled-tab.png", full_page=True)
    await row(page, MOSCOW_2).locator("button.change").click()
    await page.click("#toggle-status")
    await page.click("#tab-active")
    await expect(row(page, MOSCOW_2)).to_be_visible()

    # Delete, with confirmation; a refusal is shown, not swallowed
    await row(page, helpers.KAZAN).locator("button.delete").click()
    await page.click("#delete-form button[type=submit]")
    await expect(page.locator("#delete-error")).to_contain_text("number_in_use")
    await page.click("#delete-dialog [data-close]")
    await row(page, MOSCOW_2).locator("button.delete").click()
    await expect(page.locator("#delete-dialog")).to_contain_text("Delete +7 495 111-00-02?")
    await page.screenshot(path=shots / "9-delete.png")
    await page.click("#delete-form button[type=submit]")
    await expect(row(page, MOSCOW_2)).to_have_count(0)
    await expect(page.locator("#summary")).to_have_text("Reserved numbers: 1 landline")
    assert (await service.number(MOSCOW_2)).row.number.owner is None


async def test_change_sends_only_what_changed_so_a_disabled_numbers_rule_can_change(page):
    expect = playwright.expect
    service = page.service
    await service.reserve("setup", ACME, MOSCOW_1)
    await service.bind("setup", MOSCOW_1, "acme-line")
    await service.disable("setup", MOSCOW_1)
    sent: list = []
    page.on("request", lambda r: sent.append(r.post_data_json) if r.method == "PATCH" else None)
    await page.goto(f"{page.base}/?account={ACME}#token={TOKEN}")
    await page.click("#tab-disabled")
    await row(page, MOSCOW_1).locator("button.change").click()
    await page.check("#change-form input[value=force_no]")
    await page.click("#change-form button[type=submit]")
    await expect(row(page, MOSCOW_1).locator(".rule")).to_have_text("Forced NO")
    assert sent == [{"callback_rule": "force_no"}]
    number = (await service.number(MOSCOW_1)).row.number
    assert (number.callback_rule, number.inbound_campaign) == ("force_no", "acme-line")
    await row(page, MOSCOW_1).locator("button.change").click()  # nothing changed: no call
    await page.click("#change-form button[type=submit]")
    await expect(page.locator("#message")).to_have_text("+7 495 111-00-01: nothing to save.")
    assert len(sent) == 1


async def test_a_region_typed_in_russian_or_misspelt_finds_its_numbers(page, shots):
    expect = playwright.expect
    await page.goto(f"{page.base}/?account={ACME}#token={TOKEN}")
    await page.click("#add")
    await page.click("[data-choice=landline]")
    await page.fill("#region-name", "москва")
    await page.click("#other-region button")
    await expect(page.locator("#offer-text")).to_have_text("Moscow: choose a number")
    await expect(page.locator("#offer input[name=did]")).to_have_count(2)
    await page.click("#add-dialog [data-close]")
    await page.click("#add")
    await page.click("[data-choice=landline]")
    await page.fill("#region-name", "Moskow")
    await page.click("#other-region button")
    await expect(page.locator("#add-error")).to_contain_text("did you mean Moscow?")
    await page.screenshot(path=shots / "region-did-you-mean.png")
    await page.click("#region-choices [data-region=Moscow]")
    await expect(page.locator("#offer input[name=did]")).to_have_count(2)
    assert await page.service.requests() == []


async def test_an_unverified_account_sees_the_service_pool_and_cannot_add(page, shots):
    expect = playwright.expect
    await page.goto(f"{page.base}/?account={NEWBIE}#token={TOKEN}")
    await expect(page.locator("#verified")).to_have_text(re.compile("not verified"))
    await expect(page.locator("#add")).to_be_disabled()
    await expect(row(page, helpers.POOL_1).locator(".campaigns")).to_have_text(
        "caller ID of newbie-promo")
    await page.screenshot(path=shots / "unverified.png", full_page=True)


async def test_without_the_token_the_page_asks_for_it(page):
    expect = playwright.expect
    await page.goto(page.base + "/")
    await expect(page.locator("#login")).to_be_visible()
    await expect(page.locator("#main")).to_be_hidden()
    await page.fill("#token", "wrong")
    await page.click("#login button")
    await expect(page.locator("#main")).to_be_hidden()
    await page.fill("#token", TOKEN)
    await page.click("#login button")
    await expect(page.locator("#summary")).to_have_text("Reserved numbers: none")
