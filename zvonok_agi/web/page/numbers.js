// The "Subscriber numbers" page: plain DOM over the admin API. A customer signs in and sees
// their own account; the service's staff (signed in, or with the operator's token in the
// address, #token=...) choose the account to act for.
"use strict";

import * as i18n from "./i18n.js";

const {t, tp} = i18n;
const $ = (selector, root = document) => root.querySelector(selector);
const $$ = (selector, root = document) => [...root.querySelectorAll(selector)];
const TOKEN_KEY = "zvonok-token";
const state = {
  token: "", me: null, account: null, accounts: [], status: "active", search: "",
  view: null, reserved: [], campaigns: [], requests: [], current: null, campaign: null,
};

// --- the API ---------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, code, {message, choices, choice_names: choiceNames} = {}) {
    super(message || code);
    this.status = status;
    this.code = code;
    this.choices = choices || [];
    this.choiceNames = choiceNames || [];
  }
}

async function api(method, path, {body, params} = {}) {
  const url = new URL(path, location.origin);
  for (const [key, value] of Object.entries(params || {})) {
    if (value !== undefined && value !== null && value !== "") url.searchParams.set(key, value);
  }
  const headers = {};
  if (state.token) headers.Authorization = `Bearer ${state.token}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (method !== "GET" && state.me && state.me.csrf) headers["X-CSRF-Token"] = state.me.csrf;
  let response;
  try {
    response = await fetch(url, {method, headers, credentials: "same-origin",
                                 body: body === undefined ? undefined : JSON.stringify(body)});
  } catch {
    throw new ApiError(0, "network");
  }
  const answer = await response.json().catch(() => null);
  if (!response.ok) {
    const error = (answer && answer.error) || {code: `http_${response.status}`};
    if (response.status === 401 && path !== "/api/session" && state.me) {
      signedOut("signin.expired");
    }
    throw new ApiError(response.status, error.code, error);
  }
  return answer;
}

const accountPath = (tail) => `/api/accounts/${encodeURIComponent(state.account.id)}/${tail}`;

// --- building blocks -------------------------------------------------------------------------

// An element; strings become text (never HTML), attributes false/null/undefined are left out.
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (value !== false && value !== null && value !== undefined) node.setAttribute(key, value);
  }
  node.append(...children.filter((child) => child !== null && child !== undefined));
  return node;
}

// Data people gave (names, ids) or took from the numbering plan: shown as it is.
const data = (text) => el("span", {translate: "no"}, String(text));

function show(node, visible) { node.hidden = !visible; }

// A button whose accessible name says what it acts on: "Change +7 495 123-45-67".
// A row's button, named with what it acts on; its key finds it again once the row is drawn
// anew (focus goes back to it).
function actionButton(label, subject, className, onclick, key) {
  return el("button", {type: "button", class: className, onclick, "data-key": `${className} ${key}`},
    label, el("span", {class: "visually-hidden"}, " ", data(subject)));
}

const written = (n) => n.written;
const phone = (n) => el("span", {class: "phone"}, n.written);  // kept on one line
const numberType = (n) =>
  `${t(`kind.${n.kind}`)}, ${t(n.reserved ? "pool.reserved" : "pool.service")}`;
const regionName = (names) => names[i18n.lang] || names.en;
const campaignName = (id) => {
  const found = state.campaigns.find((c) => c.id === id);
  return found && found.name ? found.name : id;
};

function say(text) {
  $("#page-error").replaceChildren();
  $("#message").replaceChildren(text);
}

// A refusal in words, with its code as a detail only.
function errorWords(error, context) {
  if (context && context[error.code]) return context[error.code];
  const key = `error.${error.code}`;
  return i18n.has(key) ? t(key) : t("error.unknown");
}

function fail(where, error, context) {
  if (!(error instanceof ApiError)) throw error;
  where.replaceChildren(el("span", {}, errorWords(error, context)), " ",
    el("small", {class: "code"}, t("error.code", {code: data(error.code)})));
}

function clearError(where) { where.replaceChildren(); }

// --- dialogs: focus goes in, and back to what opened them ----------------------------------

function openDialog(dialog, focus) {
  dialog.opener = document.activeElement;
  dialog.showModal();
  const target = focus || $("h2", dialog);
  if (!focus) target.tabIndex = -1;
  target.focus();
}

function closeDialog(dialog) {
  if (dialog.open) dialog.close();
}

function restoreFocus(event) {
  (current(event.target.opener) || $("#numbers-title")).focus();
}

// A control, or the one drawn in its place since (a row's button after a refresh).
function current(node) {
  if (!node || node.isConnected) return node;
  return node.dataset && node.dataset.key
    ? $(`[data-key="${CSS.escape(node.dataset.key)}"]`) : null;
}

// --- starting, signing in and out -----------------------------------------------------------

async function start() {
  await i18n.load(i18n.preferred(), false);
  i18n.translate(document);
  wire();
  renderLanguageSwitch();
  const fromHash = new URLSearchParams(location.hash.slice(1)).get("token");
  if (fromHash) {
    sessionStorage.setItem(TOKEN_KEY, fromHash);
    history.replaceState(null, "", location.pathname + location.search);
  }
  state.token = sessionStorage.getItem(TOKEN_KEY) || "";
  try {
    state.me = await api("GET", "/api/me");
  } catch (error) {
    if (error.status === 401) {
      state.token = "";
      sessionStorage.removeItem(TOKEN_KEY);
      return showSignIn();
    }
    throw error;
  }
  await enter();
}

// The sign-in form, saying why when there is a reason (the key of the words).
function showSignIn(why) {
  state.me = null;
  show($("#main"), false);
  show($("#who"), false);
  show($("#sign-in-view"), true);
  $("#sign-in-note").textContent = why ? t(why) : "";
  $("#login").focus();
}

function signedOut(why) {
  for (const dialog of $$("dialog")) closeDialog(dialog);
  showSignIn(why);
}

async function signIn(event) {
  event.preventDefault();
  clearError($("#sign-in-error"));
  try {
    state.me = await api("POST", "/api/session",
                         {body: {login: $("#login").value, password: $("#password").value}});
  } catch (error) {
    const context = {too_many_attempts: t("signin.wait")};
    return fail($("#sign-in-error"), error, context);
  }
  $("#password").value = "";
  await enter();
}

async function signOut() {
  try {
    await api("DELETE", "/api/session");
  } finally {
    state.token = "";
    sessionStorage.removeItem(TOKEN_KEY);
    signedOut("signin.signed_out");
  }
}

// After signing in: a customer's own account; staff choose one (?account= in the address).
async function enter() {
  show($("#sign-in-view"), false);
  show($("#who"), true);
  const staff = state.me.role === "staff";
  show($("#staff-account"), staff);
  show($("#password-open"), Boolean(state.me.login));
  $("#who-name").textContent = state.me.name || state.me.login || t("header.operator");
  if (staff) {
    const {accounts} = await api("GET", "/api/accounts");
    state.accounts = accounts;
    $("#account").replaceChildren(...accounts.map((a) =>
      el("option", {value: a.id, translate: "no"}, a.name ? `${a.name} (${a.id})` : a.id)));
    const wanted = new URLSearchParams(location.search).get("account");
    if (wanted && accounts.some((a) => a.id === wanted)) $("#account").value = wanted;
    state.account = accounts.find((a) => a.id === $("#account").value) || null;
  } else {
    state.account = state.me.account;
  }
  show($("#main"), true);
  renderAccount();
  $("#numbers-title").focus();  // before the list comes: a key pressed meanwhile stays put
  await refreshed();
}

async function chooseAccount() {
  state.account = state.accounts.find((a) => a.id === $("#account").value);
  say("");
  renderAccount();
  await refresh();
}

function renderAccount() {
  const verified = Boolean(state.account && state.account.verified);
  const badge = $("#verified");
  badge.textContent = t(verified ? "header.verified" : "header.unverified");
  badge.className = verified ? "badge ok" : "badge warn";
  show($("#unverified-note"), !verified);
  const staff = state.me.role === "staff";
  show($("#verify-how"), !staff);
  show($("#verify-account"), staff);
  const title = $("#numbers-title");
  title.dataset.i18n = staff ? "numbers.title_staff" : "numbers.title";
  title.textContent = t(title.dataset.i18n);
}

// Staff mark the account verified once its documents are checked (taking it back stays with
// the CLI and the API: its campaigns would dial from the service pool at once).
async function verifyAccount() {
  try {
    const account = await api("PATCH", `/api/accounts/${encodeURIComponent(state.account.id)}`,
                              {body: {verified: true}});
    state.accounts = state.accounts.map((a) => (a.id === account.id ? account : a));
    state.account = account;
    renderAccount();
    $("#numbers-title").focus();
    say(t("staff.verified", {name: data(account.name || account.id)}));
    await refreshed();
  } catch (error) { fail($("#page-error"), error); }
}

// Both tabs unsearched (the account's reserved numbers, for campaigns), the tab shown as
// searched, the campaigns and the requests.
let refreshes = 0;  // a refresh overtaken by a later one shows nothing

async function refresh() {
  if (!state.account) return;
  const mine = ++refreshes;
  const account = state.account.id;
  const numbers = (status, search) =>
    api("GET", "/api/numbers", {params: {account, status, search}});
  const [active, disabled, campaigns, requests, searched] = await Promise.all([
    numbers("active"), numbers("disabled"),
    api("GET", "/api/campaigns", {params: {account}}),
    api("GET", "/api/requests", {params: {account, status: "all"}}),
    state.search ? numbers(state.status, state.search) : null,
  ]);
  if (mine !== refreshes) return;
  const focused = document.activeElement;
  state.view = searched || {active, disabled}[state.status];
  state.reserved = [...active.numbers, ...disabled.numbers].filter((n) => n.reserved);
  state.campaigns = campaigns.campaigns;
  state.requests = requests.requests;
  renderNumbers();
  renderCampaigns();
  renderRequests();
  // focus on a row drawn anew goes to the same button, or (the row gone) to the list's title
  if (focused && !focused.isConnected) (current(focused) || $("#numbers-title")).focus();
  await renderDialing();
}

async function refreshed() {
  try {
    await refresh();
  } catch (error) {
    fail($("#page-error"), error);
  }
}

// --- the language switch -----------------------------------------------------------------

function renderLanguageSwitch() {
  const other = i18n.lang === "ru" ? "en" : "ru";
  const button = $("#language");
  button.textContent = t("language.switch");
  button.lang = other;
  button.dataset.language = other;
}

async function switchLanguage() {
  await i18n.load($("#language").dataset.language, true);
  i18n.translate(document);
  renderLanguageSwitch();
  if (state.me) {
    $("#who-name").textContent = state.me.name || state.me.login || t("header.operator");
    renderAccount();
    if (state.view) {
      renderNumbers();
      renderCampaigns();
      renderRequests();
      renderDialing();
    }
  } else if ($("#sign-in-note").textContent) {
    $("#sign-in-note").textContent = "";
  }
  wizard.render();
}

// --- the numbers ---------------------------------------------------------------------------

function renderNumbers() {
  const view = state.view;
  const counts = Object.entries(view.reserved).map(([kind, byStatus]) =>
    tp(`count.${kind}`, Object.values(byStatus).reduce((a, b) => a + b, 0)));
  $("#summary").textContent = counts.length
    ? t("summary.reserved", {list: i18n.list(counts)}) : t("summary.none");
  for (const status of ["active", "disabled"]) {
    $(`#tab-${status} .count`).textContent = `(${i18n.number(view.tabs[status])})`;
  }
  renderTabs();
  const rows = view.numbers.map(numberRow);
  $("#numbers tbody").replaceChildren(...rows);
  $("#found").textContent = state.search ? tp("numbers.found", rows.length) : "";
  show($("#numbers"), rows.length > 0);
  show($("#empty"), rows.length === 0);
}

