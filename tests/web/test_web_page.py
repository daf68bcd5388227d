"""The "Subscriber numbers" page end to end in a real headless Chromium (Debian's package,
driven by Playwright; no browser is downloaded): the customer's journey in Russian, a second
customer who reaches nothing of the first, an unverified customer, staff, the keyboard, and
every main state in both languages at 1280 and 390 px (fits the screen, axe-core finds no
serious or critical violation, no text in the other language). One browser for the module.

Screenshots go to test-artifacts/screenshots/ at the top of the repository (or to
$ZVONOK_SCREENSHOTS): <language>-<width>-<state>.png and journey-*.png."""

from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path

import axe_playwright_python.async_playwright as axe_playwright
import playwright.async_api as playwright
import pytest
import pytest_asyncio

from web_helpers import PASSWORD, TOKEN, admin_api, helpers
from zvonok_agi.outbound.queue import CampaignQueue
from zvonok_agi.routing import scenario as scenarios

CHROMIUM = "/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else shutil.which("chromium")
# CI installs Chromium and sets this: there a missing browser fails the tests, never skips them.
if CHROMIUM is None and os.environ.get("ZVONOK_REQUIRE_CHROMIUM"):
    raise RuntimeError("ZVONOK_REQUIRE_CHROMIUM is set but Debian's chromium is not installed")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SHOTS = Path(
    os.environ.get("ZVONOK_SCREENSHOTS")
    or Path(__file__).resolve().parents[2] / "test-artifacts" / "screenshots"
)
LOCALES = {"ru": "ru-RU", "en": "en-US"}
ACME, OLDCO, NEWBIE = helpers.ACME, helpers.OLDCO, helpers.NEWBIE
MOSCOW_1, MOSCOW_2, KAZAN = helpers.MOSCOW_1, helpers.MOSCOW_2, helpers.KAZAN
POOL_1, POOL_2 = helpers.POOL_1, helpers.POOL_2
expect = playwright.expect

pytestmark = [
    pytest.mark.skipif(
        CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install -y chromium)"
    ),
    pytest.mark.asyncio(loop_scope="module"),
]

# Text shown in the wrong script (outside data, marked translate="no", and the language
# switch, marked with its own lang), visible or read out (visually hidden text too).
WRONG_SCRIPT = """(lang) => {
  const wrong = lang === "ru" ? /[A-Za-z]/ : /[А-Яа-яЁё]/;
  const data = (node) => node.closest('[translate="no"], [lang]:not(html), script, style');
  const found = [];
  if (wrong.test(document.title)) found.push(document.title);
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  for (let text = walker.nextNode(); text; text = walker.nextNode()) {
    const parent = text.parentElement;
    if (!parent || data(parent) || !parent.checkVisibility()) continue;
    if (wrong.test(text.data)) found.push(text.data.trim());
  }
  for (const node of document.querySelectorAll("[placeholder], [aria-label], [title]")) {
    if (data(node) || !node.checkVisibility()) continue;
    for (const name of ["placeholder", "aria-label", "title"]) {
      const value = node.getAttribute(name);
      if (value && wrong.test(value)) found.push(`${name}=${value}`);
    }
  }
  return found;
}"""
# Controls sticking out of the screen sideways, a page wider than the screen, and a dialog
# taller than it (a long one scrolls inside, so that its buttons stay reachable).
OFF_SCREEN = """() => {
  const width = document.documentElement.clientWidth;
  const found = [];
  for (const dialog of document.querySelectorAll("dialog[open]")) {
    const box = dialog.getBoundingClientRect();
    if (box.top < -1 || box.bottom > window.innerHeight + 1) found.push(`${dialog.id} too tall`);
  }
  if (document.documentElement.scrollWidth > width) {
    found.push(`page ${document.documentElement.scrollWidth} px`);
  }
  for (const node of document.querySelectorAll("button, input, select, textarea, dialog")) {
    if (!node.checkVisibility()) continue;
    const box = node.getBoundingClientRect();
    if (box.width > 1 && (box.left < -1 || box.right > width + 1)) {
      found.push(node.outerHTML.slice(0, 100));
    }
  }
  return found;
}"""


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def browser():
    SHOTS.mkdir(parents=True, exist_ok=True)
    async with playwright.async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        await browser.close()


@pytest_asyncio.fixture(loop_scope="module")
async def site(settings, tmp_path):
    async with admin_api(settings, tmp_path / "numbers.db") as (service, server, api):
        api.service = service
        yield api


@pytest_asyncio.fixture(loop_scope="module")
async def tab(browser, site):
    """Opens pages (each in a context of its own: its own cookies); none may raise an error."""
    opened = []

    async def new(width: int = 1280, language: str = "ru"):
        context = await browser.new_context(
            viewport={"width": width, "height": 860}, locale=LOCALES[language]
        )
        page = await context.new_page()
        page.errors = []
        page.on("pageerror", lambda exc: page.errors.append(str(exc)))
        page.site, page.width, page.language = site, width, language
        opened.append((context, page))
        return page

    yield new
    for context, _ in opened:
        await context.close()
    assert [error for _, page in opened for error in page.errors] == []


