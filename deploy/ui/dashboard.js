// The dashboard (admin key): what is served, the canary's live test, the adapter timeline with each gate
// verdict, ratings over time, liked share per adapter, the loop's decisions, fine-tuning jobs with their
// curves, and the latest ratings. It polls the admin API every REFRESH_MS; the server sends aggregates
// and pages, never every rating.
import { $, el, api, blobUrl, keyBar, header, showError, when, pct, stackedBars, intervals, lines } from "/ui/assets/ui.js";

const REFRESH_MS = 5000;
const view = { adaptersBefore: null, ratingsBefore: null, job: null, promote: null, timer: null }; // survives each refresh
let keys;

const card = (id, title, ...body) => el("section", { class: "card", id }, el("h2", {}, title), ...body);
const badge = (text, kind = text) => el("span", { class: `badge ${kind}` }, text);
const admin = (path, options = {}) => api(path, { key: keys.get(), ...options });
// A decision's why: its reason or error, else the gate's failed checks (all its checks when none failed).
const why = (d) => d.reason || d.error || ((d.reasons || []).filter((r) => r.startsWith("FAILED")).join("; ") || (d.reasons || []).join("; "));
// The numbers a check or a canary test decided with, on one line (nested objects flattened: counts.canary.up=12).
const numbersText = (numbers, prefix = "") => Object.entries(numbers || {}).flatMap(([k, v]) => v === null || v === undefined ? []
  : typeof v === "object" ? [numbersText(v, `${prefix}${k}.`)] : [`${prefix}${k}=${typeof v === "number" && !Number.isInteger(v) ? Number(v.toPrecision(3)) : v}`])
  .filter(Boolean).join(", ");
// A decision's evidence (deploy/status.py's explain): each gate check, or the canary's test, a line each.
function evidence(d) {
  const e = d.evidence || {};
  const lines = (e.gate || []).map((c) => [c.passed ? "ok" : "FAILED", `${c.name}: ${numbersText(c.numbers)}`, c.test]);
  if (e.canary) {
    const { test, ...numbers } = e.canary;
    lines.push(["canary:", numbersText(numbers), test]);
  }
  return el("div", { class: "evidence" }, lines.map(([mark, text, test]) =>
    el("div", { class: "check muted", title: test || "" }, `${mark} ${text}`)));
}

function served(status) {
  const canary = status.canary;
  const rows = [
    ["current", el("code", { id: "current" }, status.current || "base")],
    ["previous", status.previous ? el("code", {}, status.previous) : "none"],
    ["engine", `${status.engine} on ${status.base_model}`],
    ["loop", `${status.loop?.state || "stopped"}`],
  ];
  const body = [el("table", { class: "kv" }, rows.map(([k, v]) => el("tr", {}, el("th", {}, k), el("td", {}, v))))];
  if (canary) {
    const test = canary.test || {};
    const arm = (name, counts, interval) => el("tr", {}, el("th", {}, name), el("td", {}, `${counts.up}/${counts.n} liked`),
      el("td", {}, interval ? `${pct(interval.estimate)} (95 % ${pct(interval.low)}–${pct(interval.high)})` : ""));
    body.push(el("h3", {}, "Canary ", el("code", { id: "canary" }, canary.adapter), ` on ${pct(canary.fraction)} of current's traffic`),
      el("table", { class: "kv" }, arm("canary", canary.ratings.canary, test.stats?.candidate),
        arm("current", canary.ratings.current, test.stats?.control)),
      el("p", {}, badge(test.action || "wait"), " ", test.reason || ""));
  }
  const last = status.loop?.last_decision;
  if (last) body.push(el("p", { class: "muted" }, `last loop decision: ${last.action} ${last.adapter || ""} — ${why(last)}`));
  return body;
}

// `names`: every servable adapter (/v1/models) and the newest page of the timeline (rejected ones too, for force).
function actions(status, names) {
  const choice = el("select", { id: "promote-adapter", "aria-label": "adapter to promote", onchange: () => { view.promote = choice.value; } },
    ["base", ...names].map((name) => el("option", { value: name, selected: name === view.promote }, name)));
  const act = async (question, path, body) => {
    if (!window.confirm(question)) return;
    try {
      await admin(path, { method: "POST", body });
      await refresh();
    } catch (error) {
      showError($("#action-status"), error);
    }
  };
  const force = el("input", { type: "checkbox", id: "force" });
  return el("div", { class: "actions" },
    choice, el("label", { class: "muted" }, force, " force (a rejected adapter)"),
    el("button", { id: "promote", class: "primary", onclick: () => act(`Promote ${choice.value} to all traffic now?`,
      "/admin/promote", { adapter: choice.value, force: force.checked, reason: "dashboard" }) }, "Promote"),
    el("button", { id: "rollback", disabled: !status.previous, onclick: () => act(`Roll back to ${status.previous}?`,
      "/admin/rollback", { reason: "dashboard" }) }, "Roll back"),
    status.canary ? el("button", { id: "stop-canary", class: "danger", onclick: () => act(`Stop the canary ${status.canary.adapter} and reject it?`,
      "/admin/canary/abort", { reason: "stopped from the dashboard" }) }, "Stop canary") : null,
    el("div", { id: "action-status" }));
}

