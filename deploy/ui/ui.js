// What every page shares: building DOM from text (never from HTML strings), the API key of this tab,
// calls to the API with OpenAI-shaped errors, reading an SSE chat stream, and small SVG charts.

export const $ = (selector, root = document) => root.querySelector(selector);

// el("td", {class: "x"}, "text", child): strings become text nodes, so model output can never become markup.
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "class") node.className = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child !== undefined && child !== null) node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

// Keys live in this tab's sessionStorage: never in a URL, a cookie or a log line.
export function keyStore(kind) {
  const name = `ratchet.${kind}-key`;
  return {
    get: () => sessionStorage.getItem(name) || "",
    set: (value) => (value ? sessionStorage.setItem(name, value) : sessionStorage.removeItem(name)),
  };
}

export class ApiError extends Error {
  constructor(status, body) {
    super(body?.error?.message || `HTTP ${status}`);
    this.status = status;
    this.code = body?.error?.code || null;
  }
}

function headers(key, json) {
  const result = {};
  if (key) result.Authorization = `Bearer ${key}`;
  if (json) result["Content-Type"] = "application/json";
  return result;
}

export async function api(path, { key, method = "GET", body, signal } = {}) {
  const response = await fetch(path, {
    method,
    headers: headers(key, body !== undefined),
    body: body === undefined ? undefined : JSON.stringify(body),
    signal,
  });
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (!response.ok) throw new ApiError(response.status, data);
  return data;
}

// A file behind the admin key (a PNG, a report) as an object URL an <img> or a link can use.
export async function blobUrl(path, key) {
  const response = await fetch(path, { headers: headers(key, false) });
  if (!response.ok) throw new ApiError(response.status, await response.json().catch(() => null));
  return URL.createObjectURL(await response.blob());
}

// POST /v1/chat/completions with stream: true; yields each parsed chunk until `data: [DONE]`.
export async function* streamChat({ key, signal, ...request }) {
  const response = await fetch("/v1/chat/completions", {
    method: "POST",
    headers: headers(key, true),
    body: JSON.stringify({ ...request, stream: true, stream_options: { include_usage: true } }),
    signal,
  });
  if (!response.ok) throw new ApiError(response.status, await response.json().catch(() => null));
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data:")) continue;
        const data = line.slice(5).trim();
        if (data === "[DONE]") return;
        const chunk = JSON.parse(data);
        if (chunk.error) throw new ApiError(500, chunk);
        yield chunk;
      }
    }
  }
}

// One streamed answer: calls onText(text so far) as tokens arrive; resolves to {id, model, text, finish}.
export async function answer(request, onText) {
  const result = { id: null, model: null, text: "", finish: null, firstTokenMs: null };
  const started = performance.now();
  for await (const chunk of streamChat(request)) {
    result.id ??= chunk.id;
    result.model ??= chunk.model;
    const choice = chunk.choices?.[0];
    if (choice?.delta?.content) {
      result.firstTokenMs ??= performance.now() - started;
      result.text += choice.delta.content;
      onText(result.text);
    }
    if (choice?.finish_reason) result.finish = choice.finish_reason;
  }
  return result;
}

// The key box in the header: a password field, kept for this tab only.
export function keyBar(kind, label, onChange) {
  const store = keyStore(kind);
  const input = el("input", { type: "password", placeholder: label, autocomplete: "off", id: "key", value: store.get() });
  const save = () => {
    store.set(input.value.trim());
    onChange(store.get());
  };
  input.addEventListener("keydown", (event) => event.key === "Enter" && save());
  return {
    node: el("span", { class: "keybar" }, input, el("button", { onclick: save, id: "save-key" }, "Use key"),
      el("button", { class: "quiet", onclick: () => { input.value = ""; save(); } }, "Forget")),
    get: store.get,
  };
}

export function header(active, extra) {
  const link = (href, text) => el("a", { href, class: href === active ? "active" : null }, text);
  return el("header", {}, el("strong", {}, "ratchet"),
    el("nav", {}, link("/ui", "Playground"), link("/ui/arena", "Arena"), link("/ui/dashboard", "Dashboard")),
    extra);
}

// The name ratings are stored under (and the canary's sticky split follows): one per browser, not a secret.
export function userName() {
  let name = localStorage.getItem("ratchet.user");
  if (!name) {
    name = `web-${Math.random().toString(36).slice(2, 8)}`;
    localStorage.setItem("ratchet.user", name);
  }
  return name;
}

// Fill a <select> with /v1/models.
export async function fillModels(select, key, status) {
  try {
    const models = await api("/v1/models", { key });
    const chosen = select.value || "current";
    select.replaceChildren(...models.data.map((m) => el("option", { value: m.id, selected: m.id === chosen }, m.id)));
    status.replaceChildren();
  } catch (error) {
    showError(status, error.status === 401 ? new Error(`${error.message}: paste an API key above`) : error);
  }
}

// The sampling controls both chat pages show, and the request fields they set.
export function sampling() {
  const temperature = el("input", { id: "temperature", type: "number", min: 0, max: 2, step: 0.1, value: 0.7 });
  const maxTokens = el("input", { id: "max-tokens", type: "number", min: 1, max: 4096, value: 128 });
  return {
    labels: [el("label", {}, "temperature ", temperature), el("label", {}, "max tokens ", maxTokens)],
    params: () => ({ temperature: Number(temperature.value), max_tokens: Number(maxTokens.value) }),
  };
}