// A cell; on a phone it shows its column's name beside its value (data-label).
function cell(label, className, ...children) {
  return el("td", {role: "cell", "data-label": label, class: className},
            el("div", {class: "value"}, ...children));
}

function numberRow(n) {
  const uses = [];
  if (n.dialing.length) {
    uses.push(el("span", {class: "use"}, t("numbers.outbound"), " ",
                  data(n.dialing.map(campaignName).join(", "))));
  }
  if (n.inbound_campaign) {
    uses.push(el("span", {class: "use"}, t("numbers.inbound"), " ",
                  data(campaignName(n.inbound_campaign))));
  }
  return el("tr", {role: "row", "data-did": n.did, class: n.status},
    cell(t("numbers.col_number"), "did", el("span", {class: "phone"}, written(n)),
         n.status === "disabled" ? el("span", {class: "badge"}, t("status.disabled")) : null),
    cell(t("numbers.col_type"), "type", numberType(n)),
    cell(t("numbers.col_region"), "region", data(regionName(n.region_names))),
    cell(t("numbers.col_campaigns"), "campaigns",
         ...(uses.length ? uses : [t("numbers.no_campaigns")])),
    cell(t("numbers.col_health"), "health", ...health(n.health)),
    cell(t("numbers.col_rule"), "rule", n.reserved ? t(`rule.${n.callback_rule}`) : "—"),
    cell(t("numbers.col_actions"), "actions",
         actionButton(t("numbers.view"), written(n), "view", () => openView(n.did), n.did),
         n.reserved ? actionButton(t("numbers.change"), written(n), "change",
                                   () => openChange(n), n.did) : null,
         n.reserved ? actionButton(t("numbers.delete"), written(n), "delete",
                                   () => openDelete(n), n.did) : null));
}