function counts(c) {
  const item = (label, value) => el("div", { class: "count" }, el("b", {}, String(value)), el("span", {}, label));
  return el("div", { class: "counts" }, item("completions", c.completions), item("ratings", c.ratings.total),
    item("▲ good", c.ratings.up), item("▼ bad", c.ratings.down), item("scores", c.ratings.scores),
    item("comparisons", c.comparisons), item("people", c.users));
}

function charts(stats) {
  const { hours, series } = stats.ratings_per_hour;
  const labels = hours.map((h) => new Date(h * 1000).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" }));
  const first = hours[0], last = hours[hours.length - 1] + 3600;
  const marks = stats.decisions.filter((d) => d.at >= first && d.at < last && d.action !== "wait")
    .map((d) => ({ x: Math.floor((d.at - first) / 3600), kind: d.action, label: `${d.action} ${d.adapter || ""}: ${why(d)}` }));
  const liked = stats.liked.map((r) => ({ ...r, label: r.adapter, text: `${pct(r.estimate)} of ${r.n}` }));
  return [el("h3", {}, `Ratings per hour by adapter (last ${hours.length} h; lines mark the loop's decisions)`),
    Object.keys(series).length ? stackedBars(labels, series, marks) : el("p", { class: "muted" }, "no ratings in this window"),
    el("h3", {}, "Liked share per adapter (95 % interval)"),
    liked.length ? intervals(liked) : el("p", { class: "muted" }, "no thumbs or scores yet")];
}

function decisionTable(items) {
  const recent = [...items].reverse().slice(0, 20);
  if (!recent.length) return el("p", { class: "muted" }, "the loop has not decided anything yet");
  return el("table", { class: "list", id: "decisions" }, el("tr", {}, ["when", "decision", "adapter", "why", "numbers"].map((h) => el("th", {}, h))),
    recent.map((d) => el("tr", {}, el("td", {}, when(d.at)), el("td", {}, badge(d.action)), el("td", {}, d.adapter || ""),
      el("td", {}, why(d)), el("td", {}, evidence(d)))));
}

async function showFiles(adapter, target) {
  target.replaceChildren(el("h3", {}, `${adapter.name}: report and curves`));
  for (const file of adapter.report_files) {
    const path = `/admin/adapters/${adapter.name}/files/${file}`;
    try {
      if (file.endsWith(".png")) target.append(el("img", { src: await blobUrl(path, keys.get()), alt: `${adapter.name} ${file}` }));
      else target.append(el("pre", { class: "report" }, await (await fetch(await blobUrl(path, keys.get()))).text()));
    } catch (error) {
      target.append(el("p", { class: "error" }, `${file}: ${error.message}`));
    }
  }
  if (!adapter.report_files.length) target.append(el("p", { class: "muted" }, "no report or loss plot for this adapter"));
}

function adapterRows(page) {
  return page.data.map((a) => {
    const snapshot = a.data_snapshot || {};
    const size = snapshot.counts ? `${snapshot.counts.train} train + ${snapshot.counts.heldout} held out` : "";
    const verdict = a.decision ? el("div", {}, badge(a.decision.verdict),
      (a.decision.reasons || []).map((line) => el("div", { class: "check" }, line)),
      evidence({ evidence: a.decision.evidence || { gate: a.decision.checks } })) : el("span", { class: "muted" }, "not judged");
    return el("tr", { "data-adapter": a.name }, el("td", {}, el("code", {}, a.name)), el("td", {}, badge(a.status)),
      el("td", {}, a.method), el("td", {}, a.parent || "base"), el("td", {}, a.created), el("td", {}, size), el("td", {}, verdict),
      el("td", {}, el("button", { class: "quiet", onclick: () => showFiles(a, $("#adapter-files")) }, "report")));
  });
}

// A list with an "older" button that appends the next page (fetched by `next(last item)`) until none is left.
function paged(table, rowsOf, page, next, id) {
  table.querySelector("tbody").append(...rowsOf(page));
  if (!page.has_more) return [table];
  const more = el("button", { id, onclick: async () => {
    page = await next(page.data[page.data.length - 1]);
    table.querySelector("tbody").append(...rowsOf(page));
    if (!page.has_more) more.remove();
  } }, "older");
  return [table, more];
}

const listTable = (id, heads) => el("table", { class: "list", id }, el("thead", {}, el("tr", {}, heads.map((h) => el("th", {}, h)))), el("tbody"));

function timeline(page) {
  return paged(listTable("adapters", ["adapter", "status", "method", "parent", "created", "data", "gate verdict", ""]),
    adapterRows, page, (last) => { view.adaptersBefore = last.number; return admin(`/admin/adapters?limit=20&before=${last.number}`); },
    "older-adapters");
}

async function jobs() {
  const page = await admin("/v1/fine_tuning/jobs?limit=10");
  if (!page.data.length) return [el("p", { class: "muted" }, "no fine-tuning jobs yet")];
  view.job ??= page.data[0].id;
  const rows = page.data.map((j) => el("tr", { class: j.id === view.job ? "selected" : null },
    el("td", {}, el("button", { class: "quiet", onclick: () => { view.job = j.id; refresh(); } }, j.id)),
    el("td", {}, badge(j.status)), el("td", {}, j.method?.type || ""), el("td", {}, j.model), el("td", {}, j.fine_tuned_model || ""),
    el("td", {}, when(j.created_at)), el("td", {}, j.error?.message || "")));
  const metrics = await admin(`/admin/jobs/${view.job}/metrics`);
  const series = {};
  for (const row of metrics.data) {
    for (const name of ["loss", "reward"]) {
      if (row[name] === undefined) continue;
      (series[`${row.split} ${name}`] ??= []).push([row.step, row[name]]);
    }
  }
  return [el("table", { class: "list", id: "jobs" }, el("tr", {}, ["job", "status", "method", "from", "adapter", "created", ""].map((h) => el("th", {}, h))), rows),
    el("h3", {}, `Training curve of ${view.job}`), lines(series)];
}

function ratingRows(page) {
  return page.data.map((r) => el("tr", {}, el("td", {}, when(r.created)), el("td", {}, el("code", {}, r.adapter)),
    el("td", {}, r.rating === 1 ? "▲ good" : r.rating === -1 ? "▼ bad" : `${r.score}/5`), el("td", { class: "prompt" }, r.prompt),
    el("td", { class: "answer" }, r.answer), el("td", {}, [r.comment, r.correction && `correction: ${r.correction}`].filter(Boolean).join(" · "))));
}

function ratings(page) {
  return paged(listTable("ratings", ["when", "adapter", "rating", "prompt", "answer", "comment"]), ratingRows, page,
    (last) => { view.ratingsBefore = last.created; return admin(`/admin/ratings?limit=20&before=${last.created}`); },
    "older-ratings");
}

async function refresh() {
  const target = $("#board");
  try {
    const [status, stats, adapters, models, rated] = await Promise.all([admin("/admin/status"), admin("/admin/stats?hours=48"),
      admin("/admin/adapters?limit=20"), admin("/v1/models"), view.ratingsBefore === null ? admin("/admin/ratings?limit=20") : null]);
    const names = [...new Set([...models.data.map((m) => m.id), ...adapters.data.map((a) => a.name)])]
      .filter((name) => !["current", "base"].includes(name)).sort().reverse();
    const sections = [
      card("served", "Served now", ...served(status), actions(status, names)),
      card("numbers", "Feedback", counts(status.counts), ...charts(stats)),
      card("loop", "The loop's decisions", decisionTable(stats.decisions)),
      view.adaptersBefore === null ? card("timeline", "Adapters", ...timeline(adapters)) : $("#timeline"),
      card("training", "Fine-tuning jobs", ...(await jobs())),
      rated ? card("feedback", "Latest ratings", ...ratings(rated)) : $("#feedback"),
    ];
    target.replaceChildren(...sections);
    $("#updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
    $("#status").replaceChildren();
  } catch (error) {
    target.replaceChildren();
    showError($("#status"), error.status === 401 ? new Error(`${error.message}: paste the admin key above`) : error);
  }
}

function main() {
  keys = keyBar("admin", "admin key (<home>/admin.key)", () => refresh());
  $("#app").append(header("/ui/dashboard", keys.node),
    el("main", {}, el("div", { class: "muted", id: "updated" }), el("div", { id: "status" }), el("div", { id: "board" }),
      el("section", { class: "card", id: "adapter-files" })));
  if (keys.get()) refresh();
  else showError($("#status"), new Error("the dashboard needs the admin key: paste it above (it stays in this tab only)"));
  view.timer = setInterval(() => keys.get() && !document.hidden && refresh(), REFRESH_MS);
}

main();