async def sign_in(page, login: str, password: str = PASSWORD) -> None:
    await page.goto(page.site.base + "/")
    await page.fill("#login", login)
    await page.fill("#password", password)
    await page.click("#sign-in button[type=submit]")
    await expect(page.locator("#main")).to_be_visible()


def row(page, did: str):
    return page.locator(f"#numbers tr[data-did='{did}']")


async def shot(page, name: str, full_page: bool = False) -> None:
    await page.screenshot(path=SHOTS / f"{name}.png", full_page=full_page)


# the customer's journey


async def test_the_customer_journey_in_russian(tab):
    page = await tab()
    service = page.site.service
    await page.goto(page.site.base + "/")
    await expect(page.locator("#sign-in h2")).to_have_text("Вход в личный кабинет")
    await expect(page).to_have_title("Абонентские номера")
    await sign_in(page, "anna")
    await expect(page.locator("#who-name")).to_have_text("Anna")
    await expect(page.locator("#verified")).to_have_text("идентифицирован")
    await expect(page.locator("#summary")).to_have_text("Зарезервированных номеров пока нет.")
    await expect(page.locator("#staff-account")).to_be_hidden()  # no account switcher
    await expect(page.locator("#numbers-title")).to_have_text("Ваши номера")

    # Add: kind -> region -> number -> Continue, with a Back button on the way
    dialog = page.locator("#add-dialog")
    await page.get_by_role("button", name="Добавить номер").click()
    await expect(dialog.get_by_role("heading", name="Какой номер подключить?")).to_be_focused()
    await dialog.get_by_role(
        "button", name="Подключить стационарный номер (популярные города)"
    ).click()
    await expect(dialog.locator("[data-region=Moscow]")).to_have_text("Москва 2 номера")
    await expect(dialog.locator("[data-region='St Petersburg']")).to_have_text(
        "Санкт-Петербург 0 номеров"
    )
    await expect(dialog.locator("[data-region=Novosibirsk]")).to_have_text(
        "Новосибирская обл. 0 номеров"
    )
    await dialog.get_by_role("button", name="Назад").click()
    await expect(dialog.get_by_role("heading", name="Какой номер подключить?")).to_be_visible()
    await dialog.get_by_role(
        "button", name="Подключить стационарный номер (популярные города)"
    ).click()
    await dialog.locator("[data-region=Moscow]").click()
    await expect(dialog.locator(".offer-title")).to_have_text("Москва: выберите номер")
    await expect(dialog.locator(".offer input[name=did]")).to_have_count(2)
    await dialog.get_by_label("+7 495 111-00-02").check()
    await shot(page, "journey-1-numbers")
    await dialog.get_by_role("button", name="Продолжить").click()
    await expect(dialog.locator(".done-text")).to_have_text("Номер +7 495 111-00-02 теперь ваш.")
    await dialog.get_by_role("button", name="Закрыть").click()
    await expect(page.locator("#add")).to_be_focused()  # back where the window was opened
    await expect(page.locator("#summary")).to_have_text("Зарезервировано: 1 стационарный номер.")
    assert (await service.number(MOSCOW_2)).row.number.owner == ACME

    # Change: bind the inbound campaign, and the rule
    await page.get_by_role("button", name="Изменить +7 495 111-00-02").click()
    await expect(page.locator("#change-campaign")).to_be_focused()
    await page.select_option("#change-campaign", "acme-line")
    await page.locator("#change-dialog").get_by_label("Принудительно НЕТ").check()
    await shot(page, "journey-2-change")
    await page.locator("#change-dialog").get_by_role("button", name="Сохранить").click()
    await expect(page.locator("#message")).to_have_text(
        "Номер +7 495 111-00-02: изменения сохранены."
    )
    await expect(row(page, MOSCOW_2).locator(".rule")).to_have_text("Принудительно НЕТ")
    # the row is drawn anew, and focus is back on its button
    await expect(page.get_by_role("button", name="Изменить +7 495 111-00-02")).to_be_focused()
    await expect(row(page, MOSCOW_2).locator(".campaigns")).to_have_text("Входящие: acme-line")
    number = (await service.number(MOSCOW_2)).row.number
    assert (number.inbound_campaign, number.callback_rule) == ("acme-line", "force_no")
    assert (await service.data.load()).numbers[MOSCOW_2].callback_rule == "force_no"

    # Disable: off the active tab, on the disabled one, its binding kept
    await page.get_by_role("button", name="Изменить +7 495 111-00-02").click()
    await page.get_by_role("button", name="Отключить номер").click()
    await expect(page.locator("#message")).to_have_text("Номер +7 495 111-00-02 отключён.")
    await expect(row(page, MOSCOW_2)).to_have_count(0)
    await expect(page.locator("#numbers-title")).to_be_focused()  # its row is gone
    await expect(page.locator("#tab-disabled")).to_have_text("Отключённые (1)")
    await page.get_by_role("tab", name="Отключённые (1)").click()
    await expect(row(page, MOSCOW_2).locator(".campaigns")).to_have_text("Входящие: acme-line")
    await page.get_by_role("tab", name=re.compile("Активные")).click()
    assert (await service.number(MOSCOW_2)).row.number.status == "disabled"

    # a campaign with a new number: no active number yet, the Add wizard inside the window
    campaign = page.locator("#campaign-dialog")
    await page.get_by_role("button", name="Создать кампанию").click()
    await expect(page.locator("#campaign-name")).to_be_focused()
    await page.fill("#campaign-name", "Весенняя распродажа")
    await expect(page.locator("#caller-id-note")).to_have_text(
        "У вас пока нет резервированного номера — его можно добавить прямо здесь."
    )
    await campaign.get_by_role("button", name="Добавить номер").click()
    await campaign.get_by_role("button", name="Подключить стационарный номер", exact=True).click()
    await campaign.locator("#region-name").fill("москва")
    await campaign.get_by_role("button", name="Найти").click()
    await expect(campaign.locator(".offer-title")).to_have_text("Москва: выберите номер")
    await campaign.get_by_role("button", name="Продолжить").click()
    await expect(campaign.locator(".done-text")).to_have_text("Номер +7 495 111-00-01 теперь ваш.")
    await expect(campaign.locator("#caller-ids").get_by_label("+7 495 111-00-01")).to_be_checked()
    await campaign.get_by_label("Приём входящих").check()
    await shot(page, "journey-3-campaign")
    await campaign.get_by_role("button", name="Сохранить").click()
    await expect(page.locator("#message")).to_have_text("Кампания «Весенняя распродажа» создана.")
    created = page.locator("#campaigns tr", has_text="Весенняя распродажа")
    await expect(created.locator(".caller-id")).to_have_text("+7 495 111-00-01")
    [new] = [c for c in await service.campaigns(ACME) if c.name == "Весенняя распродажа"]
    assert (new.kind, new.caller_id, new.accept_inbound) == ("outbound", MOSCOW_1, True)

    # a region with no numbers: a request, and sales will call
    await page.click("#add")
    await dialog.get_by_role("button", name="Подключить мобильный номер").click()
    await dialog.locator("#region-name").fill("Иркутск")
    await dialog.get_by_role("button", name="Найти").click()
    await expect(dialog.locator(".done-text")).to_have_text(
        "В регионе «Иркутская обл.» сейчас нет свободных мобильных номеров. Мы создали заявку "
        "№ 1: наши специалисты скоро позвонят вам, чтобы уточнить детали."
    )
    await dialog.get_by_role("button", name="Закрыть").click()
    await expect(page.locator("[data-request='1'] h3")).to_have_text(
        "Заявка № 1: мобильный номер, Иркутская обл."
    )

    # none of the numbers suits: write to support from the number list
    await page.click("#add")
    await dialog.get_by_role("button", name="Подключить мобильный номер").click()
    await expect(dialog.locator("[data-region=Russia]")).to_have_text("Россия 1 номер")
    await dialog.locator("[data-region=Russia]").click()
    await dialog.get_by_role("button", name="Связаться с технической поддержкой").click()
    await expect(dialog.locator("#support-comment")).to_have_value(
        "Мне не подошёл ни один из предложенных номеров."
    )
    await expect(dialog.locator(".support-context")).to_have_text(
        "Вы выбирали: мобильный номер, Россия."
    )
    await dialog.get_by_label("Телефон для связи").fill("8 916 555-44-33")
    await dialog.get_by_role("button", name="Отправить").click()
    await expect(dialog.locator(".done-text")).to_have_text(
        "Обращение № 2 отправлено. Специалисты поддержки позвонят вам по номеру +7 916 555-44-33."
    )
    await dialog.get_by_role("button", name="Закрыть").click()
    support = (await service.requests("open", ACME))[-1]
    assert (support.topic, support.contact, support.kind, support.region) == (
        "support",
        "79165554433",
        "mobile",
        "Russia",
    )

    # sales call back and close the request: the customer sees it closed, with the note
    await service.close_request("staff:sam", 1, "Номер в Иркутске будет в пятницу")
    await page.reload()
    request = page.locator("[data-request='1']")
    await expect(request.locator(".status")).to_contain_text("Закрыта")
    await expect(request.locator(".note")).to_have_text(
        "Комментарий специалиста: Номер в Иркутске будет в пятницу"
    )
    await expect(page.locator("[data-request='2'] .status")).to_have_text(
        "Открыта: наши специалисты скоро позвонят вам."
    )
    await shot(page, "journey-4-requests", full_page=True)

    # the audit log names the person
    log = await service.audit_log(MOSCOW_2)
    assert {e["actor"] for e in log if e["action"] in ("reserve", "change_number", "disable")} == {
        "customer:anna"
    }


