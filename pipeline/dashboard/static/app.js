// guardstream live view. No framework, no build step. Every piece of data is put into the page with
// textContent or setAttribute on inert attributes (title, data-*), never as markup.
"use strict";

const RISKS = ["safe", "controversial", "unsafe"];
const KINDS = ["progress", "flag", "final"];
const MAX_ROWS = 300;

const state = {
  conversations: new Map(),   // id -> summary
  tenants: new Set(),
  selected: null,
  detailBusy: false,
  detailAgain: false,
  showText: false,
};

function $(id) { return document.getElementById(id); }

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}

function risk(value) { return RISKS.includes(value) ? value : "safe"; }
function kind(value) { return KINDS.includes(value) ? value : "final"; }

function fmtRate(x) { return (typeof x === "number") ? x.toFixed(1) : "–"; }
function fmtLatency(p) { return (p && p.n) ? `${p.p50} / ${p.p99} ms` : "–"; }
function fmtTime(ms) { return (typeof ms === "number") ? new Date(ms).toISOString().slice(11, 23) : ""; }

// --- stats and counts ------------------------------------------------------------------------
function renderStats(stats) {
  $("s-stream-rate").textContent = fmtRate(stats.verdicts_per_s.stream);
  $("s-gen-rate").textContent = fmtRate(stats.verdicts_per_s.generative);
  $("s-final-rate").textContent = fmtRate(stats.finals_per_s);
  $("s-delta-rate").textContent = stats.show_text ? fmtRate(stats.deltas_per_s) : "(text off)";
  $("s-stream-latency").textContent = fmtLatency(stats.latency_ms.stream);
  $("s-gen-latency").textContent = fmtLatency(stats.latency_ms.generative);
  $("s-conversations").textContent = `${stats.conversations} (${stats.evicted} dropped)`;
  const bad = stats.bad_records || {};
  $("s-bad").textContent = `${bad.verdicts || 0} verdicts, ${bad.deltas || 0} deltas`;
  state.showText = !!stats.show_text;
  const mode = $("text-mode");
  mode.textContent = stats.show_text ? "text shown (reads guard.in)" : "text hidden: tokens as positions";
  const counts = stats.counts.stream;
  fillTable($("c-risk"), RISKS.map((r) => [r, counts.risk[r] || 0, r]).concat([["blocked", counts.blocked, "unsafe"]]));
  fillTable($("c-category"), Object.entries(counts.category).map(([c, n]) => [c, n, null]));
  const tenantRows = Object.entries(counts.tenant).map(([t, byRisk]) =>
    [t, RISKS.map((r) => byRisk[r] || 0).join(" / "), null]);
  fillTable($("c-tenant"), tenantRows, "safe / controversial / unsafe");
  for (const t of Object.keys(counts.tenant)) addTenant(t);
  const gen = stats.counts.generative;
  fillTable($("c-gen-risk"), RISKS.map((r) => [r, gen.risk[r] || 0, r]));
}

function fillTable(table, rows, header) {
  table.replaceChildren();
  if (header) {
    const tr = el("tr");
    tr.append(el("th", null, ""), el("th", null, header));
    table.append(tr);
  }
  if (!rows.length) {
    const tr = el("tr");
    tr.append(el("td", "muted", "none yet"));
    table.append(tr);
  }
  for (const [label, value, riskClass] of rows) {
    const tr = el("tr");
    tr.append(el("td", riskClass ? `risk-${risk(riskClass)}` : null, label), el("td", "num", value));
    table.append(tr);
  }
}

function addTenant(name) {
  if (!name || state.tenants.has(name)) return;
  state.tenants.add(name);
  const option = el("option", null, name);
  option.value = name;
  $("f-tenant").append(option);
}

// --- conversation list ---------------------------------------------------------------------
function matchesFilters(s) {
  const tenant = $("f-tenant").value;
  const minRisk = $("f-risk").value;
  if (tenant && (s.tenant || "(default)") !== tenant) return false;
  if (minRisk && RISKS.indexOf(risk(s.risk)) < RISKS.indexOf(minRisk)) return false;
  return true;
}

