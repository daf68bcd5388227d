// The "Subscriber numbers" page: plain DOM over the admin API, acting as the chosen account.
"use strict";

const $ = (selector) => document.querySelector(selector);
const RULES = {force_yes: "Forced YES", as_campaign: "As set in the campaign",
               force_no: "Forced NO"};
const state = {token: "", account: "", status: "active", search: "", view: null,
               campaigns: [], current: null};

class ApiError extends Error {
  constructor(code, message, choices) {
    super(message);
    this.code = code;
    this.choices = choices || [];
  }
}

async function api(method, path, body, params) {
  const url = new URL(path, location.origin);
  for (const [key, value] of Object.entries(params || {})) {
    if (value !== undefined && value !== null && value !== "") url.searchParams.set(key, value);
  }
  const headers = {Authorization: `Bearer ${state.token}`};
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(url, {method, headers,
                                     body: body === undefined ? undefined : JSON.stringify(body)});
  const document = await response.json();
  if (!response.ok) {
    if (response.status === 401) showLogin();
    throw new ApiError(document.error.code, document.error.message, document.error.choices);
  }
  return document;
}

// Builds an element; strings become text nodes (never HTML).
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (value !== false && value !== null && value !== undefined) node.setAttribute(key, value);
  }
  node.append(...children.filter((child) => child !== null && child !== undefined));
  return node;
}

function show(node, visible) { node.hidden = !visible; }

function say(text, isError) {
  const message = $("#message");
  message.textContent = text;
  message.className = isError ? "error" : "ok";
  show(message, Boolean(text));
}

function fail(where, error) {
  where.textContent = error.code ? `${error.message} (${error.code})` : String(error);
  show(where, true);
}

function pretty(did) {  // 74951234567 -> +7 495 123-45-67
  const m = /^7(\d{3})(\d{3})(\d{2})(\d{2})$/.exec(did);
  return m ? `+7 ${m[1]} ${m[2]}-${m[3]}-${m[4]}` : `+${did}`;
}

// start: the token comes from the address (#token=...), the session, or the form

function start() {
  const fromHash = new URLSearchParams(location.hash.slice(1)).get("token");
  if (fromHash) {
    sessionStorage.setItem("zvonok-token", fromHash);
    history.replaceState(null, "", location.pathname + location.search);
  }
  state.token = sessionStorage.getItem("zvonok-token") || "";
  wire();
  if (state.token) open(); else showLogin();
}

function showLogin() {
  show($("#login"), true);
  show($("#main"), false);
}

async function open() {
  try {
    const {accounts} = await api("GET", "/api/accounts");
    const select = $("#account");
    select.replaceChildren(...accounts.map((a) =>
      el("option", {value: a.id, "data-verified": String(a.verified)},
         a.name ? `${a.name} (${a.id})` : a.id)));
    const wanted = new URLSearchParams(location.search).get("account");
    if (wanted && accounts.some((a) => a.id === wanted)) select.value = wanted;
    show($("#login"), false);
    show($("#main"), true);
    await chooseAccount();
  } catch (error) {
    if (error.code !== "unauthorized") say(error.message, true);
  }
}

async function chooseAccount() {
  const option = $("#account").selectedOptions[0];
  state.account = option ? option.value : "";
  const verified = option && option.dataset.verified === "true";
  $("#verified").textContent = verified ? "verified" : "not verified: service numbers only";
  $("#verified").className = verified ? "badge ok" : "badge warn";
  $("#add").disabled = !verified;
  say("");
  await refresh();
}

async function refresh() {
  if (!state.account) return;
  const [view, campaigns] = await Promise.all([
    api("GET", "/api/numbers", undefined,
        {account: state.account, status: state.status, search: state.search}),
    api("GET", "/api/campaigns", undefined, {account: state.account}),
  ]);
  state.view = view;
  state.campaigns = campaigns.campaigns;
  render(view);
  await renderDialing();
}

// dialing: each outbound campaign's progress, as the dialers leave it in Redis

async function renderDialing() {
  const outbound = state.campaigns.filter((c) => c.kind === "outbound");
  const rows = await Promise.all(outbound.map(async (c) => {
    const path = `/api/campaigns/${encodeURIComponent(c.id)}/progress`;
    const p = await api("GET", path).catch(() => null);
    const cells = p ? [p.callees, p.waiting, p.dialing, p.done, p.refused,
                       Object.entries(p.outcomes).filter(([, n]) => n)
                         .map(([name, n]) => `${name.replace("_", " ")} ${n}`).join(", ") || "—"]
                    : ["unknown (no Redis)", "", "", "", "", ""];
    return el("tr", {"data-campaign": c.id},
      el("td", {}, c.state === "running" ? c.id : `${c.id} (${c.state})`),
      ...cells.map((cell) => el("td", {}, String(cell))));
  }));
  $("#dialing tbody").replaceChildren(...rows);
}