async def test_a_second_customer_sees_and_changes_nothing_of_the_first(tab):
    service = (page := await tab()).site.service
    await service.reserve("setup", ACME, MOSCOW_1)
    await service.change_number("setup", MOSCOW_1, inbound_campaign="acme-line")
    await sign_in(page, "oleg")
    await expect(page.locator("#numbers tbody tr")).to_have_count(2)  # the service pool
    await expect(row(page, MOSCOW_1)).to_have_count(0)
    await expect(page.locator("#campaigns")).not_to_contain_text("acme")
    await expect(page.get_by_text("acme", exact=False)).to_have_count(0)
    await page.goto(f"{page.site.base}/?account={ACME}")  # the staff's address: still Oleg's
    await expect(page.locator("#numbers tbody tr")).to_have_count(2)
    await expect(row(page, MOSCOW_1)).to_have_count(0)
    await expect(page.get_by_text("acme", exact=False)).to_have_count(0)
    # the page's own session, calling what the page would never call
    answers = await page.evaluate(
        """async ([did, account]) => {
      const me = await (await fetch("/api/me")).json();
      const send = async (method, path, body) => (await fetch(path, {method,
        headers: {"Content-Type": "application/json", "X-CSRF-Token": me.csrf},
        body: body && JSON.stringify(body)})).status;
      return [
        await send("PATCH", `/api/numbers/${did}`, {callback_rule: "force_no"}),
        await send("PATCH", `/api/numbers/${did}?as_account=${account}`, {inbound_campaign: null}),
        await send("POST", `/api/numbers/${did}/disable`),
        await send("DELETE", `/api/accounts/${account}/reservations/${did}`),
        await send("GET", `/api/numbers/${did}`),
        await send("GET", `/api/numbers?account=${account}`),
        await send("PATCH", `/api/campaigns/acme-sale`, {state: "paused"}),
      ];
    }""",
        [MOSCOW_1, ACME],
    )
    assert answers == [403, 403, 403, 403, 404, 403, 403]
    number = (await service.number(MOSCOW_1)).row.number
    assert (number.owner, number.inbound_campaign, number.status, number.callback_rule) == (
        ACME,
        "acme-line",
        "active",
        "as_campaign",
    )
    assert (await service.campaign("acme-sale")).state == "running"