function renderList() {
  const list = $("conversations");
  const rows = [...state.conversations.values()].filter(matchesFilters)
    .sort((a, b) => b.last_ms - a.last_ms).slice(0, MAX_ROWS);
  list.replaceChildren();
  for (const s of rows) {
    const li = el("li", `conversation risk-border-${risk(s.risk)}`);
    li.dataset.id = s.id;
    li.dataset.risk = risk(s.risk);
    if (s.id === state.selected) li.classList.add("selected");
    const top = el("div", "row");
    top.append(el("span", "cid", s.id), el("span", `badge risk-${risk(s.risk)}`, s.blocked ? `${risk(s.risk)} · blocked` : risk(s.risk)));
    const bottom = el("div", "row muted");
    bottom.append(el("span", null, s.tenant || "(default)"),
      el("span", null, `${s.messages} msg${s.ended ? " · ended" : ""} · ${fmtTime(s.last_ms)}`));
    li.append(top, bottom);
    li.addEventListener("click", () => { $("follow").checked = false; select(s.id); });
    list.append(li);
  }
  if ($("follow").checked) {
    const newest = [...state.conversations.values()].filter(matchesFilters).sort((a, b) => b.first_ms - a.first_ms)[0];
    if (newest && newest.id !== state.selected) select(newest.id);
  }
}

// --- one conversation ------------------------------------------------------------------------
function select(id) {
  state.selected = id;
  $("d-history").replaceChildren();
  $("d-history-status").textContent = "";
  for (const li of $("conversations").children) li.classList.toggle("selected", li.dataset.id === id);
  loadDetail();
}

async function loadDetail() {
  if (state.selected === null) return;
  if (state.detailBusy) { state.detailAgain = true; return; }
  state.detailBusy = true;
  const id = state.selected;
  try {
    const response = await fetch(`api/conversation?id=${encodeURIComponent(id)}`);
    if (response.ok && id === state.selected) renderDetail(await response.json());
  } catch (err) {
    // the next update retries
  } finally {
    state.detailBusy = false;
    if (state.detailAgain) { state.detailAgain = false; loadDetail(); }
  }
}

function verdictBadge(label, v) {
  const box = el("span", `verdict risk-${risk(v.risk)}`);
  box.dataset.source = v.source;
  const parts = [label, v.risk];
  if (v.action === "block") parts.push("block");
  const cats = v.categories && v.categories.length ? v.categories.join(", ") : v.category;
  if (cats) parts.push(cats);
  if (v.refusal === true) parts.push("refusal");
  if (v.refusal === false) parts.push("no refusal");
  if (typeof v.latency_ms === "number") parts.push(`${v.latency_ms} ms`);
  if (typeof v.truncated_tokens === "number") parts.push(`${v.truncated_tokens} tokens elided`);
  box.textContent = parts.join(" · ");
  box.title = v.verdict_id;
  return box;
}

function markTitle(m) {
  const where = [`token ${m.token_index ?? "–"}`, `seq ${m.seq ?? "–"}`];
  if (typeof m.char_offset === "number") where.push(`char ${m.char_offset}`);
  return `${m.kind} · ${m.risk} · ${m.action}${m.category ? " · " + m.category : ""} · ${where.join(" ")}\n${m.verdict_id}`;
}

function renderMessage(m) {
  const box = el("div", `message role-${m.role === "user" ? "user" : m.role === "assistant" ? "assistant" : "system"}`);
  box.dataset.index = String(m.index);
  const head = el("div", "message-head");
  head.append(el("span", "who", `#${m.index} ${m.role}`));
  const rulings = el("span", "rulings");
  rulings.append(m.stream_final ? verdictBadge("stream", m.stream_final) : el("span", "verdict pending", "stream: judging…"));
  if (m.generative) rulings.append(verdictBadge("generative", m.generative));
  head.append(rulings);
  const body = el("div", "message-body");
  const lastPieceOfSeq = new Map();
  m.pieces.forEach((p, i) => lastPieceOfSeq.set(p.seq, i));
  m.pieces.forEach((p, i) => {
    for (const mark of p.marks || []) {
      const glyph = el("span", `mark kind-${kind(mark.kind)} risk-${risk(mark.risk)}${mark.action === "block" ? " action-block" : ""}`,
        kind(mark.kind) === "flag" ? "⚑" : "■");
      glyph.title = markTitle(mark);
      glyph.dataset.verdictId = mark.verdict_id;
      body.append(glyph);
    }
    const classes = ["tok", p.judged ? `risk-${risk(p.risk)}` : "pending"];
    if (p.withheld) classes.push("withheld");
    if (p.blocking) classes.push("blocked");
    if (p.reasoning) classes.push("reasoning");
    if (p.text === null) classes.push("placeholder");
    const tok = el("span", classes.join(" "));
    if (p.text === null) {
      tok.textContent = p.tail ? "…" : (typeof p.n === "number" ? `▯${p.n}` : "▯");
    } else {
      tok.textContent = p.text;
    }
    tok.title = `seq ${p.seq}${typeof p.n === "number" ? ` · ${p.n} chars` : ""}${p.judged ? "" : " · not yet judged"}`;
    tok.dataset.seq = String(p.seq);
    body.append(tok);
    if (p.seq === m.cleared_through_seq && lastPieceOfSeq.get(p.seq) === i && !m.stream_final) {
      const wm = el("span", "watermark", "▏");
      wm.title = `cleared through seq ${m.cleared_through_seq}`;
      body.append(wm);
    }
  });
  if (!m.pieces.length) body.append(el("span", "muted", "(no chunks seen yet)"));
  if (m.hidden_chunks) body.append(el("span", "muted", ` … ${m.hidden_chunks} more chunks not shown`));
  if (m.dropped_chunks) body.append(el("span", "muted", ` (${m.dropped_chunks} chunks past the per-message limit not kept)`));
  box.append(head, body);
  return box;
}

