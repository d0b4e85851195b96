// The arena: one prompt, two models answering side by side, names hidden until the vote (A, B or tie),
// which goes to /v1/comparisons. The names are not in the page at all before the vote.
import { $, el, api, answer, keyBar, header, fillModels, userName, showError, sampling } from "/ui/assets/ui.js";

// Each side a pinned model or, left on random, a random one different from the other side.
function pickPair(select, pinned) {
  let names = [...select.options].map((o) => o.value).filter(Boolean);
  const named = names.filter((name) => name !== "current"); // "current" is one of them under another name
  if (named.length >= 2) names = named;
  if (names.length < 2) throw new Error("the arena needs two models: register an adapter first");
  const pair = [...pinned];
  for (const i of [0, 1]) {
    if (pair[i]) continue;
    const choices = names.filter((name) => name !== pair[1 - i]);
    pair[i] = choices[Math.floor(Math.random() * choices.length)];
  }
  return pair;
}

function side(label) {
  const text = el("div", { class: "text" });
  const meta = el("div", { class: "meta muted" }, "…");
  return { node: el("section", { class: "side", id: `side-${label.toLowerCase()}` }, el("h3", {}, `Model ${label}`), text, meta), text, meta };
}

async function battle(ui, key) {
  const prompt = ui.prompt.value.trim();
  if (!prompt) return;
  let pair;
  try {
    pair = pickPair(ui.pinA, [ui.pinA.value, ui.pinB.value]);
  } catch (error) {
    return showError(ui.status, error);
  }
  ui.status.replaceChildren();
  const sides = [side("A"), side("B")];
  ui.board.replaceChildren(...sides.map((s) => s.node));
  ui.votes.replaceChildren();
  ui.ask.disabled = true;
  const request = (model) => ({
    key: key(), model, messages: [{ role: "user", content: prompt }], user: userName(), ...ui.sampling.params(),
  });
  try {
    const results = await Promise.all(pair.map((model, i) =>
      answer(request(model), (text) => { sides[i].text.textContent = text; })));
    sides.forEach((s) => s.meta.replaceChildren("answered; vote to see which model it was"));
    const vote = (winner) => castVote(ui, key, results, sides, winner);
    ui.votes.append(
      el("button", { id: "vote-a", onclick: () => vote(results[0].id) }, "A is better"),
      el("button", { id: "vote-tie", onclick: () => vote("tie") }, "Tie"),
      el("button", { id: "vote-b", onclick: () => vote(results[1].id) }, "B is better"));
  } catch (error) {
    showError(ui.status, error);
  } finally {
    ui.ask.disabled = false;
  }
}

async function castVote(ui, key, results, sides, winner) {
  try {
    const saved = await api("/v1/comparisons", {
      key: key(), method: "POST", body: { completion_ids: results.map((r) => r.id), winner, user: userName() },
    });
    const same = results[0].model === results[1].model ? " · both answers came from the same model" : "";
    ui.votes.replaceChildren(el("span", { class: "saved" }, `vote saved (${saved.id})${same}`));
    results.forEach((r, i) => sides[i].meta.replaceChildren("model ", el("code", { class: "answered-by" }, r.model),
      " · ", el("code", { class: "completion-id" }, r.id), winner === r.id ? " · winner" : ""));
  } catch (error) {
    showError(ui.status, error);
  }
}

function main() {
  const ui = {
    status: el("div", { id: "status" }),
    pinA: el("select", { id: "model-a", "aria-label": "model A" }),
    pinB: el("select", { id: "model-b", "aria-label": "model B" }),
    sampling: sampling(),
    prompt: el("textarea", { id: "prompt", rows: 3, placeholder: "One prompt, two blind answers" }),
    board: el("div", { class: "board" }),
    votes: el("div", { class: "votes" }),
  };
  const load = async (key) => {
    await fillModels(ui.pinA, key, ui.status);
    ui.pinB.replaceChildren(...[...ui.pinA.options].map((o) => el("option", { value: o.value }, o.value)));
    for (const select of [ui.pinA, ui.pinB]) select.prepend(el("option", { value: "", selected: true }, "random"));
    ui.pinA.value = ui.pinB.value = "";
  };
  const keys = keyBar("chat", "API key (when the server has keys)", load);
  ui.ask = el("button", { id: "ask", class: "primary", onclick: () => battle(ui, keys.get) }, "Ask both");
  $("#app").append(header("/ui/arena", keys.node), el("main", {},
    el("p", { class: "muted" }, "Two models answer; their names stay hidden until you vote. Leave both on random for a blind pair."),
    el("div", { class: "controls" }, el("label", {}, "A ", ui.pinA), el("label", {}, "B ", ui.pinB), ...ui.sampling.labels),
    ui.status, el("div", { class: "composer" }, ui.prompt, ui.ask), ui.board, ui.votes));
  load(keys.get());
}

main();