async def test_an_unverified_customer_learns_why_and_how_to_get_verified(tab):
    page = await tab()
    service = page.site.service
    await sign_in(page, "nina")
    await expect(page.locator("#verified")).to_have_text(
        "не идентифицирован: только служебные номера"
    )
    await expect(page.locator("#unverified-note")).to_contain_text("служебных номеров")
    await expect(page.locator("#add")).to_be_enabled()  # explains instead of greying out
    await page.click("#add")
    dialog = page.locator("#add-dialog")
    await expect(dialog.get_by_role("heading", name="Сначала — идентификация")).to_be_focused()
    await expect(dialog).to_contain_text("каждый раз подставляется разный")
    await expect(dialog).to_contain_text("принадлежит только вам")
    await dialog.get_by_role("button", name="Написать в поддержку").click()
    await expect(dialog.locator("#support-comment")).to_have_value(
        "Хочу пройти идентификацию, чтобы зарезервировать свой номер."
    )
    await dialog.get_by_label("Телефон для связи").fill("+7 (903) 000-11-22")
    await dialog.get_by_role("button", name="Отправить").click()
    await expect(dialog.locator(".done-title")).to_have_text("Обращение отправлено")
    [request] = await service.requests("open", NEWBIE)
    assert (request.topic, request.contact, request.kind) == ("support", "79030001122", None)
    await dialog.get_by_role("button", name="Закрыть").click()
    await page.get_by_role("button", name="Изменить newbie-promo").click()
    await expect(page.locator("#caller-id-note")).to_have_text(
        "Пока аккаунт не идентифицирован, кампании звонят только со служебных номеров."
    )
    await expect(page.locator("#caller-ids input")).to_have_count(1)  # the pool only