// Answered of placed over the health window, and a resting pool number's badge (the dialers
// rest a number whose answer rate falls well below the pool's: docs/routing.md).
function health(h) {
  if (!h) return [t("health.unknown")];
  const rate = h.placed ? tp("health.rate", h.placed, {rate: i18n.percent(h.rate)})
                        : t("health.no_calls");
  const rested = h.rested_until && el("span", {class: "badge warn"},
                                      t("health.rested", {until: i18n.when(h.rested_until)}));
  return rested ? [rate, rested] : [rate];
}

function renderTabs() {
  for (const tab of $$("[role=tab]", $("#tabs"))) {
    const selected = tab.dataset.status === state.status;
    tab.setAttribute("aria-selected", String(selected));
    tab.tabIndex = selected ? 0 : -1;
  }
  $("#numbers-panel").setAttribute("aria-labelledby", `tab-${state.status}`);
}

async function chooseTab(status, focus) {
  state.status = status;
  renderTabs();
  if (focus) $(`#tab-${status}`).focus();
  await refreshed();
}

// Tabs: arrow keys move between them (and choose), Home and End go to the ends.
function tabKeys(event) {
  const tabs = $$("[role=tab]", $("#tabs"));
  const at = tabs.indexOf(document.activeElement);
  const to = {ArrowRight: at + 1, ArrowLeft: at - 1, Home: 0, End: tabs.length - 1}[event.key];
  if (to === undefined || at < 0) return;
  event.preventDefault();
  chooseTab(tabs[(to + tabs.length) % tabs.length].dataset.status, true);
}

// --- the Add wizard: kind -> region -> number -> Continue (or a request, or support) -------

