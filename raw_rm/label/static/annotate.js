"use strict";
// The annotator page: fetch the next item, show it, send the answer. The token comes from the URL fragment
// (#token=...), which the browser never sends to the server, and is kept in sessionStorage for reloads.
const $ = (id) => document.getElementById(id);
const element = (tag, properties) => Object.assign(document.createElement(tag), properties);
const LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ";
const state = { token: null, item: null, aspects: [], busy: false, keys: {}, labels: {} };

function readToken() {
  const match = /(?:^|[#&])token=([^&]+)/.exec(location.hash);
  if (match) {
    sessionStorage.setItem("raw_rm_token", decodeURIComponent(match[1]));
    history.replaceState(null, "", location.pathname);  // keep the token out of the visible URL and history
  }
  return sessionStorage.getItem("raw_rm_token");
}

async function api(path, options = {}) {
  const headers = { Authorization: `Bearer ${state.token}` };
  if (options.body) headers["Content-Type"] = "application/json";
  const response = await fetch(path, { ...options, headers });
  const data = await response.json().catch(() => ({ error: `HTTP ${response.status}` }));
  if (!response.ok) {
    const error = new Error(data.error || `HTTP ${response.status}`);
    error.status = response.status;
    throw error;
  }
  return data;
}

function say(text, ok = false) {
  $("message").textContent = text;
  $("message").className = ok ? "ok" : "";
}

function showProgress(progress) {
  const total = progress.answered + progress.remaining;
  $("progress-text").textContent = `${progress.answered} answered, ${progress.remaining} to go`;
  $("progress-bar").style.width = total ? `${(100 * progress.answered) / total}%` : "0";
}

function button(label, key, onClick, primary = false) {
  const b = document.createElement("button");
  b.type = "button";
  b.textContent = label;
  if (primary) b.className = "primary";
  if (key) {
    const k = document.createElement("kbd");
    k.textContent = key;
    b.appendChild(k);
    state.keys[key] = onClick;
    state.labels[key] = label;
  }
  b.addEventListener("click", onClick);
  return b;
}

function render(item) {
  state.item = item;
  $("task").dataset.item = item.id;  // which item is on screen (tests and screen readers can tell a new one came)
  state.keys = {};
  state.labels = {};
  $("prompt").textContent = item.prompt;
  const k = item.responses.length;
  const cards = $("responses");
  cards.replaceChildren();
  item.responses.forEach((response, position) => {
    const card = document.createElement("article");
    card.className = "card";
    const title = document.createElement("h3");
    title.textContent = `Response ${LETTERS[position]}`;
    if (k > 2) {
      const select = document.createElement("select");
      select.dataset.index = response.index;
      select.setAttribute("aria-label", `rank of response ${LETTERS[position]}`);
      for (let r = 1; r <= k; r++) select.add(new Option(`rank ${r}`, r - 1, false, r - 1 === position));
      title.appendChild(select);
    }
    const text = document.createElement("div");
    text.className = "text";
    text.textContent = response.text;
    card.append(title, text);
    cards.appendChild(card);
  });
  renderAspects(item);
  const decisions = $("decisions");
  decisions.replaceChildren();
  if (k === 2) {
    const [a, b] = item.responses.map((r) => r.index);
    const ranked = (better, strength) => () => send("ranked", better === a ? order(a, b) : order(b, a), strength);
    decisions.append(
      button("A is clearly better", "1", ranked(a, "clear"), true),
      button("A is slightly better", "2", ranked(a, "slight")),
      button("Tie", "3", () => send("tie")),
      button("B is slightly better", "4", ranked(b, "slight")),
      button("B is clearly better", "5", ranked(b, "clear"), true),
    );
  } else {
    decisions.append(button("Submit ranking", "Enter", () => send("ranked", selectedRanks()), true),
                     button("All equally good", "t", () => send("tie")));
  }
  decisions.append(button("Skip", "s", () => send("skip")));
  $("note").value = "";
  const help = Object.entries(state.labels).map(([key, label]) => `${key}: ${label}`);
  help.push("?: show or hide this list");
  $("help-list").replaceChildren(...help.map((text) => element("li", { textContent: text })));
  $("task").hidden = false;
  $("done").hidden = true;
  window.scrollTo(0, 0);
}

function order(first, second) {
  const ranks = [0, 0];
  ranks[first] = 0;
  ranks[second] = 1;
  return ranks;
}

function selectedRanks() {
  const ranks = new Array(state.item.responses.length).fill(0);
  document.querySelectorAll("#responses select").forEach((s) => { ranks[Number(s.dataset.index)] = Number(s.value); });
  return ranks;
}

function renderAspects(item) {
  const box = $("aspects");
  box.replaceChildren();
  if (!state.aspects.length) return;
  const heading = document.createElement("h2");
  heading.textContent = "Per aspect (optional): which is better?";
  box.appendChild(heading);
  for (const aspect of state.aspects) {
    const row = document.createElement("div");
    row.className = "aspect";
    const name = document.createElement("span");
    name.className = "name";
    name.textContent = aspect;
    row.appendChild(name);
    const choices = item.responses.map((r, position) => [LETTERS[position], String(r.index)]).concat([["same", "tie"]]);
    for (const [label, value] of choices) {
      const lab = document.createElement("label");
      const input = document.createElement("input");
      input.type = "radio";
      input.name = `aspect-${aspect}`;
      input.value = value;
      lab.append(input, ` ${label}`);
      row.appendChild(lab);
    }
    box.appendChild(row);
  }
}

function aspectAnswers() {
  const out = {};
  for (const aspect of state.aspects) {
    const checked = document.querySelector(`input[name="aspect-${CSS.escape(aspect)}"]:checked`);
    if (checked) out[aspect] = checked.value === "tie" ? "tie" : Number(checked.value);
  }
  return out;
}

async function send(decision, ranks = null, strength = null) {
  if (state.busy || !state.item) return;
  if (decision === "ranked" && new Set(ranks).size < 2) {
    say("Give the responses different ranks, or choose 'All equally good'.");
    return;
  }
  state.busy = true;
  const body = { item_id: state.item.id, decision, aspects: aspectAnswers(), note: $("note").value };
  if (ranks) body.ranks = ranks;
  if (strength) body.strength = strength;
  try {
    const saved = await api("/api/judgements", { method: "POST", body: JSON.stringify(body) });
    showProgress(saved.progress);
    say(decision === "skip" ? "Skipped." : "Saved.", true);
    await next();
  } catch (error) {
    say(`Not saved: ${error.message}`);
  } finally {
    state.busy = false;
  }
}

async function next() {
  const data = await api("/api/next");
  showProgress(data.progress);
  if (data.item) {
    render(data.item);
  } else {
    state.item = null;
    $("task").hidden = true;
    $("done").hidden = false;
  }
}

async function start() {
  state.token = readToken();
  if (!state.token) {
    $("login").hidden = false;
    return;
  }
  try {
    const me = await api("/api/me");
    $("who").textContent = me.name;
    state.aspects = me.aspects;
    $("login").hidden = true;
    await next();
  } catch (error) {
    say(error.message);
    if (error.status === 401) {
      sessionStorage.removeItem("raw_rm_token");
      $("login").hidden = false;
    }
  }
}

document.addEventListener("keydown", (event) => {
  const tag = event.target.tagName;
  const typing = tag === "TEXTAREA" || tag === "INPUT" || tag === "SELECT";  // keys there are text, not shortcuts
  if (typing || event.ctrlKey || event.metaKey || event.altKey) return;
  if (event.key === "?") { $("help").hidden = !$("help").hidden; return; }
  const action = state.keys[event.key];
  if (action && state.item) {
    event.preventDefault();
    action();
  }
});
$("help-toggle").addEventListener("click", () => { $("help").hidden = !$("help").hidden; });
$("refresh").addEventListener("click", () => next().catch((e) => say(e.message)));
$("login-form").addEventListener("submit", (event) => {
  event.preventDefault();
  sessionStorage.setItem("raw_rm_token", $("token-input").value.trim());
  start();
});
start();