// the list

function render(view) {
  const kinds = Object.entries(view.reserved).map(([kind, byStatus]) =>
    `${Object.values(byStatus).reduce((a, b) => a + b, 0)} ${kind}`);
  $("#summary").textContent =
    `Reserved numbers: ${kinds.length ? kinds.join(", ") : "none"}`;
  for (const status of ["active", "disabled"]) {
    const tab = $(`#tab-${status}`);
    tab.querySelector(".count").textContent = `(${view.tabs[status]})`;
    tab.setAttribute("aria-selected", String(status === state.status));
  }
  const rows = view.numbers.map(numberRow);
  $("#numbers tbody").replaceChildren(...rows);
  show($("#empty"), rows.length === 0);
}

function numberRow(n) {
  const reserved = n.reserved;
  const inbound = n.inbound_campaign ? `inbound: ${n.inbound_campaign}` : null;
  const campaigns = [...n.dialing.map((c) => `caller ID of ${c}`), inbound].filter(Boolean);
  return el("tr", {"data-did": n.did, class: n.status},
    el("td", {class: "did"}, pretty(n.did)),
    el("td", {}, `${n.kind}, ${reserved ? "reserved" : "service"}`),
    el("td", {}, n.region),
    el("td", {class: "campaigns"}, campaigns.length ? campaigns.join("; ") : "—"),
    el("td", {class: "rule"}, reserved ? RULES[n.callback_rule] : ""),
    el("td", {class: "actions"},
      el("button", {type: "button", class: "view", onclick: () => openView(n.did)}, "View"),
      reserved ? el("button", {type: "button", class: "change",
                               onclick: () => openChange(n)}, "Change") : null,
      reserved ? el("button", {type: "button", class: "delete",
                               onclick: () => openDelete(n)}, "Delete") : null));
}

// Add: kind -> region -> number -> Continue (or the request message)

function step(name) {
  for (const part of document.querySelectorAll("#add-dialog [data-step]")) {
    show(part, part.dataset.step === name);
  }
  show($("#add-error"), false);
  $("#region-choices").replaceChildren();
}

function openAdd() {
  step("kind");
  $("#add-dialog").showModal();
}

async function chooseKind(choice) {
  state.choice = choice;
  try {
    const {regions} = await api("GET", "/api/regions", undefined, {choice});
    $("#regions").replaceChildren(...regions.map((r) => el("li", {},
      el("button", {type: "button", "data-region": r.region,
                    onclick: () => chooseRegion(r.region)},
         `${r.region} `, el("span", {class: "count"}, `(${r.available})`)))));
    show($("#other-region"), choice !== "landline_popular");
    step("region");
  } catch (error) { fail($("#add-error"), error); }
}

async function chooseRegion(region) {
  state.region = region;
  try {
    const offer = await api("POST", `/api/accounts/${encodeURIComponent(state.account)}/offers`,
                            {choice: state.choice, region});
    if (offer.request) {
      $("#add-result").textContent = offer.message;
      step("done");
      return;
    }
    $("#offer-text").textContent = `${offer.region}: choose a number`;
    $("#offer").replaceChildren(...offer.numbers.map((n, i) => el("li", {},
      el("label", {}, el("input", {type: "radio", name: "did", value: n.did, required: true,
                                   checked: i === 0 ? "" : false}), ` ${pretty(n.did)}`))));
    step("number");
  } catch (error) {
    fail($("#add-error"), error);
    // an unknown or ambiguous name: the regions it may mean, one click away
    $("#region-choices").replaceChildren(...(error.choices || []).map((choice) => el("li", {},
      el("button", {type: "button", "data-region": choice,
                    onclick: () => chooseRegion(choice)}, choice))));
  }
}

async function reserve(event) {
  event.preventDefault();
  const did = new FormData(event.target).get("did");
  try {
    const number = await api("POST",
      `/api/accounts/${encodeURIComponent(state.account)}/reservations`, {did});
    $("#add-result").textContent = `${pretty(number.did)} is yours.`;
    step("done");
    await refresh();
  } catch (error) {
    if (error.code === "already_taken") await chooseRegion(state.region);  // a fresh list
    fail($("#add-error"), error);
  }
}

// View, Change, Delete

