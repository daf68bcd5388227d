// The page's words in Russian (first) and English: the catalogues ru.json and en.json, plural
// forms by the language's rules (Intl.PluralRules: "1 номер", "2 номера", "5 номеров"),
// numbers and dates as the language writes them (Intl: "1 234").
"use strict";

export const LANGUAGES = ["ru", "en"];
const STORED = "zvonok-language";
let messages = {};
export let lang = "ru";

// The language: the one chosen with the switch, else the browser's first of ours, else Russian.
export function preferred() {
  const stored = localStorage.getItem(STORED);
  if (LANGUAGES.includes(stored)) return stored;
  for (const tag of navigator.languages || [navigator.language]) {
    const base = String(tag).slice(0, 2).toLowerCase();
    if (LANGUAGES.includes(base)) return base;
  }
  return "ru";
}

export async function load(wanted, remember) {
  const response = await fetch(`/static/${wanted}.json`);
  messages = await response.json();
  lang = wanted;
  document.documentElement.lang = wanted;
  if (remember) localStorage.setItem(STORED, wanted);
}

export function has(key) {
  return key in messages;
}

function message(key) {
  const found = messages[key];
  if (found === undefined) throw new Error(`no message "${key}" in ${lang}`);
  return found;
}

// The words of `key`, {name} filled from `vars`; a value that is a DOM node (data such as a
// campaign's name, marked translate="no") makes the result a fragment instead of a string.
export function t(key, vars) {
  const text = message(key);
  if (typeof text !== "string") throw new Error(`"${key}" has plural forms: use tp()`);
  return fill(text, vars || {});
}

// The form of `key` for the count n ("one", "few", "many", "other"), with {n} written out.
export function tp(key, n, vars) {
  const forms = message(key);
  const form = forms[new Intl.PluralRules(lang).select(n)] ?? forms.other;
  return fill(form, {...vars, n: number(n)});
}

function fill(text, vars) {
  const parts = text.split(/\{(\w+)\}/);
  const nodes = parts.some((part, i) => i % 2 === 1 && vars[part] instanceof Node);
  if (!nodes) return parts.map((part, i) => (i % 2 ? String(vars[part] ?? "") : part)).join("");
  const fragment = document.createDocumentFragment();
  parts.forEach((part, i) => fragment.append(i % 2 ? vars[part] ?? "" : part));
  return fragment;
}

export const number = (n) => new Intl.NumberFormat(lang).format(n);

export const percent = (share) =>
  new Intl.NumberFormat(lang, {style: "percent", maximumFractionDigits: 0}).format(share);

export const when = (seconds) => new Intl.DateTimeFormat(
  lang, {dateStyle: "medium", timeStyle: "short"}).format(new Date(seconds * 1000));

export const list = (items) => new Intl.ListFormat(lang, {type: "conjunction"}).format(items);

// The static text of the page: data-i18n="key" (the text), data-i18n-attr="attr:key;...".
export function translate(root) {
  for (const node of root.querySelectorAll("[data-i18n]")) node.textContent = t(node.dataset.i18n);
  for (const node of root.querySelectorAll("[data-i18n-attr]")) {
    for (const pair of node.dataset.i18nAttr.split(";")) {
      const [attribute, key] = pair.split(":");
      node.setAttribute(attribute, t(key));
    }
  }
}