const wizard = {
  root: $("#wizard"),
  step: "kind",
  history: [],
  choice: null,
  regions: null,
  region: null,
  offer: null,
  result: null,
  supportTopic: null,
  onReserved: null,
  dialog: null,

  // Opens the wizard inside `slot` (in a dialog): at `step`, calling onReserved(number).
  mount(slot, step, onReserved) {
    slot.append(this.root);
    show(this.root, true);
    this.onReserved = onReserved || null;
    this.dialog = slot.closest("dialog");
    this.history = [];
    this.goto(step, false);
  },

  unmount() {
    show(this.root, false);
    document.body.append(this.root);
  },

  goto(step, remember = true) {
    if (remember && this.step !== step) this.history.push(this.step);
    this.step = step;
    clearError($(".wizard-error", this.root));
    this.render();
    const heading = $(`[data-step=${step}] h3`, this.root);
    if (heading && this.dialog && this.dialog.open) heading.focus();
  },

  back() {
    const step = this.history.pop();
    if (step) this.goto(step, false);
  },

  render() {
    for (const part of $$("[data-step]", this.root)) show(part, part.dataset.step === this.step);
    show($(".back", this.root), this.history.length > 0 && this.step !== "done");
    if (this.step === "region") this.renderRegions();
    if (this.step === "number") this.renderOffer();
    if (this.step === "support") this.renderSupport();
    if (this.step === "done") this.renderDone();
  },

  fail(error, context) { fail($(".wizard-error", this.root), error, context); },

  async chooseKind(choice) {
    this.choice = choice;
    try {
      const {regions} = await api("GET", "/api/regions", {params: {choice}});
      this.regions = regions;
      $(".did-you-mean", this.root).hidden = true;
      $("#region-name").value = "";
      this.goto("region");
    } catch (error) { this.fail(error); }
  },

  renderRegions() {
    if (!this.regions) return;
    $(".regions", this.root).replaceChildren(...this.regions.map((r) => el("li", {},
      el("button", {type: "button", "data-region": r.region, onclick: () => this.chooseRegion(r.region)},
         data(regionName(r.names)), " ",
         el("span", {class: "count"}, tp("count.numbers", r.available))))));
    show($(".regions-empty", this.root), this.regions.length === 0);
    show($(".other-region", this.root), this.choice !== "landline_popular");
  },

  async chooseRegion(region) {
    $(".did-you-mean", this.root).hidden = true;
    try {
      const offer = await api("POST", accountPath("offers"), {body: {choice: this.choice, region}});
      this.offer = offer;
      this.region = offer.region;
      if (offer.request) {
        this.result = {kind: "request", offer};
        this.goto("done");
        await refreshed();
      } else {
        this.goto("number");
      }
    } catch (error) {
      this.fail(error);
      this.showChoices(error);
    }
  },

  // An unknown or ambiguous name: the regions it may mean, one click away.
  showChoices(error) {
    const box = $(".did-you-mean", this.root);
    const choices = error.choices || [];
    $("ul", box).replaceChildren(...choices.map((choice, i) => el("li", {},
      el("button", {type: "button", "data-region": choice, onclick: () => this.chooseRegion(choice)},
         data(regionName(error.choiceNames[i]))))));
    box.hidden = choices.length === 0;
  },

  renderOffer() {
    if (!this.offer) return;
    const names = this.offer.numbers.length ? this.offer.numbers[0].region_names : null;
    $(".offer-title", this.root).replaceChildren(t("wizard.offer_title", {
      region: data(names ? regionName(names) : this.offer.region)}));
    const before = new FormData($("[data-step=number]", this.root)).get("did");
    const dids = this.offer.numbers.map((n) => n.did);
    const checked = dids.includes(before) ? before : dids[0];
    $(".offer", this.root).replaceChildren(...this.offer.numbers.map((n) => el("li", {},
      el("label", {class: "radio"},
        el("input", {type: "radio", name: "did", value: n.did, required: true,
                     checked: n.did === checked ? "" : false}),
        el("span", {class: "phone"}, written(n))))));
  },

  async reserve(event) {
    event.preventDefault();
    const did = new FormData(event.target).get("did");
    try {
      const number = await api("POST", accountPath("reservations"), {body: {did}});
      this.result = {kind: "reserved", number};
      this.goto("done");
      await refreshed();
      if (this.onReserved) this.onReserved(number);
    } catch (error) {
      if (error.code === "already_taken") {
        try {
          this.offer = await api("POST", accountPath("offers"),
                                 {body: {choice: this.choice, region: this.region}});
          this.renderOffer();
        } catch { /* the refusal below says enough */ }
      }
      this.fail(error);
    }
  },

  toSupport(topic) {
    this.supportTopic = topic;
    $("#support-comment").value = t(`support.comment_${topic}`);
    this.goto("support");
  },

  renderSupport() {
    const context = $(".support-context", this.root);
    if (this.supportTopic === "numbers" && this.offer) {
      const names = this.offer.numbers.length ? this.offer.numbers[0].region_names : null;
      context.replaceChildren(t("support.context", {
        kind: t(`requests.kind.${this.offer.kind}`),
        region: data(names ? regionName(names) : this.offer.region)}));
    } else {
      context.replaceChildren();
    }
  },

  async sendSupport(event) {
    event.preventDefault();
    const body = {comment: $("#support-comment").value, contact: $("#support-contact").value};
    if (this.supportTopic === "numbers" && this.offer) {
      body.choice = this.choice;
      body.region = this.offer.region;
    }
    try {
      const request = await api("POST", accountPath("requests"), {body});
      this.result = {kind: "support", request};
      this.goto("done");
      await refreshed();
    } catch (error) { this.fail(error); }
  },

  renderDone() {
    const result = this.result;
    if (!result) return;
    const title = $(".done-title", this.root);
    const text = $(".done-text", this.root);
    if (result.kind === "reserved") {
      title.textContent = t("wizard.reserved_title");
      text.replaceChildren(t("wizard.reserved", {number: phone(result.number)}));
    } else if (result.kind === "request") {
      const request = result.offer.request;
      title.textContent = t("wizard.request_title");
      text.replaceChildren(t(`wizard.request.${request.kind}`, {
        region: data(regionName(request.region_names)), id: i18n.number(request.id)}));
    } else {
      title.textContent = t("wizard.support_title");
      text.replaceChildren(t("wizard.support_sent", {
        id: i18n.number(result.request.id), contact: result.request.contact_written}));
    }
  },
};