async function openView(did) {
  try {
    const n = await api("GET", `/api/numbers/${did}`);
    $("#view-did").textContent = pretty(n.did);
    const fields = [
      ["Number", n.did], ["Type", n.kind], ["Region", n.region],
      ["Pool", n.reserved ? "reserved" : n.pool], ["Status", n.status],
      ["Owner", n.owner || "—"],
      ["Caller ID of", n.dialing.join(", ") || "—"],
      ["Inbound campaign", n.inbound_campaign || "—"],
    ];
    if (n.reserved) fields.push(["Rule on a callback", RULES[n.callback_rule]]);
    $("#view-fields").replaceChildren(...fields.flatMap(([k, v]) =>
      [el("dt", {}, k), el("dd", {}, String(v))]));
    $("#view-history").replaceChildren(...n.history.map((e) => el("li", {},
      `${new Date(e.at * 1000).toLocaleString()} · ${e.action} · ${e.outcome}` +
      (e.account ? ` · ${e.account}` : ""))));
    $("#view-dialog").showModal();
  } catch (error) { say(error.message, true); }
}

function openChange(n) {
  state.current = n;
  $("#change-did").textContent = pretty(n.did);
  const inbound = state.campaigns.filter((c) => c.kind === "inbound");
  $("#change-campaign").replaceChildren(el("option", {value: ""}, "— none —"),
    ...inbound.map((c) => el("option", {value: c.id}, c.id)));
  $("#change-campaign").value = n.inbound_campaign || "";
  for (const radio of document.querySelectorAll("#change-form [name=rule]")) {
    radio.checked = radio.value === n.callback_rule;
  }
  $("#toggle-status").textContent = n.status === "active" ? "Disable" : "Enable";
  show($("#change-error"), false);
  $("#change-dialog").showModal();
}

async function saveChange(event) {
  event.preventDefault();
  const n = state.current;
  // only what changed: the API leaves out fields as they are, the audit log says what changed
  const body = {};
  const campaign = $("#change-campaign").value || null;
  const rule = new FormData(event.target).get("rule");
  if (campaign !== n.inbound_campaign) body.inbound_campaign = campaign;
  if (rule !== n.callback_rule) body.callback_rule = rule;
  if (Object.keys(body).length === 0) {
    $("#change-dialog").close();
    say(`${pretty(n.did)}: nothing to save.`);
    return;
  }
  try {
    await api("PATCH", `/api/numbers/${n.did}`, body, {as_account: state.account});
    $("#change-dialog").close();
    say(`${pretty(n.did)} saved.`);
    await refresh();
  } catch (error) { fail($("#change-error"), error); }
}

async function toggleStatus() {
  const n = state.current;
  const action = n.status === "active" ? "disable" : "enable";
  try {
    await api("POST", `/api/numbers/${n.did}/${action}`, undefined, {as_account: state.account});
    $("#change-dialog").close();
    say(`${pretty(n.did)} is ${action}d.`);
    await refresh();
  } catch (error) { fail($("#change-error"), error); }
}

function openDelete(n) {
  state.current = n;
  $("#delete-did").textContent = pretty(n.did);
  show($("#delete-error"), false);
  $("#delete-dialog").showModal();
}

async function confirmDelete(event) {
  event.preventDefault();
  const n = state.current;
  try {
    await api("DELETE",
      `/api/accounts/${encodeURIComponent(state.account)}/reservations/${n.did}`);
    $("#delete-dialog").close();
    say(`${pretty(n.did)} is deleted.`);
    await refresh();
  } catch (error) { fail($("#delete-error"), error); }
}

// wiring

function wire() {
  $("#login").addEventListener("submit", (event) => {
    event.preventDefault();
    state.token = $("#token").value.trim();
    sessionStorage.setItem("zvonok-token", state.token);
    open();
  });
  $("#account").addEventListener("change", chooseAccount);
  for (const tab of document.querySelectorAll("[role=tab]")) {
    tab.addEventListener("click", () => { state.status = tab.dataset.status; refresh(); });
  }
  let typing;
  $("#search").addEventListener("input", (event) => {
    clearTimeout(typing);
    typing = setTimeout(() => { state.search = event.target.value.trim(); refresh(); }, 150);
  });
  $("#add").addEventListener("click", openAdd);
  for (const button of document.querySelectorAll("[data-choice]")) {
    button.addEventListener("click", () => chooseKind(button.dataset.choice));
  }
  $("#other-region").addEventListener("submit", (event) => {
    event.preventDefault();
    const region = $("#region-name").value.trim();
    if (region) chooseRegion(region);
  });
  $("#pick-number").addEventListener("submit", reserve);
  $("#change-form").addEventListener("submit", saveChange);
  $("#toggle-status").addEventListener("click", toggleStatus);
  $("#delete-form").addEventListener("submit", confirmDelete);
  setInterval(() => { if (state.account && !$("#main").hidden) renderDialing(); }, 5000);
  for (const button of document.querySelectorAll("[data-close]")) {
    button.addEventListener("click", () => button.closest("dialog").close());
  }
}

start();
