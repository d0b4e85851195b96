// The playground: chat with current, base or any adapter, and rate every answer through /v1/feedback.
import { $, el, api, answer, keyBar, header, fillModels, userName, sampling } from "/ui/assets/ui.js";

const conversation = []; // OpenAI messages of this chat
let running = null; // the AbortController of the answer being streamed

// The rating panel under one answer: thumbs or a 1-5 score, a comment, a correction.
export function ratingPanel(completionId, key) {
  const state = { rating: null, score: null };
  const result = el("span", { class: "saved", "aria-live": "polite" });
  const comment = el("input", { type: "text", placeholder: "comment (optional)", class: "comment" });
  const correction = el("textarea", { rows: 3, placeholder: "the answer you wanted (optional)", class: "correction" });
  const thumbs = [1, -1].map((value) => el("button", {
    class: "thumb", title: value > 0 ? "good answer" : "bad answer", "data-rating": value,
    onclick: () => choose({ rating: value, score: null }),
  }, value > 0 ? "▲ good" : "▼ bad"));
  const scores = [1, 2, 3, 4, 5].map((value) => el("button", {
    class: "score", "data-score": value, title: `score ${value} of 5`, onclick: () => choose({ rating: null, score: value }),
  }, String(value)));
  const send = el("button", { class: "send-rating", onclick: () => post() }, "Save comment / correction");

  function choose(judgement) {
    Object.assign(state, judgement);
    for (const b of thumbs) b.classList.toggle("on", Number(b.dataset.rating) === state.rating);
    for (const b of scores) b.classList.toggle("on", Number(b.dataset.score) === state.score);
    post();
  }

  async function post() {
    if (state.rating === null && state.score === null) {
      if (!correction.value.trim()) return void (result.textContent = "choose good, bad or a score first");
      state.rating = -1; // a correction says the answer was not the one wanted
      thumbs[1].classList.add("on");
    }
    const body = { completion_id: completionId, user: userName() };
    if (state.rating !== null) body.rating = state.rating;
    else body.score = state.score;
    if (comment.value.trim()) body.comment = comment.value.trim();
    if (correction.value.trim()) body.correction = correction.value;
    try {
      const saved = await api("/v1/feedback", { key: key(), method: "POST", body });
      result.textContent = `saved (${saved.id})`;
    } catch (error) {
      result.textContent = `not saved: ${error.message}`;
      result.classList.add("error");
    }
  }

  return el("div", { class: "rate" },
    el("div", { class: "row" }, ...thumbs, el("span", { class: "muted" }, "or"), ...scores, result),
    el("details", {}, el("summary", {}, "comment or correct"), comment, correction, send));
}

function bubble(role, text) {
  return el("div", { class: `msg ${role}` }, el("div", { class: "who" }, role), el("div", { class: "text" }, text));
}

async function ask(ui, key) {
  const prompt = ui.prompt.value.trim();
  if (!prompt || running) return;
  ui.prompt.value = "";
  conversation.push({ role: "user", content: prompt });
  ui.transcript.append(bubble("user", prompt));
  const reply = bubble("assistant", "");
  const meta = el("div", { class: "meta muted" }, "…");
  reply.append(meta);
  ui.transcript.append(reply);
  running = new AbortController();
  ui.stop.disabled = false;
  try {
    const result = await answer({
      key: key(), signal: running.signal, model: ui.model.value, messages: conversation, user: userName(),
      ...ui.sampling.params(),
    }, (text) => { $(".text", reply).textContent = text; });
    conversation.push({ role: "assistant", content: result.text });
    meta.replaceChildren("answered by ", el("code", { class: "answered-by" }, result.model), " · ",
      el("code", { class: "completion-id" }, result.id), ` · ${result.finish}`);
    reply.append(ratingPanel(result.id, key));
  } catch (error) {
    conversation.pop();
    meta.replaceChildren(el("span", { class: "error" }, error.name === "AbortError" ? "stopped" : error.message));
  } finally {
    running = null;
    ui.stop.disabled = true;
  }
}

function main() {
  const status = el("div", { id: "status" });
  const ui = {
    model: el("select", { id: "model", "aria-label": "model" }),
    sampling: sampling(),
    transcript: el("div", { id: "transcript" }),
    prompt: el("textarea", { id: "prompt", rows: 3, placeholder: "Ask something (Enter sends, Shift+Enter: new line)" }),
    stop: el("button", { id: "stop", disabled: true, onclick: () => running?.abort() }, "Stop"),
  };
  const keys = keyBar("chat", "API key (when the server has keys)", (key) => fillModels(ui.model, key, status));
  const send = el("button", { id: "send", class: "primary", onclick: () => ask(ui, keys.get) }, "Send");
  ui.prompt.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey) {
      event.preventDefault();
      ask(ui, keys.get);
    }
  });
  const reset = () => { conversation.length = 0; ui.transcript.replaceChildren(); };
  $("#app").append(header("/ui", keys.node), el("main", {},
    el("div", { class: "controls" },
      el("label", {}, "model ", ui.model), ...ui.sampling.labels, el("span", { class: "muted" }, `you are ${userName()}`),
      el("button", { class: "quiet", onclick: reset }, "New chat")),
    status, ui.transcript, el("div", { class: "composer" }, ui.prompt, send, ui.stop)));
  fillModels(ui.model, keys.get(), status);
}

main();