function openAdd() {
  const verified = state.account.verified;
  wizard.mount($("#wizard-home"), verified ? "kind" : "unverified");
  openDialog($("#add-dialog"), $(`[data-step=${wizard.step}] h3`, wizard.root));
}

function openSupport() {
  wizard.offer = null;
  wizard.supportTopic = null;
  $("#support-comment").value = "";
  wizard.mount($("#support-slot"), "support");
  openDialog($("#support-dialog"), $("#support-comment"));
}

// --- View, Change, Delete ------------------------------------------------------------------

async function openView(did) {
  try {
    const n = await api("GET", `/api/numbers/${did}`);
    $("#view-title").replaceChildren(t("view.title", {number: phone(n)}));
    const fields = [
      [t("view.number"), written(n)],
      [t("view.type"), numberType(n)],
      [t("view.region"), data(regionName(n.region_names))],
      [t("view.status"), t(`status.${n.status}`)],
      [t("view.dialing"), n.dialing.length ? data(n.dialing.map(campaignName).join(", "))
                                           : t("numbers.no_campaigns")],
      [t("view.health"), el("span", {}, ...health(n.health))],
    ];
    if (n.reserved) {
      fields.push([t("view.inbound"), n.inbound_campaign
        ? data(campaignName(n.inbound_campaign)) : t("change.no_campaign")]);
      fields.push([t("view.rule"), t(`rule.${n.callback_rule}`)]);
      fields.push([t("view.reserved_at"), i18n.when(n.reserved_at)]);
    }
    $("#view-fields").replaceChildren(...fields.flatMap(([label, value]) =>
      [el("dt", {}, label), el("dd", {}, value)]));
    $("#view-history").replaceChildren(...(n.history.length ? n.history.map(historyLine)
      : [el("li", {}, t("view.no_history"))]));
    openDialog($("#view-dialog"));
  } catch (error) { fail($("#page-error"), error); }
}

function historyLine(entry) {
  const [kind, who] = entry.actor.includes(":") ? entry.actor.split(/:(.*)/s) : [entry.actor, ""];
  const actorKey = `actor.${kind}`;
  const actor = i18n.has(actorKey) ? t(actorKey, {name: data(who)}) : data(entry.actor);
  const action = i18n.has(`action.${entry.action}`) ? t(`action.${entry.action}`)
                                                     : data(entry.action);
  const outcome = entry.outcome === "ok" ? t("history.ok") : errorWords({code: entry.outcome});
  return el("li", {}, el("time", {}, i18n.when(entry.at)), " · ", action, " · ", actor,
            " · ", outcome);
}

function openChange(n) {
  state.current = n;
  $("#change-title").replaceChildren(t("change.title", {number: phone(n)}));
  const inbound = state.campaigns.filter((c) => c.kind === "inbound");
  $("#change-campaign").replaceChildren(el("option", {value: ""}, t("change.no_campaign")),
    ...inbound.map((c) => el("option", {value: c.id, translate: "no"}, c.name || c.id)));
  $("#change-campaign").value = n.inbound_campaign || "";
  show($("#change-no-inbound"), inbound.length === 0);
  for (const radio of $$("#change-form [name=rule]")) radio.checked = radio.value === n.callback_rule;
  $("#toggle-status").textContent = t(n.status === "active" ? "change.disable" : "change.enable");
  clearError($("#change-error"));
  openDialog($("#change-dialog"), $("#change-campaign"));
}

async function saveChange(event) {
  event.preventDefault();
  const n = state.current;
  // only what changed: resending the campaign a number has is no new binding
  const body = {};
  const campaign = $("#change-campaign").value || null;
  const rule = new FormData(event.target).get("rule");
  if (campaign !== n.inbound_campaign) body.inbound_campaign = campaign;
  if (rule !== n.callback_rule) body.callback_rule = rule;
  if (Object.keys(body).length === 0) {
    closeDialog($("#change-dialog"));
    say(t("change.nothing", {number: phone(n)}));
    return;
  }
  try {
    await api("PATCH", `/api/numbers/${n.did}`, {body, params: {as_account: state.account.id}});
    closeDialog($("#change-dialog"));
    say(t("change.saved", {number: phone(n)}));
    await refreshed();
  } catch (error) { fail($("#change-error"), error); }
}

async function toggleStatus() {
  const n = state.current;
  const action = n.status === "active" ? "disable" : "enable";
  try {
    await api("POST", `/api/numbers/${n.did}/${action}`, {params: {as_account: state.account.id}});
    closeDialog($("#change-dialog"));
    say(t(action === "disable" ? "change.disabled" : "change.enabled", {number: phone(n)}));
    await refreshed();
  } catch (error) { fail($("#change-error"), error); }
}

