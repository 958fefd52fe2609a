"use strict";
// The playground page (GET /ui). Every figure on it comes from the router's own API:
// /v1/models (policies, targets, prices), /v1/router/route (the decision as you type),
// /v1/chat/completions (send, compare) and /v1/router/stats (traffic, calibration, quality curve).
// Prompts and model output are only ever written with textContent: nothing is parsed as HTML.

const KEY_STORAGE = "llm-router-playground-key"; // sessionStorage: gone when the tab closes
const SVG = "http://www.w3.org/2000/svg";
const page = { policies: new Map(), targets: new Map(), stats: null, decisionSeq: 0, typingTimer: null, answerId: null };

const $ = (selector) => document.querySelector(selector);
const pct = (x, digits = 0) => (x == null || Number.isNaN(x) ? "–" : `${(100 * x).toFixed(digits)}%`);
const usd = (x) => (x == null || Number.isNaN(x) ? "–" : `$${x.toFixed(8)}`);

function field(container, name, value) {
  container.querySelector(`[data-field="${name}"]`).textContent = value == null || value === "" ? "–" : String(value);
}

function showError(message) {
  const el = $("#error");
  el.textContent = message || "";
  el.hidden = !message;
}

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = sessionStorage.getItem(KEY_STORAGE);
  if (key) h.Authorization = `Bearer ${key}`;
  return h;
}

// fetch, with the router's OpenAI-style error turned into an Error carrying its message.
async function api(path, body) {
  const init = body === undefined ? { headers: headers() } : { method: "POST", headers: headers(), body: JSON.stringify(body) };
  const resp = await fetch(path, init);
  if (!resp.ok) {
    let message = `${resp.status} ${resp.statusText}`;
    try {
      const error = (await resp.json()).error;
      if (error && error.message) message = `${resp.status} ${error.code || error.type}: ${error.message}`;
    } catch (_) { /* not JSON: keep the status line */ }
    if (resp.status === 401) message += " Enter an API key above.";
    throw new Error(message);
  }
  return resp;
}

function currentPolicy() {
  return page.policies.get($("#policy").value) || null;
}

function maxTokens() {
  const n = Number($("#max-tokens").value);
  return Number.isInteger(n) && n > 0 ? n : 64;
}

// The chat body for the prompt as typed, with the slider's strong share when it overrides the policy's.
function chatBody(model, extra = {}) {
  const body = { model, messages: [{ role: "user", content: $("#prompt").value }], ...extra };
  const temperature = $("#temperature").value;
  if (temperature !== "") body.temperature = Number(temperature);
  if (model === $("#policy").value && $("#share-override").checked) {
    body.router = { strong_share: Number($("#share").value) / 100 };
  }
  return body;
}

// --- policies and targets ---------------------------------------------------------------------
async function loadModels() {
  const models = (await (await api("/v1/models")).json()).data;
  const select = $("#policy");
  const previous = select.value;
  page.policies.clear();
  page.targets.clear();
  select.replaceChildren();
  for (const m of models) {
    if (m.router.kind === "policy") {
      page.policies.set(m.id, m.router);
      select.append(new Option(`${m.id} (${m.router.policy_kind})`, m.id));
    } else {
      page.targets.set(m.id, m.router);
    }
  }
  if (page.policies.has(previous)) select.value = previous;
  policyChanged();
}

function policyChanged() {
  const p = currentPolicy();
  if (!p) return;
  const byShare = p.policy_kind === "threshold";
  $("#share-override").disabled = !byShare;
  if (!byShare) $("#share-override").checked = false;
  $("#share").disabled = !$("#share-override").checked;
  const setting = p.strong_share != null ? `top ${pct(p.strong_share)} strong` :
    p.quality != null ? `keep ${pct(p.quality)} of the strong model's quality` :
    p.threshold != null ? `strong if score ≥ ${p.threshold}` : p.tiers ? `${p.tiers.length} tiers` : "";
  $("#policy-info").textContent = `${p.targets.join(" → ")}${setting ? "; " + setting : ""}; classifier ${p.classifier}`;
  if (!$("#share-override").checked) {
    const share = operatingShare();
    $("#share").value = share == null ? 0 : Math.round(share * 100);
  }
  $("#share-value").textContent = `${$("#share").value}%`;
  drawScale();
  drawCurve();
  decideSoon(0);
}

// --- the decision, as the prompt is typed -------------------------------------------------------
function decideSoon(delayMs = 250) {
  clearTimeout(page.typingTimer);
  page.typingTimer = setTimeout(decide, delayMs);
}