export function showError(target, error) {
  target.replaceChildren(el("div", { class: "error", role: "alert" }, error.message || String(error)));
}

export function when(seconds) {
  return new Date(seconds * 1000).toLocaleString();
}

export const pct = (x) => `${Math.round(x * 100)}%`;

// -- charts (plain SVG) -------------------------------------------------------------------------------
const SVG = "http://www.w3.org/2000/svg";
export const COLORS = ["#3465a4", "#f57900", "#4e9a06", "#cc0000", "#75507b", "#c4a000", "#06989a", "#888a85"];

function s(tag, attrs = {}, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, value);
  if (text !== undefined) node.textContent = text;
  return node;
}

function frame(width, height) {
  return s("svg", { viewBox: `0 0 ${width} ${height}`, width: "100%", role: "img", class: "chart" });
}

function legend(names) {
  return el("div", { class: "legend" }, names.map((name, i) => {
    const swatch = el("i");
    swatch.style.background = COLORS[i % COLORS.length]; // CSSOM, which the page's CSP allows (a style attribute it would not)
    return el("span", {}, swatch, name);
  }));
}

// Stacked bars: one bar per bucket, one colour per series; marks = [{x: bucket index, label}].
export function stackedBars(labels, series, marks = []) {
  const width = 720, height = 200, left = 36, bottom = 22;
  const names = Object.keys(series);
  const totals = labels.map((_, i) => names.reduce((sum, name) => sum + series[name][i], 0));
  const top = Math.max(1, ...totals);
  const svg = frame(width, height);
  const step = (width - left) / Math.max(1, labels.length);
  const y = (v) => (height - bottom) * (1 - v / top);
  svg.append(s("text", { x: 2, y: 12, class: "axis" }, String(top)), s("text", { x: 2, y: height - bottom, class: "axis" }, "0"));
  labels.forEach((label, i) => {
    let base = 0;
    names.forEach((name, j) => {
      const value = series[name][i];
      if (!value) return;
      const rect = s("rect", { x: left + i * step + 1, y: y(base + value), width: Math.max(1, step - 2),
        height: y(base) - y(base + value), fill: COLORS[j % COLORS.length] });
      rect.append(s("title", {}, `${label}: ${name} ${value}`));
      svg.append(rect);
      base += value;
    });
    if (i % Math.ceil(labels.length / 8) === 0) svg.append(s("text", { x: left + i * step, y: height - 6, class: "axis" }, label));
  });
  for (const mark of marks) {
    const x = left + (mark.x + 0.5) * step;
    const line = s("line", { x1: x, x2: x, y1: 0, y2: height - bottom, class: `mark ${mark.kind}` });
    line.append(s("title", {}, mark.label));
    svg.append(line);
  }
  return el("div", {}, svg, legend(names));
}

// Horizontal intervals: [{label, estimate, low, high, text}], on a 0-100 % axis.
export function intervals(rows) {
  const width = 720, rowHeight = 26, left = 150, right = 120;
  const height = rowHeight * rows.length + 24;
  const svg = frame(width, height);
  const x = (v) => left + v * (width - left - right);
  for (const tick of [0, 0.25, 0.5, 0.75, 1]) {
    svg.append(s("line", { x1: x(tick), x2: x(tick), y1: 0, y2: height - 18, class: "grid" }),
      s("text", { x: x(tick) - 10, y: height - 4, class: "axis" }, pct(tick)));
  }
  rows.forEach((row, i) => {
    const cy = i * rowHeight + 14;
    svg.append(s("text", { x: 4, y: cy + 4, class: "label" }, row.label),
      s("line", { x1: x(row.low), x2: x(row.high), y1: cy, y2: cy, stroke: COLORS[i % COLORS.length], "stroke-width": 3 }),
      s("circle", { cx: x(row.estimate), cy, r: 5, fill: COLORS[i % COLORS.length] }),
      s("text", { x: width - right + 8, y: cy + 4, class: "label" }, row.text));
  });
  return svg;
}

// Lines over a shared x: series = {name: [[x, y], ...]}.
export function lines(series, { xLabel = "step" } = {}) {
  const width = 720, height = 220, left = 48, bottom = 24;
  const names = Object.keys(series).filter((name) => series[name].length);
  const points = names.flatMap((name) => series[name]);
  const svg = frame(width, height);
  if (!points.length) return el("p", { class: "muted" }, "no steps yet");
  const xs = points.map((p) => p[0]), ys = points.map((p) => p[1]);
  const [x0, x1] = [Math.min(...xs), Math.max(...xs) || 1], [y0, y1] = [Math.min(...ys), Math.max(...ys)];
  const x = (v) => left + ((v - x0) / (x1 - x0 || 1)) * (width - left - 8);
  const y = (v) => 6 + (1 - (v - y0) / (y1 - y0 || 1)) * (height - bottom - 12);
  svg.append(s("text", { x: 2, y: 14, class: "axis" }, y1.toPrecision(3)),
    s("text", { x: 2, y: height - bottom, class: "axis" }, y0.toPrecision(3)),
    s("text", { x: width - 60, y: height - 6, class: "axis" }, `${xLabel} ${x1}`));
  names.forEach((name, i) => {
    const d = series[name].map(([a, b], k) => `${k ? "L" : "M"}${x(a).toFixed(1)},${y(b).toFixed(1)}`).join("");
    svg.append(s("path", { d, fill: "none", stroke: COLORS[i % COLORS.length], "stroke-width": 2 }));
  });
  return el("div", {}, svg, legend(names));
}