async def test_a_campaign_edited_on_the_page(tab):
    page = await tab()
    service = page.site.service
    await service.reserve("setup", ACME, KAZAN)
    await service.reserve("setup", ACME, MOSCOW_1)
    await service.update_campaign("setup", "acme-sale", caller_id=KAZAN, name="Весна")
    await sign_in(page, "anna")
    campaign = page.locator("#campaign-dialog")
    edit = page.get_by_role("button", name="Изменить Весна")
    await edit.click()
    await expect(campaign.locator("#campaign-title")).to_have_text("Кампания «Весна»")
    await expect(page.locator("#campaign-name")).to_be_focused()
    await expect(page.locator("#campaign-name")).to_have_value("Весна")
    await expect(campaign.locator("[data-field=kind]")).to_be_hidden()  # kept as created
    await expect(campaign.locator("#caller-ids").get_by_label("+7 843 200-00-01")).to_be_checked()
    await page.fill("#campaign-name", "Лето")
    await campaign.get_by_label("+7 495 111-00-01").check()
    await page.select_option("#campaign-state", "paused")
    await campaign.get_by_role("button", name="Сохранить").click()
    await expect(page.locator("#message")).to_have_text("Кампания «Лето»: изменения сохранены.")
    edited = page.locator("#campaigns tr[data-campaign='acme-sale']")
    await expect(edited.locator(".caller-id")).to_have_text("+7 495 111-00-01")
    await expect(edited.locator(".state")).to_have_text("На паузе")
    saved = await service.campaign("acme-sale")
    assert (saved.name, saved.caller_id, saved.state) == ("Лето", MOSCOW_1, "paused")

    # a refusal is read out in words, and what was typed stays
    await page.get_by_role("button", name="Изменить Лето").click()
    await campaign.get_by_label("+7 843 200-00-01").check()
    await page.fill("#campaign-name", "Осень")
    await service.disable("setup", KAZAN)  # meanwhile, in another window
    await campaign.get_by_role("button", name="Сохранить").click()
    error = page.locator("#campaign-error")
    await expect(error).to_have_attribute("role", "alert")
    await expect(error).to_have_text(
        "Номер отключён. Сначала включите его. код ошибки: number_disabled"
    )
    await expect(page.locator("#campaign-name")).to_have_value("Осень")
    await campaign.get_by_label(re.compile("Служебные номера")).check()
    await campaign.get_by_role("button", name="Сохранить").click()
    await expect(edited.locator(".caller-id")).to_have_text("служебные номера")
    await expect(page.get_by_role("button", name="Изменить Осень")).to_be_focused()
    saved = await service.campaign("acme-sale")
    assert (saved.name, saved.caller_id) == ("Осень", None)


async def test_each_outbound_campaigns_dialing_progress(tab):
    page = await tab()
    data = page.site.service.data
    await page.site.service.update_campaign("setup", "acme-sale", name="Весна", state="paused")
    queue = CampaignQueue(data.redis, data.prefix)
    await queue.enqueue("acme-sale", ["79161234567", "79031234567"], [("12", "not a number")])
    await sign_in(page, "anna")
    cells = page.locator("#dialing tr[data-campaign='acme-sale'] td")
    await expect(cells).to_have_text(["Весна (На паузе)", "3", "2", "0", "0", "1", "—"])
    await expect(page.locator("#dialing tbody tr")).to_have_count(1)  # not the inbound one


async def rested_pool_number(service, placed: int = 40, answered: int = 4) -> float:
    """POOL_1 with `answered` of `placed` calls in the window, resting for an hour."""
    health, now = service.health_store, time.time()
    for n in range(placed):
        await health.count(POOL_1, n < answered, now - 60)
    await health.rest(POOL_1, now + 3600, now)
    return now + 3600


async def test_each_numbers_answer_rate_and_rest_in_both_languages(tab):
    page = await tab()
    await rested_pool_number(page.site.service)
    await sign_in(page, "anna")
    health = row(page, POOL_1).locator("td.health")
    await expect(health).to_contain_text("10 % из 40 звонков")
    await expect(health.locator(".badge")).to_contain_text("отдыхает до")
    await expect(row(page, POOL_2).locator("td.health")).to_have_text("звонков не было")
    await row(page, POOL_1).locator("button.view").click()
    await expect(page.locator("#view-fields")).to_contain_text("Ответы за окно")
    await expect(page.locator("#view-fields")).to_contain_text("10 % из 40 звонков")
    await page.click("#view-dialog [data-close]")
    await page.get_by_role("button", name="English").click()
    await expect(health).to_contain_text("10% of 40 calls")
    await expect(health.locator(".badge")).to_contain_text("resting until")