async function decide() {
  const seq = ++page.decisionSeq;
  const el = $("#decision");
  if (!$("#prompt").value.trim()) {
    for (const dd of el.querySelectorAll("dd")) dd.textContent = "–";
    return;
  }
  try {
    const d = await (await api("/v1/router/route", chatBody($("#policy").value))).json();
    if (seq !== page.decisionSeq) return; // a newer keystroke's decision is on its way
    showError("");
    field(el, "target", d.target);
    field(el, "reason", d.reason);
    field(el, "score", d.score == null ? null : d.score.toFixed(4));
    field(el, "score_strong_share", pct(d.score_strong_share, 1));
    field(el, "cut", d.strong_share != null ? `strong if in the top ${pct(d.strong_share)}` :
      d.threshold != null ? `strong if score ≥ ${d.threshold}` : null);
    field(el, "confidence", d.confidence == null ? null : d.confidence.toFixed(3));
    const c = d.constraints;
    const parts = [];
    if (c.private_data) parts.push("private data: self-hosted targets only");
    if (c.fields_needing_support.length) parts.push(`needs support for ${c.fields_needing_support.join(", ")}`);
    if (c.escalated) parts.push("escalated: the prompt does not fit the cheaper target");
    if (c.prompt_tokens != null) parts.push(`${c.prompt_tokens} prompt tokens`);
    field(el, "constraints", parts.join("; "));
    field(el, "classifier", d.classifier_ms == null ? "not asked" :
      `${d.classifier_ms.toFixed(1)} ms, model version ${d.classifier_model_version ?? "?"}`);
  } catch (e) {
    if (seq === page.decisionSeq) showError(e.message);
  }
}

// --- send (streamed) and compare ----------------------------------------------------------------
function costOf(target, usage) {
  const t = page.targets.get(target);
  if (!t || !usage) return null;
  return (usage.prompt_tokens * t.usd_per_1m_input_tokens + usage.completion_tokens * t.usd_per_1m_output_tokens) / 1e6;
}

// The events of an SSE response, parsed; stops at [DONE].
async function* sseEvents(resp) {
  const reader = resp.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      for (const line of block.split("\n")) {
        if (!line.startsWith("data:")) continue;
        const data = line.slice(5).trim();
        if (data === "[DONE]") return;
        yield JSON.parse(data);
      }
    }
  }
}

function setBusy(busy) {
  $("#send").disabled = busy;
  $("#compare").disabled = busy;
  document.body.dataset.busy = busy ? "true" : "false";
}

async function send() {
  const meta = $("#answer-meta");
  const answer = $("#answer");
  answer.textContent = "";
  $("#rate").hidden = true;
  for (const dd of meta.querySelectorAll("dd")) dd.textContent = "–";
  setBusy(true);
  const t0 = performance.now();
  try {
    const resp = await api("/v1/chat/completions", chatBody($("#policy").value,
      { stream: true, stream_options: { include_usage: true }, max_tokens: maxTokens() }));
    const target = resp.headers.get("x-router-target");
    page.answerId = resp.headers.get("x-request-id");
    field(meta, "target", `${target} (${resp.headers.get("x-router-reason")})`);
    let usage = null;
    let firstMs = null;
    for await (const event of sseEvents(resp)) {
      if (event.error) throw new Error(`the stream ended with an error: ${event.error.message}`);
      const delta = event.choices && event.choices[0] && event.choices[0].delta;
      if (delta && delta.content) {
        if (firstMs === null) firstMs = performance.now() - t0;
        answer.textContent += delta.content;
      }
      if (event.usage) usage = event.usage;
    }
    field(meta, "tokens", usage ? `${usage.prompt_tokens} prompt, ${usage.completion_tokens} completion` : null);
    field(meta, "cost", usd(costOf(target, usage)));
    field(meta, "latency", `${(performance.now() - t0).toFixed(0)} ms` +
      (firstMs === null ? "" : ` (first token after ${firstMs.toFixed(0)} ms)`));
    $("#rate-state").textContent = "";
    $("#rate").hidden = false;
    showError("");
  } catch (e) {
    showError(e.message);
  } finally {
    setBusy(false);
    refreshStats();
  }
}

async function compare() {
  const policy = currentPolicy();
  if (!policy) return;
  const container = $("#comparison");
  container.replaceChildren();
  setBusy(true);
  await Promise.all(policy.targets.map(async (name) => {
    const card = document.createElement("article");
    card.dataset.target = name;
    const title = document.createElement("h4");
    title.textContent = name;
    const info = document.createElement("p");
    info.className = "muted";
    info.textContent = "asking…";
    const text = document.createElement("pre");
    text.className = "answer";
    const best = document.createElement("button");
    best.type = "button";
    best.textContent = "Best answer";
    best.hidden = true;
    best.addEventListener("click", () => preferAnswer(container, name));
    card.append(title, info, text, best);
    container.append(card);
    const t0 = performance.now();
    try {
      const resp = await api("/v1/chat/completions", chatBody(name, { max_tokens: maxTokens() }));
      const data = await resp.json();
      text.textContent = data.choices[0].message.content || "";
      const u = data.usage;
      info.textContent = `${u.prompt_tokens} prompt, ${u.completion_tokens} completion tokens · ` +
        `${usd(Number(resp.headers.get("x-router-cost-usd")))} · ${(performance.now() - t0).toFixed(0)} ms`;
      card.dataset.requestId = resp.headers.get("x-request-id");
      best.hidden = false;
      card.dataset.state = "done";
    } catch (e) {
      info.textContent = e.message;
      card.dataset.state = "failed";
    }
  }));
  setBusy(false);
  refreshStats();
}