function openDelete(n) {
  state.current = n;
  $("#delete-title").replaceChildren(t("delete.title", {number: phone(n)}));
  clearError($("#delete-error"));
  openDialog($("#delete-dialog"), $("#delete-form button.danger"));
}

async function confirmDelete(event) {
  event.preventDefault();
  const n = state.current;
  try {
    await api("DELETE", accountPath(`reservations/${n.did}`));
    closeDialog($("#delete-dialog"));
    say(t("delete.done", {number: phone(n)}));
    await refreshed();
  } catch (error) {
    fail($("#delete-error"), error, {
      number_in_use: t("delete.in_use", {names: data(n.dialing.map(campaignName).join(", "))}),
    });
  }
}

// --- campaigns -----------------------------------------------------------------------------

function renderCampaigns() {
  const rows = state.campaigns.map((c) => el("tr", {role: "row", "data-campaign": c.id},
    cell(t("campaigns.col_name"), "name", data(c.name || c.id)),
    cell(t("campaigns.col_kind"), "kind", t(`kind.${c.kind}`)),
    cell(t("campaigns.col_caller_id"), "caller-id", callerIdText(c)),
    cell(t("campaigns.col_state"), "state", t(`state.${c.state}`)),
    cell(t("numbers.col_actions"), "actions",
         actionButton(t("campaigns.edit"), c.name || c.id, "edit", () => openCampaign(c), c.id))));
  $("#campaigns tbody").replaceChildren(...rows);
  show($("#campaigns"), rows.length > 0);
  show($("#campaigns-empty"), rows.length === 0);
}

function callerIdText(c) {
  if (c.kind === "inbound") {
    const bound = reservedNumbers().filter((n) => n.inbound_campaign === c.id).map(written);
    return bound.length ? t("campaigns.inbound_on", {numbers: bound.join(", ")})
                        : t("campaigns.inbound_none");
  }
  if (!c.caller_id) return t("campaigns.pool");
  const number = reservedNumbers().find((n) => n.did === c.caller_id);
  return number ? written(number) : `+${c.caller_id}`;
}

const reservedNumbers = () => state.reserved;

// The campaign window: each field fills itself from a campaign and adds itself to the body
// sent; a field added later (what callers hear) is one more entry here and in the markup.
const CAMPAIGN_FIELDS = {
  name: {
    fill: (c) => { $("#campaign-name").value = c ? c.name : ""; },
    read: (body, c) => {
      const name = $("#campaign-name").value.trim();
      if (!c || name !== c.name) body.name = name;
    },
  },
  kind: {
    fill: (c) => {
      for (const radio of $$("#campaign-form [name=kind]")) radio.checked = radio.value === (c ? c.kind : "outbound");
      show($("[data-field=kind]"), !c);
    },
    read: (body, c) => { if (!c) body.kind = new FormData($("#campaign-form")).get("kind"); },
  },
  caller_id: {
    fill: (c) => renderCallerIds(c ? c.caller_id : null),
    read: (body, c) => {
      if (campaignKind() !== "outbound") return;
      const chosen = new FormData($("#campaign-form")).get("caller_id");
      const value = chosen === "pool" || !chosen ? null : chosen;
      if (!c || value !== c.caller_id) body.caller_id = value;
    },
  },
  accept_inbound: {
    fill: (c) => { $("#campaign-accept").checked = Boolean(c && c.accept_inbound); },
    read: (body, c) => {
      if (campaignKind() !== "outbound") return;
      const accept = $("#campaign-accept").checked;
      if (!c || accept !== c.accept_inbound) body.accept_inbound = accept;
    },
  },
  scenario: {
    fill: (c) => fillScenario(c ? c.scenario : null),
    read: (body, c) => {
      const scenario = readScenario();
      const before = c ? c.scenario : null;
      if (JSON.stringify(scenario) !== JSON.stringify(before)) body.scenario = scenario;
    },
  },
  state: {
    fill: (c) => {
      $("#campaign-state").value = c ? c.state : "running";
      show($("[data-field=state]"), Boolean(c));
    },
    read: (body, c) => {
      const value = $("#campaign-state").value;
      if (c && value !== c.state) body.state = value;
    },
  },
};

function campaignKind() {
  return state.campaign ? state.campaign.kind : new FormData($("#campaign-form")).get("kind");
}

// What the campaign's calls do (docs/routing.md, "Scenarios"); the server checks every name.
function fillScenario(scenario) {
  const operators = scenario && scenario.operators;
  $("#scenario-play").value = (scenario && scenario.play) || "";
  $("#scenario-operators").value = !operators ? "" : operators.queue ? "queue" : "endpoints";
  $("#scenario-queue").value = (operators && operators.queue) || "";
  $("#scenario-endpoints").value = ((operators && operators.endpoints) || []).join(" ");
  $("#scenario-digit").replaceChildren(...[..."1234567890"].map((digit) =>
    el("option", {value: digit}, digit)));
  $("#scenario-digit").value = (operators && operators.digit) || "1";
  $("#scenario-ring").value = operators ? operators.ring_timeout : 20;
  $("#scenario-no-answer").value = (scenario && scenario.no_answer && scenario.no_answer.play) || "";
  showOperatorFields();
}

