// tocsin's status page: reads the admin API (/api/v1) with the token the operator pastes, and
// draws problems, open alerts (acknowledge with an admin token), silences (expire), pipelines,
// dead letters (replay / purge), recent messages with their trace, and per-host graphs of the
// metric history. No library, nothing fetched
// from elsewhere.
"use strict";

const API = "/api/v1";
const REFRESH_MS = 10000;
const TOKEN_KEY = "tocsin-token";
/// Recent messages listed at most (of the 50 asked for, those no sink took left out).
const RECENT_SHOWN = 20;
/// Series drawn per host at most, so a host with hundreds of disks stays readable.
const MAX_CHARTS_PER_HOST = 12;

let role = null;
let range = "24h";
let timer = null;

const $ = (id) => document.getElementById(id);

/// An element with attributes and children (strings become text, never HTML).
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c instanceof Node ? c : String(c));
  return node;
}

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function api(path, options = {}) {
  const token = sessionStorage.getItem(TOKEN_KEY);
  const headers = { Authorization: `Bearer ${token}` };
  if (options.body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(API + path, {
    method: options.method || "GET",
    headers,
    body: options.body === undefined ? undefined : JSON.stringify(options.body),
  });
  const text = await response.text();
  let body = null;
  try { body = text ? JSON.parse(text) : null; } catch { body = null; }
  if (!response.ok) {
    throw new ApiError(response.status, (body && body.error) || `${response.status} ${text}`);
  }
  return body;
}

/// How a recent message's state is shown: done, needs a look, or nothing to do.
const STATE_CLASS = {
  delivered: "ok", dead_lettered: "bad", not_stored: "bad", filter_failed: "bad",
  retrying: "warn", queued: "warn", dropped: "muted", routed_nowhere: "muted", split: "muted",
};

function ago(ms) {
  const s = Math.max(0, (Date.now() - ms) / 1000);
  if (s < 90) return `${Math.round(s)} s ago`;
  if (s < 5400) return `${Math.round(s / 60)} min ago`;
  if (s < 129600) return `${Math.round(s / 3600)} h ago`;
  return `${Math.round(s / 86400)} d ago`;
}

function bytes(n) {
  if (n == null) return "—";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${n < 10 && i ? n.toFixed(1) : Math.round(n)} ${units[i]}`;
}

function number(v) {
  if (Math.abs(v) >= 1e6 || (Math.abs(v) < 0.01 && v !== 0)) return v.toExponential(2);
  return Number.isInteger(v) ? String(v) : v.toFixed(Math.abs(v) < 10 ? 2 : 1);
}

function stateClass(state) {
  if (state === "running" || state === "ingest_only") return "ok";
  if (state === "paused" || state === "starting" || state === "disabled") return "warn";
  return "bad";
}

// --- sign in -------------------------------------------------------------------------------

async function signIn(token) {
  sessionStorage.setItem(TOKEN_KEY, token);
  try {
    const me = await api("/whoami");
    role = me.role;
    $("who").textContent = `signed in as ${me.name} (${me.role})`;
    $("signin").hidden = true;
    $("main").hidden = false;
    await refresh();
    clearInterval(timer);
    timer = setInterval(refresh, REFRESH_MS);
  } catch (e) {
    sessionStorage.removeItem(TOKEN_KEY);
    $("signin").hidden = false;
    $("main").hidden = true;
    $("signin-error").textContent = e.status === 401 ? "That token is not one of this server's." : e.message;
  }
}

// --- the sections --------------------------------------------------------------------------

async function refresh() {
  try {
    const [pipelines, problems, deadLetters, recent, alerts, silences] = await Promise.all([
      api("/pipelines"), api("/problems"), api("/dead-letters"), api("/recent?limit=50"),
      api("/alerts"), api("/silences"),
    ]);
    $("error").hidden = true;
    drawSummary(pipelines);
    drawProblems(problems);
    drawAlerts(alerts);
    drawSilences(silences);
    drawPipelines(pipelines);
    drawDeadLetters(deadLetters);
    drawRecent(recent);
    await drawHosts(pipelines);
  } catch (e) {
    if (e.status === 401) { sessionStorage.removeItem(TOKEN_KEY); location.reload(); return; }
    $("error").textContent = `Cannot read the server: ${e.message}`;
    $("error").hidden = false;
  }
}

function drawSummary(pipelines) {
  const running = pipelines.filter((p) => p.state === "running").length;
  $("summary").textContent =
    `${running} of ${pipelines.length} pipelines running · updated ${new Date().toLocaleTimeString()}`;
}

/// What needs someone, as the server lists it (`GET /problems`, also `tocsin status`).
function drawProblems(problems) {
  const list = $("problems");
  list.replaceChildren(...(problems.length
    ? problems.map((p) => el("li", { class: p.level }, p.text))
    : [el("li", { class: "none" }, "None: everything runs and nothing waits.")]));
}

/// How a severity is shown.
const SEVERITY_CLASS = { alert: "bad", error: "bad", warning: "warn", info: "ok", none: "muted" };

/// The open alerts of the register (`GET /alerts`), with who acknowledged or what holds them;
/// an admin may acknowledge one. Not redrawn while a comment is being typed.
function drawAlerts(alerts) {
  if (document.activeElement && document.activeElement.classList.contains("ack-comment")) return;
  const now = Date.now();
  const open = alerts.filter((a) => a.open);
  $("alerts-empty").hidden = open.length > 0;
  $("alerts").hidden = open.length === 0;
  const rows = open.map((a) => {
    const ack = a.ack && (a.ack.until_ms == null || a.ack.until_ms > now) ? a.ack : null;
    const held = Object.entries(a.held || {}).map(([sink, h]) => `held from ${sink} by ${h.silence}`);
    const state = ack ? `acknowledged by ${ack.by}: ${ack.comment}` : (held.join(" · ") || "open");
    const actions = el("td", { class: "actions" });
    if (role === "admin" && !ack) {
      const comment = el("input", {
        type: "text", class: "ack-comment", placeholder: "what you are doing",
        "aria-label": `what you are doing about ${a.summary || a.identity}`,
      });
      actions.append(comment, " ",
        el("button", { type: "button", class: "ack", onclick: () => acknowledge(a, comment.value) }, "Acknowledge"));
    }
    return el("tr", { "data-identity": a.identity, "data-pipeline": a.pipeline },
      el("td", {}, a.pipeline),
      el("td", {}, el("span", { class: `badge ${SEVERITY_CLASS[a.severity] || "warn"}` }, a.severity), " ",
        a.summary || "", " ", el("span", { class: "muted" }, a.identity)),
      el("td", { class: "when" }, ago(a.since_ms)),
      el("td", { class: ack ? "state ok" : "state" }, state),
      actions);
  });
  $("alerts").tBodies[0].replaceChildren(...rows);
}

async function acknowledge(alert, comment) {
  try {
    if (!comment.trim()) throw new Error("say what you are doing first");
    await api("/alerts/ack", { method: "POST", body: { pipeline: alert.pipeline, alert: alert.identity, comment } });
  } catch (e) {
    $("error").textContent = `Cannot acknowledge ${alert.identity}: ${e.message}`;
    $("error").hidden = false;
    return;
  }
  document.activeElement.blur();
  await refresh();
}

/// Silences in force or to come (`GET /silences`); an admin may end one.
function drawSilences(silences) {
  const live = silences.filter((s) => s.state !== "expired");
  $("silences-empty").hidden = live.length > 0;
  $("silences").hidden = live.length === 0;
  const rows = live.map((s) => {
    const actions = el("td", { class: "actions" });
    if (role === "admin") {
      actions.append(el("button", { type: "button", class: "expire", onclick: () => expire(s) }, "Expire"));
    }
    const from = s.state === "pending" ? `${new Date(s.starts_at_ms).toLocaleString()} · ` : "";
    return el("tr", { "data-silence": s.id },
      el("td", {}, s.matchers.join(", "), s.sinks && s.sinks.length ? el("span", { class: "muted" }, ` (${s.sinks.join(", ")})`) : ""),
      el("td", { class: "when" }, `${from}${new Date(s.ends_at_ms).toLocaleString()}`),
      el("td", {}, s.created_by), el("td", {}, s.comment), actions);
  });
  $("silences").tBodies[0].replaceChildren(...rows);
}

async function expire(silence) {
  try {
    await api(`/silences/${encodeURIComponent(silence.id)}`, { method: "DELETE" });
  } catch (e) {
    $("error").textContent = `Cannot expire silence ${silence.id}: ${e.message}`;
    $("error").hidden = false;
  }
  await refresh();
}

function drawPipelines(pipelines) {
  const rows = pipelines.map((p) => {
    const queues = (p.queues || []).map((q) => `${q.queue} ${q.depth}`).join(" · ");
    const dead = Object.values(p.dead_letters || {}).reduce((a, b) => a + b, 0);
    const c = p.counters || {};
    return el("tr", { "data-pipeline": p.name },
      el("td", {}, el("strong", {}, p.name)),
      el("td", {}, el("span", { class: `badge ${stateClass(p.state)}`, title: p.reason || "" }, p.state)),
      el("td", {}, queues || "—"),
      el("td", { class: dead ? "bad" : "" }, dead),
      el("td", {}, `${bytes(p.stored_bytes)} / ${p.queue_budget ? bytes(p.queue_budget) : "—"}`),
      el("td", {}, `${c.messages_in || 0} · ${c.delivered || 0} · ${c.dead_lettered || 0}`));
  });
  $("pipelines").tBodies[0].replaceChildren(...rows);
}

function drawDeadLetters(letters) {
  $("dead-empty").hidden = letters.length > 0;
  $("dead-letters").hidden = letters.length === 0;
  const rows = letters.map((d) => {
    const actions = el("td", { class: "actions" });
    if (role === "admin") {
      actions.append(
        el("button", { type: "button", class: "replay", onclick: () => dispose(d, "replay") }, "Replay"), " ",
        el("button", { type: "button", class: "purge danger", onclick: () => dispose(d, "purge") }, "Purge"));
    }
    return el("tr", { "data-seq": d.seq, "data-id": d.id },
      el("td", {}, d.pipeline), el("td", {}, d.queue), el("td", {}, d.id),
      el("td", {}, d.attempts), el("td", {}, d.last_error || ""), actions);
  });
  $("dead-letters").tBodies[0].replaceChildren(...rows);
}

async function dispose(letter, what) {
  if (what === "purge" && !confirm(`Delete dead letter ${letter.id} of ${letter.pipeline}/${letter.queue} for good?`)) return;
  const path = `/pipelines/${encodeURIComponent(letter.pipeline)}/dead-letters/${encodeURIComponent(letter.queue)}/${what}`;
  try {
    await api(path, { method: "POST", body: { seqs: [letter.seq] } });
  } catch (e) {
    $("error").textContent = `Cannot ${what} ${letter.id}: ${e.message}`;
    $("error").hidden = false;
  }
  await refresh();
}

/// States of messages no sink took: listed only when asked, as a metrics pipeline's healthy
/// samples would fill the list.
const NOWHERE = new Set(["dropped", "routed_nowhere"]);

function drawRecent(all) {
  const shown = $("recent-all").checked ? all : all.filter((m) => !NOWHERE.has(m.state));
  const recent = shown.slice(0, RECENT_SHOWN);
  $("recent-empty").hidden = recent.length > 0;
  $("recent").hidden = recent.length === 0;
  const rows = recent.map((m) => el("tr", {
    class: "clickable", "data-id": m.id, title: "show its trace",
    onclick: () => showTrace(m.pipeline, m.id),
  },
    el("td", { class: "when" }, ago(m.accepted_at_ms)),
    el("td", {}, m.pipeline),
    el("td", {}, m.summary ? `${m.summary} ` : "", el("span", { class: "muted" }, m.id)),
    el("td", {}, el("span", { class: `badge ${STATE_CLASS[m.state] || "warn"}` }, m.state.replaceAll("_", " ")),
      m.detail ? ` ${m.detail}` : "")));
  $("recent").tBodies[0].replaceChildren(...rows);
}

async function showTrace(pipeline, id) {
  let events;
  try {
    events = await api(`/trace/${encodeURIComponent(id)}?pipeline=${encodeURIComponent(pipeline)}`);
  } catch (e) {
    $("error").textContent = `Cannot read the trace of ${id}: ${e.message}`;
    $("error").hidden = false;
    return;
  }
  $("trace-title").textContent = `Trace of ${id} (${pipeline})`;
  $("trace-steps").replaceChildren(...events.map((event) => {
    // `{at_ms, id, step: {step: "delivered", sink, attempt}}`: the step's fields beside its name.
    const { step: name, ...fields } = event.step;
    const detail = Object.entries(fields)
      .filter(([, v]) => v !== null && v !== "" && !(Array.isArray(v) && v.length === 0))
      .map(([k, v]) => `${k.replaceAll("_", " ")}: ${Array.isArray(v) ? v.join(", ") : v}`)
      .join(" · ");
    const who = event.id === id ? "" : ` (${event.id})`;
    return el("li", {}, `${new Date(event.at_ms).toLocaleString()} — ${name.replaceAll("_", " ")}${who}${detail ? ` — ${detail}` : ""}`);
  }));
  $("trace").hidden = false;
  $("trace").scrollIntoView({ block: "nearest" });
}

// --- graphs --------------------------------------------------------------------------------

async function drawHosts(pipelines) {
  const byHost = new Map();
  for (const p of pipelines) {
    let series = [];
    try { series = await api(`/pipelines/${encodeURIComponent(p.name)}/history`); } catch { continue; }
    for (const s of series) {
      const key = s.host || "(no host)";
      if (!byHost.has(key)) byHost.set(key, []);
      byHost.get(key).push({ pipeline: p.name, ...s });
    }
  }
  $("hosts-empty").hidden = byHost.size > 0;
  const cards = [];
  for (const [host, series] of [...byHost.entries()].sort()) {
    const card = el("div", { class: "host", "data-host": host }, el("h3", {}, host));
    series.sort((a, b) => a.metric.localeCompare(b.metric));
    for (const s of series.slice(0, MAX_CHARTS_PER_HOST)) {
      const q = `host=${encodeURIComponent(s.host)}&metric=${encodeURIComponent(s.metric)}&since=${range}`;
      let points = [];
      try { points = await api(`/pipelines/${encodeURIComponent(s.pipeline)}/history/points?${q}`); } catch { points = []; }
      card.append(chart(s, points));
    }
    cards.push(card);
  }
  $("hosts").replaceChildren(...cards);
}

const SVG = "http://www.w3.org/2000/svg";

/// A point's time on an axis: the time of day over 24 h, the day over longer ranges.
function when(ms) {
  const t = new Date(ms);
  return range === "24h"
    ? t.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" })
    : t.toLocaleDateString([], { month: "short", day: "numeric" });
}

/// One series as a line (averages) over a band (min to max), with its last value and range.
function chart(series, points) {
  const box = el("div", { class: "chart", "data-metric": series.metric, "data-points": points.length });
  box.append(el("div", { class: "name" },
    el("span", {}, `${series.metric}${series.pipeline ? ` · ${series.pipeline}` : ""}`),
    el("strong", {}, number(series.last_value))));
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("viewBox", "0 0 300 70");
  svg.setAttribute("preserveAspectRatio", "none");
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", `${series.metric} of ${series.host || "no host"}`);
  if (points.length) {
    const t0 = points[0].at_ms, t1 = points[points.length - 1].at_ms;
    const lo = Math.min(...points.map((p) => p.min)), hi = Math.max(...points.map((p) => p.max));
    const x = (t) => (t1 === t0 ? 150 : ((t - t0) / (t1 - t0)) * 300);
    const y = (v) => (hi === lo ? 35 : 66 - ((v - lo) / (hi - lo)) * 62);
    const band = points.map((p) => `${x(p.at_ms).toFixed(1)},${y(p.max).toFixed(1)}`)
      .concat(points.slice().reverse().map((p) => `${x(p.at_ms).toFixed(1)},${y(p.min).toFixed(1)}`));
    const poly = document.createElementNS(SVG, "polygon");
    poly.setAttribute("class", "band");
    poly.setAttribute("points", band.join(" "));
    const line = document.createElementNS(SVG, "polyline");
    line.setAttribute("class", "line");
    line.setAttribute("points", points.map((p) => `${x(p.at_ms).toFixed(1)},${y(p.avg).toFixed(1)}`).join(" "));
    svg.append(poly, line);
    box.append(svg, el("div", { class: "axis" },
      el("span", {}, when(t0)),
      el("span", {}, `${number(lo)} – ${number(hi)}`),
      el("span", {}, when(t1))));
  } else {
    box.append(svg, el("div", { class: "axis" }, el("span", {}, `no points in ${range}`)));
  }
  return box;
}

// --- start ---------------------------------------------------------------------------------

document.addEventListener("DOMContentLoaded", () => {
  $("signin-form").addEventListener("submit", (e) => {
    e.preventDefault();
    signIn($("token").value.trim());
  });
  $("recent-all").addEventListener("change", refresh);
  for (const b of document.querySelectorAll("[data-range]")) {
    b.addEventListener("click", async () => {
      range = b.dataset.range;
      for (const o of document.querySelectorAll("[data-range]")) o.classList.toggle("on", o === b);
      await refresh();
    });
  }
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) signIn(token);
  else { $("signin").hidden = false; $("summary").textContent = "sign in to see the server"; }
});