// --- feedback: joined to the answers' decision-log rows (POST /v1/router/feedback) --------------
async function sendFeedback(body) {
  return (await api("/v1/router/feedback", body)).json();
}

async function rateAnswer(thumbs) {
  if (!page.answerId) return;
  try {
    await sendFeedback({ request_id: page.answerId, thumbs });
    $("#rate-state").textContent = `recorded: ${thumbs === "up" ? "good" : "bad"}`;
  } catch (e) {
    $("#rate-state").textContent = e.message;
  }
}

// The preferred answer of a comparison: every compared request gets the same per-target grades.
async function preferAnswer(container, chosen) {
  const cards = Array.from(container.querySelectorAll("article[data-request-id]"));
  const grades = Object.fromEntries(cards.map((c) => [c.dataset.target, c.dataset.target === chosen ? 1 : 0]));
  try {
    await Promise.all(cards.map((c) => sendFeedback({ request_id: c.dataset.requestId, grades })));
    for (const c of cards) c.dataset.preferred = String(c.dataset.target === chosen);
    showError("");
  } catch (e) {
    showError(e.message);
  }
}

// --- traffic, calibration and the quality/cost curve --------------------------------------------
async function refreshStats() {
  try {
    page.stats = await (await api("/v1/router/stats")).json();
  } catch (e) {
    showError(e.message);
    return;
  }
  const s = page.stats;
  const totals = $("#totals");
  const policy = currentPolicy();
  const strong = policy ? policy.targets[policy.targets.length - 1] : null;
  const strongRequests = strong && s.by_target[strong] ? s.by_target[strong].requests : 0;
  field(totals, "requests", s.total.requests);
  field(totals, "strong_share", s.total.requests ? `${pct(strongRequests / s.total.requests, 1)} to ${strong}` : null);
  // Savings are the policies' (a request naming a target directly has no always-strong baseline).
  const routed = Object.values(s.by_policy).reduce((sum, p) => ({ cost: sum.cost + p.cost_usd,
    baseline: sum.baseline + p.baseline_cost_usd }), { cost: 0, baseline: 0 });
  field(totals, "cost", usd(s.total.cost_usd));
  field(totals, "routed_cost", usd(routed.cost));
  field(totals, "baseline", usd(routed.baseline));
  field(totals, "savings", routed.baseline ?
    `${usd(routed.baseline - routed.cost)} (${pct((routed.baseline - routed.cost) / routed.baseline, 1)})` : null);
  const rows = Object.entries(s.by_target).map(([name, t]) => {
    const tr = document.createElement("tr");
    tr.dataset.target = name;
    for (const value of [name, t.requests, t.prompt_tokens + t.completion_tokens, t.cost_usd.toFixed(8)]) {
      const td = document.createElement("td");
      td.textContent = String(value);
      tr.append(td);
    }
    return tr;
  });
  $("#by-target tbody").replaceChildren(...rows);
  drawScale();
  drawCurve();
}

// "0.1" -> value maps of the policy's classifier, as sorted [share, value] pairs.
function curveOf(map) {
  return Object.entries(map || {}).map(([k, v]) => [Number(k), v]).sort((a, b) => a[0] - b[0]);
}

function classifierData(kind) {
  const p = currentPolicy();
  return p && page.stats && page.stats[kind] ? page.stats[kind][p.classifier] : null;
}

function interpolate(points, x) {
  if (!points.length) return null;
  if (x <= points[0][0]) return points[0][1];
  for (let i = 1; i < points.length; i++) {
    const [x0, y0] = points[i - 1];
    const [x1, y1] = points[i];
    if (x <= x1) return y0 + (y1 - y0) * (x - x0) / (x1 - x0);
  }
  return points[points.length - 1][1];
}

// The share of traffic the policy (or the slider) sends strong: its strong_share, or the share
// its threshold implies through the served calibration.
function operatingShare() {
  const p = currentPolicy();
  if (!p) return null;
  if ($("#share-override").checked) return Number($("#share").value) / 100;
  if (p.strong_share != null) return p.strong_share;
  if (p.quality != null) { // a quality target: the share the router derives from the curve
    const info = page.stats && page.stats.policies[p.policy];
    return info ? info.implied_strong_share : null;
  }
  if (p.policy_kind !== "threshold") return null;
  const thresholds = curveOf(classifierData("calibration")); // share -> score, decreasing
  if (!thresholds.length) return null;
  const t = p.threshold == null ? 0.5 : p.threshold;
  const byScore = thresholds.map(([share, score]) => [score, share]).sort((a, b) => a[0] - b[0]);
  return interpolate(byScore, t);
}