// The document as the server shows it (same fields, same order), or null: no scenario.
function readScenario() {
  const play = $("#scenario-play").value.trim();
  const who = $("#scenario-operators").value;
  if (!play && !who) return null;
  const scenario = {version: 1};
  if (play) scenario.play = play;
  if (who) {
    const operators = {};
    if (campaignKind() === "outbound") operators.digit = $("#scenario-digit").value;
    if (who === "queue") operators.queue = $("#scenario-queue").value.trim();
    else operators.endpoints = $("#scenario-endpoints").value.split(/[\s,]+/).filter(Boolean);
    operators.ring_timeout = Number($("#scenario-ring").value);
    scenario.operators = operators;
    const noAnswer = $("#scenario-no-answer").value.trim();
    if (noAnswer) scenario.no_answer = {play: noAnswer};
  }
  return scenario;
}

function showOperatorFields() {
  const who = $("#scenario-operators").value;
  for (const part of $$("#campaign-form [data-operators]")) {
    const wanted = part.dataset.operators;
    show(part, Boolean(who) && (!wanted || wanted === who));
  }
  $("#scenario-queue").required = who === "queue";
  $("#scenario-endpoints").required = who === "endpoints";
}

function showOutboundFields() {
  for (const field of $$("#campaign-form [data-outbound]")) {
    show(field, campaignKind() === "outbound");
  }
}

function renderCallerIds(selected) {
  const verified = state.account.verified;
  const active = reservedNumbers().filter((n) => n.status === "active");
  const options = [el("li", {}, el("label", {class: "radio"},
    el("input", {type: "radio", name: "caller_id", value: "pool",
                 checked: !selected ? "" : false}),
    el("span", {}, t("campaign.pool_option"))))];
  for (const n of active) {
    options.push(el("li", {}, el("label", {class: "radio"},
      el("input", {type: "radio", name: "caller_id", value: n.did,
                   checked: n.did === selected ? "" : false}),
      el("span", {class: "phone"}, written(n)))));
  }
  $("#caller-ids").replaceChildren(...options);
  $("#caller-id-note").textContent = !verified ? t("campaign.unverified")
    : active.length ? "" : t("campaign.no_numbers");
  $("#caller-id-add").textContent = t(verified ? "campaign.add_number" : "unverified.how");
}

async function openCampaign(campaign) {
  state.campaign = campaign || null;
  $("#campaign-title").replaceChildren(campaign
    ? t("campaign.edit_title", {name: data(campaign.name || campaign.id)})
    : t("campaign.new_title"));
  for (const field of Object.values(CAMPAIGN_FIELDS)) field.fill(campaign);
  showOutboundFields();
  clearError($("#campaign-error"));
  wizard.unmount();
  openDialog($("#campaign-dialog"), $("#campaign-name"));
}

// The Add wizard inside the campaign window; the number reserved becomes the caller ID.
function addCallerId() {
  wizard.mount($("#campaign-wizard-slot"), state.account.verified ? "kind" : "unverified",
    (number) => {
      if (!state.reserved.some((n) => n.did === number.did)) state.reserved.push(number);
      renderCallerIds(number.did);
    });
  $(`[data-step=${wizard.step}] h3`, wizard.root).focus();
}

async function saveCampaign(event) {
  event.preventDefault();
  const c = state.campaign;
  const body = c ? {} : {account: state.account.id};
  for (const field of Object.values(CAMPAIGN_FIELDS)) field.read(body, c);
  try {
    const saved = c ? await api("PATCH", `/api/campaigns/${encodeURIComponent(c.id)}`, {body})
                    : await api("POST", "/api/campaigns", {body});
    wizard.unmount();
    closeDialog($("#campaign-dialog"));
    say(t(c ? "campaigns.saved" : "campaigns.created", {name: data(saved.name || saved.id)}));
    await refreshed();
  } catch (error) { fail($("#campaign-error"), error); }
}

// Each outbound campaign's progress, as the dialers leave it in Redis (again every 5 s).
async function renderDialing() {
  const outbound = state.campaigns.filter((c) => c.kind === "outbound");
  const rows = await Promise.all(outbound.map(async (c) => {
    const path = `/api/campaigns/${encodeURIComponent(c.id)}/progress`;
    const p = await api("GET", path).catch(() => null);
    const outcomes = p && Object.entries(p.outcomes).filter(([, n]) => n)
      .map(([name, n]) => `${t(`outcome.${name}`)} ${i18n.number(n)}`).join(", ");
    const counts = p ? [p.callees, p.waiting, p.dialing, p.done, p.refused].map(i18n.number)
                     : [t("dialing.unknown"), "", "", "", ""];
    const name = data(c.name || c.id);
    return el("tr", {role: "row", "data-campaign": c.id},
      cell(t("dialing.col_campaign"), "name", name,
           c.state === "running" ? null : ` (${t(`state.${c.state}`)})`),
      ...["callees", "waiting", "dialing", "done", "refused"].map((column, i) =>
        cell(t(`dialing.col_${column}`), column, counts[i])),
      cell(t("dialing.col_outcomes"), "outcomes", p ? outcomes || "—" : ""));
  }));
  $("#dialing tbody").replaceChildren(...rows);
  show($("#dialing-part"), rows.length > 0);
}