async def test_a_campaigns_scenario_is_set_changed_and_refused_in_its_window(tab):
    page = await tab()
    service = page.site.service
    await service.update_campaign("setup", "acme-sale", name="Весна")
    await sign_in(page, "anna")
    window = page.locator("#campaign-dialog")
    await page.get_by_role("button", name="Изменить Весна").click()
    await expect(window.get_by_label("Запись", exact=True)).to_have_value("")
    await expect(window.get_by_label("Очередь на АТС")).to_be_hidden()
    await window.get_by_label("Запись", exact=True).fill("promo-may")
    await window.get_by_label("Операторы").select_option("endpoints")
    await window.get_by_label("Телефоны операторов (имена абонентов на АТС)").fill("op-1 op-2")
    await window.get_by_label("Цифра для соединения с оператором").select_option("2")
    await window.get_by_label("Сколько секунд ждать ответа оператора").fill("25")
    await window.get_by_label("Запись, если никто не ответил").fill("sorry-busy")
    await window.get_by_role("button", name="Сохранить").click()
    await expect(window).not_to_have_attribute("open", "")
    campaign = await service.campaign("acme-sale")
    assert scenarios.document(campaign.scenario) == {
        "version": 1,
        "play": "promo-may",
        "operators": {"digit": "2", "endpoints": ["op-1", "op-2"], "ring_timeout": 25},
        "no_answer": {"play": "sorry-busy"},
    }

    # opened again, the window shows it; an endpoint the server refuses is said in words
    await page.get_by_role("button", name="Изменить Весна").click()
    await expect(window.get_by_label("Запись", exact=True)).to_have_value("promo-may")
    await expect(window.get_by_label("Операторы")).to_have_value("endpoints")
    await window.get_by_label("Телефоны операторов (имена абонентов на АТС)").fill("op-1 op/2")
    await window.get_by_role("button", name="Сохранить").click()
    error = page.locator("#campaign-error")
    await expect(error).to_contain_text("Проверьте сценарий")
    await expect(error).to_contain_text("код ошибки: bad_scenario")
    assert (await service.campaign("acme-sale")).scenario == campaign.scenario

    # no operators and no recording: no scenario, the campaign's own context again
    await window.get_by_label("Запись", exact=True).fill("")
    await window.get_by_label("Операторы").select_option("")
    await window.get_by_role("button", name="Сохранить").click()
    await expect(window).not_to_have_attribute("open", "")
    assert (await service.campaign("acme-sale")).scenario is None


async def test_staff_choose_the_account_and_close_requests(tab):
    page = await tab()
    service = page.site.service
    await service.offer("setup", OLDCO, "mobile", "Omsk")
    await page.goto(f"{page.site.base}/?account={OLDCO}#token={TOKEN}")
    await expect(page.locator("#account")).to_have_value(OLDCO)
    assert "#token" not in page.url  # the token leaves the address bar
    await expect(page.locator("#who-name")).to_have_text("Оператор сервиса")
    await expect(page.locator("#numbers-title")).to_have_text("Номера аккаунта")
    await page.get_by_role("button", name="Закрыть заявку №1").click()
    await page.fill("#close-note", "Перезвонили")
    await page.locator("#close-dialog").get_by_role("button", name="Закрыть заявку").click()
    await expect(page.locator("[data-request='1'] .note")).to_have_text(
        "Комментарий специалиста: Перезвонили"
    )
    [closed] = await service.requests("closed")
    assert closed.closed_by == "api"
    await page.select_option("#account", ACME)
    await expect(page.locator("#campaigns")).to_contain_text("acme-sale")
    # a staff member signs in as themselves, and verifies an account once its documents are in
    other = await tab()
    await sign_in(other, "sam")
    await expect(other.locator("#staff-account")).to_be_visible()
    await other.select_option("#account", NEWBIE)
    await expect(other.locator("#verified")).to_have_text(
        "не идентифицирован: только служебные номера"
    )
    await expect(other.locator("#verify-how")).to_be_hidden()  # the customer's way
    await other.get_by_role("button", name="Отметить аккаунт как идентифицированный").click()
    await expect(other.locator("#message")).to_have_text(
        re.compile("^Аккаунт «.+» идентифицирован.$")
    )
    await expect(other.locator("#verified")).to_have_text("идентифицирован")
    await expect(other.locator("#unverified-note")).to_be_hidden()
    assert (await service.account(NEWBIE)).verified
    log = await service.audit_log(NEWBIE)
    assert ("staff:sam", "update_account") in {(e["actor"], e["action"]) for e in log}