function drawScale() {
  const scale = $("#scale");
  const thresholds = curveOf(classifierData("calibration"));
  scale.replaceChildren(...thresholds.map(([share, score]) => {
    const tick = document.createElement("span");
    tick.style.left = `${share * 100}%`;
    tick.title = `a score of ${score.toFixed(4)} or more sends ${pct(share)} of the traffic strong`;
    tick.textContent = `${pct(share)}\n≥${score.toFixed(3)}`;
    return tick;
  }));
}

function svg(name, attrs, text) {
  const el = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  if (text != null) el.textContent = text;
  return el;
}

function drawCurve() {
  const chart = $("#curve");
  const note = $("#operating-point");
  const points = curveOf(classifierData("calibration_quality"));
  if (!points.length) {
    chart.replaceChildren();
    note.textContent = "The served model version carries no quality curve (export a new version).";
    return;
  }
  points.push([1, 1]); // everything strong: the strong model's quality
  // Quality can pass the strong model's own where the weak one is right and the strong one wrong.
  const low = Math.min(0.9, Math.floor(Math.min(...points.map((p) => p[1])) * 20) / 20);
  const high = Math.max(1, Math.ceil(Math.max(...points.map((p) => p[1])) * 100) / 100);
  const X = (share) => 40 + share * 260;
  const Y = (q) => 190 - (q - low) / (high - low) * 180;
  const parts = [svg("line", { class: "axis", x1: 40, y1: 190, x2: 300, y2: 190 }),
    svg("line", { class: "axis", x1: 40, y1: 10, x2: 40, y2: 190 })];
  for (let q = low; q <= high + 1e-9; q += 0.025) {
    parts.push(svg("line", { class: "grid", x1: 40, y1: Y(q), x2: 300, y2: Y(q) }),
      svg("text", { x: 2, y: Y(q) + 3 }, pct(q, 1)));
  }
  parts.push(svg("line", { class: "random", x1: 40, y1: Y(1), x2: 300, y2: Y(1) }),
    svg("text", { x: 230, y: Y(1) - 3 }, "strong model"));
  for (let i = 0; i <= 4; i++) parts.push(svg("text", { x: X(i / 4) - 10, y: 204 }, pct(i / 4)));
  parts.push(svg("text", { x: 110, y: 217 }, "share of traffic sent strong"));
  parts.push(svg("polyline", { class: "curve", points: points.map(([x, y]) => `${X(x)},${Y(y)}`).join(" ") }));
  const share = operatingShare();
  if (share == null) {
    note.textContent = "This policy has no single strong share to mark.";
  } else {
    const q = interpolate(points, share);
    parts.push(svg("circle", { class: "point", cx: X(share), cy: Y(Math.max(q, low)), r: 5 }));
    note.textContent = `Operating point: ${pct(share)} of traffic strong → about ${pct(q, 1)} of the strong ` +
      "model's quality on the version's validation prompts" + (share < points[0][0] ? " (below the curve's first point)" : "") + ".";
  }
  chart.replaceChildren(...parts);
}

// --- wiring -------------------------------------------------------------------------------------
function showKeyState() {
  $("#key-state").textContent = sessionStorage.getItem(KEY_STORAGE) ? "key set for this tab" : "no key";
}

async function start() {
  $("#key-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const key = $("#api-key").value.trim();
    if (key) sessionStorage.setItem(KEY_STORAGE, key); else sessionStorage.removeItem(KEY_STORAGE);
    $("#api-key").value = "";
    showKeyState();
    showError("");
    await init();
  });
  $("#policy").addEventListener("change", () => { policyChanged(); refreshStats(); });
  $("#share-override").addEventListener("change", () => {
    $("#share").disabled = !$("#share-override").checked;
    policyChanged();
  });
  $("#share").addEventListener("input", () => {
    $("#share-value").textContent = `${$("#share").value}%`;
    drawCurve();
    decideSoon(100);
  });
  $("#prompt").addEventListener("input", () => decideSoon());
  $("#send").addEventListener("click", send);
  $("#compare").addEventListener("click", compare);
  $("#thumbs-up").addEventListener("click", () => rateAnswer("up"));
  $("#thumbs-down").addEventListener("click", () => rateAnswer("down"));
  showKeyState();
  await init();
  setInterval(refreshStats, 2000);
}

async function init() {
  try {
    await loadModels();
    await refreshStats();
    document.body.dataset.ready = "true";
  } catch (e) {
    showError(e.message);
  }
}

start();
