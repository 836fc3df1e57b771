"use strict";
// The admin page: progress, agreement and plots (fetched with the admin key, shown as blobs), adding annotators,
// exporting training data. The key comes from the URL fragment (#key=...) when the server has one.
const $ = (id) => document.getElementById(id);
let key = null;
const match = /(?:^|[#&])key=([^&]+)/.exec(location.hash);
if (match) {
  sessionStorage.setItem("raw_rm_admin_key", decodeURIComponent(match[1]));
  history.replaceState(null, "", location.pathname);
}
key = sessionStorage.getItem("raw_rm_admin_key");

async function call(path, options = {}) {
  const headers = key ? { Authorization: `Bearer ${key}` } : {};
  if (options.body) headers["Content-Type"] = "application/json";
  const response = await fetch(path, { ...options, headers });
  if (!response.ok) {
    const data = await response.json().catch(() => ({}));
    throw new Error(data.error || `HTTP ${response.status}`);
  }
  return response;
}

const element = (tag, properties) => Object.assign(document.createElement(tag), properties);
const pct = (v) => (v === null || v === undefined ? "n/a" : `${(100 * v).toFixed(1)}%`);
const num = (v) => (v === null || v === undefined ? "n/a" : v.toFixed(3));
const ci = (c, f) => (c && c[0] !== null ? ` [${f(c[0])}, ${f(c[1])}]` : "");

function cells(row, values, cls = []) {
  values.forEach((v, i) => {
    const td = document.createElement("td");
    td.textContent = v;
    if (cls[i]) td.className = cls[i];
    row.appendChild(td);
  });
}

function show(summary) {
  const p = summary.progress;
  const a = summary.agreement;
  $("totals").textContent = `${p.items} items, ${p.items_complete} complete (${p.per_item} annotators each), ` +
    `${p.items_started} started, ${p.judgements} judgements`;
  const body = $("progress-table").tBodies[0];
  body.replaceChildren();
  for (const r of p.annotators) {
    const m = a.with_majority[r.name];
    const row = body.insertRow();
    cells(row, [r.name, r.judged, r.skipped, r.open_leases, m ? `${m.agree}/${m.n} = ${pct(m.share)}` : "n/a",
                a.flags[r.name] || ""], [null, null, null, null, null, "flag"]);
  }
  const lines = [
    `${a.n_comparisons} comparisons of ${a.n_items} items judged by two or more annotators`,
    `raw agreement ${pct(a.raw_agreement)}${ci(a.raw_agreement_ci, pct)}`,
    `Krippendorff's alpha: nominal ${num(a.alpha_nominal)}${ci(a.alpha_nominal_ci, num)}, ` +
      `ordinal ${num(a.alpha_ordinal)}`,
  ];
  if (a.model) {
    lines.push(`reward model ${summary.settings.model}: agrees with the majority ${a.model.majority.agree}/` +
      `${a.model.majority.n} = ${pct(a.model.majority.share)}${ci(a.model_ci, pct)}; human ceiling ` +
      `${pct(a.ceiling.share)}${ci(a.ceiling_ci, pct)}`);
  }
  for (const [name, v] of Object.entries(summary.aspects)) {
    lines.push(`aspect ${name}: raw agreement ${pct(v.raw_agreement)}, alpha ${num(v.alpha_nominal)}`);
  }
  $("agreement").replaceChildren(...lines.map((text) => element("li", { textContent: text })));
  const kb = $("kappa-table").tBodies[0];
  kb.replaceChildren();
  for (const k of a.kappas) {
    cells(kb.insertRow(), [`${k.a} / ${k.b}`, `${k.agree} (${pct(k.agree / k.n)})`, num(k.kappa), k.n]);
  }
  $("updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
}

async function plot(name) {
  const blob = await (await call(`/api/admin/plot/${name}.png`)).blob();
  const img = $(`plot-${name}`);
  if (img.src) URL.revokeObjectURL(img.src);
  img.src = URL.createObjectURL(blob);
}

async function refresh() {
  try {
    show(await (await call("/api/admin/summary")).json());
    await Promise.all(["progress", "agreement", "kappa"].map(plot));
    $("message").textContent = "";
  } catch (error) {
    $("message").textContent = error.message;
  }
}

$("add-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  try {
    const body = JSON.stringify({ name: $("add-name").value.trim() });
    const made = await (await call("/api/admin/annotators", { method: "POST", body })).json();
    const link = `${location.origin}/annotate#token=${made.token}`;
    $("add-result").replaceChildren("Send this link to ", made.name, " (shown once): ",
                                    element("code", { textContent: link }));
    $("add-name").value = "";
    refresh();
  } catch (error) {
    $("add-result").textContent = error.message;
  }
});

document.querySelectorAll("[data-export]").forEach((b) => b.addEventListener("click", async () => {
  try {
    const blob = await (await call(`/api/admin/export?as=${b.dataset.export}`)).blob();
    const a = element("a", { href: URL.createObjectURL(blob), download: `labels-${b.dataset.export}.jsonl` });
    a.click();
  } catch (error) {
    $("message").textContent = error.message;
  }
}));

refresh();
setInterval(refresh, 15000);