async def test_keyboard_dialog_focus_and_errors_read_out(tab):
    page = await tab()
    service = page.site.service
    await service.reserve("setup", ACME, KAZAN)
    await service.update_campaign("setup", "acme-sale", caller_id=KAZAN)
    await page.goto(page.site.base + "/")
    await page.fill("#login", "anna")
    await page.fill("#password", "not the password")
    await page.press("#password", "Enter")
    error = page.locator("#sign-in-error")
    await expect(error).to_have_attribute("role", "alert")
    await expect(error).to_have_text("Неверный логин или пароль. код ошибки: bad_credentials")
    await sign_in(page, "anna")

    # tabs: arrow keys move and choose, Home and End go to the ends
    await page.focus("#tab-active")
    await page.keyboard.press("ArrowRight")
    await expect(page.locator("#tab-disabled")).to_be_focused()
    await expect(page.locator("#tab-disabled")).to_have_attribute("aria-selected", "true")
    await page.keyboard.press("Home")
    await expect(page.locator("#tab-active")).to_have_attribute("aria-selected", "true")
    await page.keyboard.press("ArrowLeft")
    await expect(page.locator("#tab-disabled")).to_be_focused()
    await page.keyboard.press("End")
    await expect(page.locator("#tab-disabled")).to_be_focused()
    await page.keyboard.press("ArrowRight")
    await expect(page.locator("#tab-active")).to_be_focused()

    # a dialog: focus goes in, Escape closes it, focus comes back to the button
    change = page.get_by_role("button", name="Изменить +7 843 200-00-01")
    await change.focus()
    await page.keyboard.press("Enter")
    await expect(page.locator("#change-campaign")).to_be_focused()
    await page.keyboard.press("Escape")
    await expect(page.locator("#change-dialog")).not_to_have_attribute("open", "")
    await expect(change).to_be_focused()

    # a refusal: words first, the code as a detail, in an alert
    await page.get_by_role("button", name="Удалить +7 843 200-00-01").click()
    await page.locator("#delete-dialog").get_by_role("button", name="Удалить").click()
    error = page.locator("#delete-error")
    await expect(error).to_have_attribute("role", "alert")
    await expect(error).to_have_text(
        "С этого номера звонят кампании: acme-sale. Сначала "
        "выберите для них другой номер. код ошибки: number_in_use"
    )


async def test_a_new_password_a_message_to_support_and_signing_out(tab):
    page = await tab()
    service = page.site.service
    await sign_in(page, "oleg")
    opener = page.get_by_role("button", name="Сменить пароль")
    await opener.click()
    dialog = page.locator("#password-dialog")
    await expect(page.locator("#password-current")).to_be_focused()
    await dialog.get_by_label("Текущий пароль").fill("not my password")
    await dialog.get_by_label("Новый пароль").fill("a much better one")
    await dialog.get_by_role("button", name="Сохранить").click()
    await expect(page.locator("#password-error")).to_have_text(
        "Текущий пароль указан неверно. код ошибки: wrong_password"
    )
    await dialog.get_by_label("Текущий пароль").fill(PASSWORD)
    await dialog.get_by_role("button", name="Сохранить").click()
    await expect(page.locator("#message")).to_have_text("Пароль изменён.")
    await expect(opener).to_be_focused()

    # a message to support from the requests list, in the customer's own words
    await page.get_by_role("button", name="Написать в поддержку").click()
    support = page.locator("#support-dialog")
    await expect(page.locator("#support-comment")).to_be_focused()
    await page.fill("#support-comment", "Нужен счёт за ноябрь")
    await support.get_by_label("Телефон для связи").fill("12")
    await support.get_by_role("button", name="Отправить").click()
    await expect(support.locator("[role=alert]")).to_contain_text("код ошибки: bad_number")
    await support.get_by_label("Телефон для связи").fill("+7 916 000-00-07")
    await support.get_by_role("button", name="Отправить").click()
    await expect(support.locator(".done-text")).to_contain_text("+7 916 000-00-07")
    await support.get_by_role("button", name="Закрыть").click()
    [request] = await service.requests("open", OLDCO)
    assert (request.topic, request.comment, request.contact) == (
        "support",
        "Нужен счёт за ноябрь",
        "79160000007",
    )
    await expect(page.locator(f"[data-request='{request.id}'] h3")).to_have_text(
        f"Обращение в поддержку № {request.id}"
    )

    await page.get_by_role("button", name="Выйти").click()
    await expect(page.locator("#sign-in h2")).to_have_text("Вход в личный кабинет")
    await expect(page.locator("#main")).to_be_hidden()
    assert await page.evaluate('async () => (await fetch("/api/me")).status') == 401
    await page.fill("#login", "oleg")
    await page.fill("#password", PASSWORD)
    await page.click("#sign-in button[type=submit]")
    await expect(page.locator("#sign-in-error")).to_contain_text("Неверный логин или пароль.")
    await sign_in(page, "oleg", "a much better one")


async def test_russian_counts_and_the_language_switch(tab):
    page = await tab()
    await sign_in(page, "anna")
    written = await page.evaluate("""async () => {
      const i18n = await import("/static/i18n.js");
      return [1, 2, 4, 5, 11, 12, 21, 22, 25, 101, 1234, 1.5].map(
        (n) => i18n.tp("count.numbers", n));
    }""")
    assert written == [
        "1 номер",
        "2 номера",
        "4 номера",
        "5 номеров",
        "11 номеров",
        "12 номеров",
        "21 номер",
        "22 номера",
        "25 номеров",
        "101 номер",
        "1\u00a0234 номера",
        "1,5 номера",
    ]
    await page.get_by_role("button", name="English").click()
    await expect(page.locator("h1")).to_have_text("Subscriber numbers")
    await expect(page.locator("html")).to_have_attribute("lang", "en")
    await expect(page.locator("#summary")).to_have_text("No reserved numbers yet.")
    await page.reload()  # the choice is kept
    await expect(page.locator("#add")).to_have_text("Add number")
    await page.get_by_role("button", name="Русский").click()
    await expect(page.locator("#add")).to_have_text("Добавить номер")