// --- requests ------------------------------------------------------------------------------

function renderRequests() {
  const items = [...state.requests].reverse().map((r) => {
    const title = r.topic === "support"
      ? t("requests.support", {id: i18n.number(r.id)})
      : t("requests.numbers", {id: i18n.number(r.id), kind: t(`requests.kind.${r.kind}`),
                               region: data(regionName(r.region_names))});
    const status = r.status === "open"
      ? el("p", {class: "status open"}, t("requests.open"))
      : el("p", {class: "status closed"}, t("requests.closed", {when: i18n.when(r.closed_at)}));
    return el("li", {"data-request": r.id, class: r.status},
      el("h3", {}, title),
      el("p", {class: "filed"}, t("requests.filed", {when: i18n.when(r.at)})),
      r.comment ? el("p", {class: "comment"}, data(r.comment)) : null,
      status,
      r.note ? el("p", {class: "note"}, t("requests.note"), " ", data(r.note)) : null,
      state.me.role === "staff" && r.status === "open"
        ? actionButton(t("requests.close"), `№${r.id}`, "close", () => openClose(r), r.id) : null);
  });
  $("#requests").replaceChildren(...items);
  show($("#requests-empty"), items.length === 0);
}

function openClose(request) {
  state.current = request;
  $("#close-title").textContent = t("requests.close_title", {id: i18n.number(request.id)});
  $("#close-note").value = "";
  clearError($("#close-error"));
  openDialog($("#close-dialog"), $("#close-note"));
}

async function closeRequest(event) {
  event.preventDefault();
  const note = $("#close-note").value.trim();
  try {
    await api("POST", `/api/requests/${state.current.id}/close`, {body: note ? {note} : {}});
    closeDialog($("#close-dialog"));
    say(t("requests.closed_done", {id: i18n.number(state.current.id)}));
    await refreshed();
  } catch (error) { fail($("#close-error"), error); }
}

// --- one's own password --------------------------------------------------------------------

function openPassword() {
  $("#password-form").reset();
  $("#password-login").value = state.me.login;
  clearError($("#password-error"));
  openDialog($("#password-dialog"), $("#password-current"));
}

async function changePassword(event) {
  event.preventDefault();
  try {
    state.me = await api("POST", "/api/me/password", {body: {
      current: $("#password-current").value, new: $("#password-new").value}});
    closeDialog($("#password-dialog"));
    say(t("password.done"));
  } catch (error) { fail($("#password-error"), error); }
}

// --- wiring --------------------------------------------------------------------------------

function wire() {
  $("#sign-in").addEventListener("submit", signIn);
  $("#sign-out").addEventListener("click", signOut);
  $("#language").addEventListener("click", switchLanguage);
  $("#account").addEventListener("change", chooseAccount);
  for (const tab of $$("[role=tab]")) {
    tab.addEventListener("click", () => chooseTab(tab.dataset.status));
  }
  $("#tabs").addEventListener("keydown", tabKeys);
  let typing;
  $("#search").addEventListener("input", (event) => {
    clearTimeout(typing);
    typing = setTimeout(() => { state.search = event.target.value.trim(); refreshed(); }, 200);
  });
  $("#add").addEventListener("click", openAdd);
  $("#verify-how").addEventListener("click", openAdd);
  $("#verify-account").addEventListener("click", verifyAccount);
  for (const button of $$("[data-choice]")) {
    button.addEventListener("click", () => wizard.chooseKind(button.dataset.choice));
  }
  $(".other-region").addEventListener("submit", (event) => {
    event.preventDefault();
    const region = $("#region-name").value.trim();
    if (region) wizard.chooseRegion(region);
  });
  $("[data-step=number]").addEventListener("submit", (event) => wizard.reserve(event));
  $("[data-step=support]").addEventListener("submit", (event) => wizard.sendSupport(event));
  for (const button of $$("[data-to-support]")) {
    button.addEventListener("click", () => wizard.toSupport(button.dataset.toSupport));
  }
  $(".back", wizard.root).addEventListener("click", () => wizard.back());
  $("#change-form").addEventListener("submit", saveChange);
  $("#toggle-status").addEventListener("click", toggleStatus);
  $("#delete-form").addEventListener("submit", confirmDelete);
  $("#campaign-new").addEventListener("click", () => openCampaign(null));
  $("#campaign-form").addEventListener("submit", saveCampaign);
  $("#campaign-form").addEventListener("change", (event) => {
    if (event.target.name === "kind") showOutboundFields();
    if (event.target.id === "scenario-operators") showOperatorFields();
  });
  $("#caller-id-add").addEventListener("click", addCallerId);
  $("#support-open").addEventListener("click", openSupport);
  $("#close-form").addEventListener("submit", closeRequest);
  $("#password-open").addEventListener("click", openPassword);
  $("#password-form").addEventListener("submit", changePassword);
  for (const button of $$("[data-close]")) {
    button.addEventListener("click", () => closeDialog(button.closest("dialog")));
  }
  for (const dialog of $$("dialog")) dialog.addEventListener("close", restoreFocus);
  setInterval(() => {
    if (state.account && !$("#main").hidden) renderDialing().catch(() => {});
  }, 5000);
}

start();