function renderDetail(d) {
  $("detail-empty").hidden = true;
  $("detail-body").hidden = false;
  $("d-id").textContent = d.id;
  $("d-tenant").textContent = d.tenant || "(default)";
  const badge = $("d-risk");
  badge.className = `badge risk-${risk(d.risk)}`;
  badge.textContent = d.blocked ? `${risk(d.risk)} · blocked` : risk(d.risk);
  $("d-messages").replaceChildren(...d.message_list.map(renderMessage));
}

async function loadHistory() {
  if (state.selected === null) return;
  const id = state.selected;
  const status = $("d-history-status");
  status.textContent = "replaying the verdict topic…";
  try {
    const response = await fetch(`api/history?id=${encodeURIComponent(id)}`);
    const body = await response.json();
    if (id !== state.selected) return;
    if (!response.ok) { status.textContent = body.error || `error ${response.status}`; return; }
    status.textContent = `${body.verdicts.length} verdicts, ${body.scanned} records scanned` +
      (body.complete ? "" : ` (stopped early: ${body.stopped_by} limit)`);
    renderHistory(body.verdicts);
  } catch (err) {
    status.textContent = "history unavailable";
  }
}

function renderHistory(verdicts) {
  const table = $("d-history");
  table.replaceChildren();
  const header = el("tr");
  for (const h of ["time", "message", "source", "kind", "risk", "action", "category", "token", "seq", "cleared", "latency"]) header.append(el("th", null, h));
  table.append(header);
  for (const v of verdicts) {
    const tr = el("tr", v.kind === "progress" ? "muted" : null);
    const cats = v.categories && v.categories.length ? v.categories.join(", ") : (v.category || "");
    tr.append(el("td", null, fmtTime(v.ts_ms)), el("td", null, `#${v.message_index} ${v.role}`), el("td", null, v.source),
      el("td", null, v.kind), el("td", `risk-${risk(v.risk)}`, v.risk), el("td", null, v.action), el("td", null, cats),
      el("td", "num", v.token_index ?? ""), el("td", "num", v.seq ?? ""), el("td", "num", v.cleared_through_seq ?? ""),
      el("td", "num", typeof v.latency_ms === "number" ? `${v.latency_ms} ms` : ""));
    table.append(tr);
  }
}

// --- the live feed -----------------------------------------------------------------------------
function applySummaries(list) {
  let selectedChanged = false;
  for (const s of list) {
    state.conversations.set(s.id, s);
    addTenant(s.tenant);
    if (s.id === state.selected) selectedChanged = true;
  }
  return selectedChanged;
}

function connect() {
  const source = new EventSource("events");
  const badge = $("connection");
  source.addEventListener("open", () => { badge.textContent = "live"; badge.className = "badge risk-safe"; });
  source.addEventListener("error", () => { badge.textContent = "reconnecting…"; badge.className = "badge pending"; });
  source.addEventListener("snapshot", (event) => {
    const data = JSON.parse(event.data);
    state.conversations.clear();
    applySummaries(data.conversations);
    renderStats(data.stats);
    renderList();
    loadDetail();
  });
  source.addEventListener("update", (event) => {
    const data = JSON.parse(event.data);
    for (const id of data.removed) state.conversations.delete(id);
    const selectedChanged = applySummaries(data.conversations);
    renderStats(data.stats);
    if (data.conversations.length || data.removed.length) renderList();
    if (selectedChanged) loadDetail();
  });
}

document.addEventListener("DOMContentLoaded", () => {
  $("f-tenant").addEventListener("change", renderList);
  $("f-risk").addEventListener("change", renderList);
  $("follow").addEventListener("change", renderList);
  $("d-history-button").addEventListener("click", loadHistory);
  connect();
});