# every main state, in both languages and at both widths


async def check(page, state: str, axe, full_page: bool = False) -> None:
    """The state fits the screen, axe finds nothing serious, no text is in the other
    language; and its screenshot."""
    assert await page.evaluate(OFF_SCREEN) == [], state
    assert await page.evaluate(WRONG_SCRIPT, page.language) == [], state
    results = await axe.run(page)
    assert results.response["passes"], "axe ran no rule"
    serious = [v for v in results.response["violations"] if v["impact"] in ("serious", "critical")]
    assert serious == [], (state, results.generate_report())
    await shot(page, f"{page.language}-{page.width}-{state}", full_page)


@pytest.mark.parametrize("language, width", [("ru", 1280), ("ru", 390), ("en", 1280), ("en", 390)])
async def test_every_main_state_fits_reads_out_and_speaks_one_language(tab, language, width):
    page = await tab(width, language)
    service = page.site.service
    axe = axe_playwright.Axe()
    await service.reserve("setup", ACME, KAZAN)
    await service.change_number(
        "setup", KAZAN, inbound_campaign="acme-line", callback_rule="force_yes"
    )
    await service.update_campaign("setup", "acme-sale", caller_id=KAZAN, name="Весна")
    await service.offer("setup", ACME, "mobile", "Irkutsk")
    await rested_pool_number(service)
    await page.goto(page.site.base + "/")
    await page.fill("#login", "anna")
    await page.fill("#password", "wrong password")
    await page.click("#sign-in button[type=submit]")
    await expect(page.locator("#sign-in-error")).not_to_be_empty()
    await check(page, "sign-in", axe)
    await sign_in(page, "anna")
    await check(page, "list", axe, full_page=True)

    await page.click("#add")
    await check(page, "add-kind", axe)
    await page.click("[data-choice=landline_popular]")
    await expect(page.locator("[data-region=Moscow]")).to_be_visible()
    await check(page, "add-region", axe)
    await page.click("[data-region=Moscow]")
    await expect(page.locator(".offer input")).to_have_count(2)
    await check(page, "add-number", axe)
    await page.click("[data-step=number] [data-to-support]")
    await check(page, "add-support", axe)
    await page.click("#add-dialog .back")
    await expect(page.locator(".offer input")).to_have_count(2)
    await page.click("#add-dialog [data-close]")

    await page.click(f"#numbers tr[data-did='{KAZAN}'] button.change")
    await check(page, "change", axe)
    await page.click("#change-dialog [data-close]")
    await page.click(f"#numbers tr[data-did='{KAZAN}'] button.view")
    await expect(page.locator("#view-history li").first).to_be_visible()
    await check(page, "view", axe)
    await page.click("#view-dialog [data-close]")
    await page.click(f"#numbers tr[data-did='{KAZAN}'] button.delete")
    await page.click("#delete-form button.danger")
    await expect(page.locator("#delete-error")).not_to_be_empty()
    await check(page, "delete-refused", axe)
    await page.click("#delete-dialog [data-close]")

    await page.click("#campaign-new")
    await page.click("#caller-id-add")
    await page.click("#campaign-dialog [data-choice=landline]")
    await page.fill("#region-name", "Moskow")
    await page.click("#campaign-dialog .other-region button")
    await expect(page.locator(".did-you-mean button")).to_have_text(
        {"ru": "Москва", "en": "Moscow"}[language]
    )
    await check(page, "campaign-with-add", axe)
    await page.click("#campaign-dialog [data-close]")

    await page.click("#tab-disabled")
    await check(page, "disabled-tab", axe)
    await page.click("#support-open")
    await check(page, "support", axe)
    await page.click("#support-dialog [data-close]")
    await page.click("#password-open")
    await check(page, "password", axe)
    await page.click("#password-dialog [data-close]")

    unverified = await tab(width, language)
    await sign_in(unverified, "nina")
    await check(unverified, "unverified", axe, full_page=True)
    await unverified.click("#add")
    await check(unverified, "unverified-add", axe)

    staff = await tab(width, language)
    await sign_in(staff, "sam")
    await staff.select_option("#account", ACME)
    await expect(staff.locator("[data-request] button.close")).to_have_count(1)
    await check(staff, "staff", axe, full_page=True)
    await staff.click("[data-request] button.close")
    await check(staff, "staff-close", axe)
    await staff.click("#close-dialog [data-close]")
    await staff.select_option("#account", NEWBIE)
    await expect(staff.locator("#verify-account")).to_be_visible()
    await check(staff, "staff-unverified", axe)
