// The warden's page: a live table of every object, a status panel, and day plots.
// Plain JavaScript, no library: the data come from /api/v1/warden/ui (see catalog/ui).
"use strict";

const API = "/api/v1/warden/ui";
const HOUR = 3600;
const state = {
  cfg: null,          // the overview: objects, timezone, public
  entries: {},        // name -> latest entry
  offset: 0,          // server clock - this clock, seconds
  sparks: {},         // name -> {attr, t: [], v: []}
  source: null,       // the EventSource
  detail: null,       // {object, day, start, end, attr, data}
  reads: 0,           // day-plot reads asked for: only the newest one draws
};
let key = sessionStorage.getItem("warden-key") || "";

class NeedKey extends Error {}

function $(id) { return document.getElementById(id); }

async function api(path, options = {}) {
  const headers = key ? { Authorization: "Apikey " + key } : {};
  const response = await fetch(path, { ...options, headers });
  if (response.status === 401) throw new NeedKey();
  if (!response.ok) {
    let detail = response.statusText;
    try { detail = (await response.json()).detail; } catch (e) { /* not JSON */ }
    throw new Error(`${response.status} ${detail}`);
  }
  return response;
}

function now() { return Date.now() / 1000 + state.offset; }

// -- the key ------------------------------------------------------------------------------------
function askForKey(message) {
  $("main").hidden = true;
  $("key-form").hidden = false;
  $("key-message").textContent = message || "";
  $("key-input").focus();
}

$("key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  key = $("key-input").value.trim();
  sessionStorage.setItem("warden-key", key);
  start().catch(showError);
});

$("forget-key").addEventListener("click", () => {
  sessionStorage.removeItem("warden-key");
  key = "";
  location.reload();
});

function showError(err) {
  if (err instanceof NeedKey) {
    askForKey(key ? "That key was refused." : "");
  } else {
    console.error(err);
    $("plot-info").textContent = String(err.message || err);
  }
}

// -- start --------------------------------------------------------------------------------------
async function start() {
  const cfg = await (await api(API + "/overview")).json();
  state.cfg = cfg;
  state.offset = cfg.t - Date.now() / 1000;
  $("key-form").hidden = true;
  $("main").hidden = false;
  $("forget-key").hidden = !key;
  buildTable(cfg.objects);
  applyEntries(cfg.entries);
  connect();
  loadSparks(cfg.objects);
  loadPlugins();
  setInterval(tick, 1000);
  setInterval(loadPlugins, 10000);
}

// -- the table ----------------------------------------------------------------------------------
function buildTable(objects) {
  const body = document.querySelector("#objects tbody");
  body.replaceChildren();
  for (const name of objects) {
    const row = document.createElement("tr");
    row.dataset.object = name;
    row.innerHTML = `<td class="name"></td><td class="state"></td><td class="values"></td>
      <td class="age"></td><td><canvas class="spark" width="140" height="28"></canvas></td>`;
    row.querySelector(".name").textContent = name;
    row.addEventListener("click", () => openDetail(name));
    body.appendChild(row);
  }
}

function format(value) {
  if (value === null || value === undefined) return "-";
  if (Array.isArray(value)) return `[${value.length}]`;
  if (typeof value === "number") {
    if (Number.isInteger(value)) return String(value);
    return Number(value.toPrecision(6)).toString();
  }
  return String(value);
}

function primary(entry) {
  // the attribute a sparkline shows: the first whose value is a number
  for (const [attr, a] of Object.entries(entry.attributes || {})) {
    if (typeof a.value === "number") return attr;
  }
  return null;
}

function applyEntries(entries) {
  for (const [name, entry] of Object.entries(entries)) {
    state.entries[name] = entry;
    const row = document.querySelector(`tr[data-object="${CSS.escape(name)}"]`);
    if (!row) continue;
    const cell = row.querySelector(".state");
    cell.textContent = entry.connected ? "connected" : "disconnected";
    row.classList.toggle("disconnected", !entry.connected);
    const values = row.querySelector(".values");
    values.replaceChildren();
    for (const [attr, a] of Object.entries(entry.attributes || {})) {
      const span = document.createElement("span");
      span.className = "value";
      span.dataset.attr = attr;
      span.innerHTML = `<b></b> <i></i>`;
      span.firstChild.textContent = attr;
      span.lastChild.textContent = format(a.value);
      values.appendChild(span);
    }
    extendSpark(name, entry);
  }
  tick();
}

function tick() {
  const t = now();
  const zone = state.cfg ? state.cfg.timezone : undefined;
  $("clock").textContent = new Date(t * 1000).toLocaleTimeString(undefined, { timeZone: zone })
    + (zone ? ` ${zone}` : "");
  for (const [name, entry] of Object.entries(state.entries)) {
    const row = document.querySelector(`tr[data-object="${CSS.escape(name)}"]`);
    if (row) row.querySelector(".age").textContent = entry.time ? age(t - entry.time) : "never";
  }
  updateStatus(t);
}

function age(seconds) {
  seconds = Math.max(0, seconds);
  if (seconds < 60) return seconds.toFixed(1) + " s";
  if (seconds < 3600) return (seconds / 60).toFixed(1) + " min";
  return (seconds / 3600).toFixed(1) + " h";
}

// -- live updates -------------------------------------------------------------------------------
async function connect() {
  if (state.source) state.source.close();
  let url = API + "/events";
  try {
    if (!state.cfg.public) {
      const { token } = await (await api(API + "/token", { method: "POST" })).json();
      url += "?token=" + encodeURIComponent(token);
    }
  } catch (err) {
    setLive(false);
    if (err instanceof NeedKey) return showError(err);
    setTimeout(connect, 2000);
    return;
  }
  const source = state.source = new EventSource(url);
  source.onopen = () => setLive(true);
  source.onmessage = (event) => {
    const data = JSON.parse(event.data);
    state.offset = data.t - Date.now() / 1000;
    applyEntries(data.entries);
    if (state.detail) followDetail(data.entries[state.detail.object]);
  };
  source.onerror = () => {  // a token opens one stream: ask for another one
    source.close();
    setLive(false);
    setTimeout(connect, 2000);
  };
}

function setLive(on) {
  $("live").textContent = on ? "live" : "reconnecting";
  $("live").className = "live " + (on ? "on" : "off");
}

// -- sparklines ---------------------------------------------------------------------------------
async function loadSparks(names) {
  // two reads at a time: each reads the archive
  const queue = names.slice();
  const worker = async () => { while (queue.length) await loadSpark(queue.shift()); };
  await Promise.all([worker(), worker()]);
}

async function loadSpark(name) {
  const entry = state.entries[name];
  const attr = entry && primary(entry);
  if (!attr) return;
  try {
    const data = await (await api(`${API}/series?object=${encodeURIComponent(name)}&bins=120`))
      .json();
    const s = data.attributes[attr] || { t: [], v: [] };
    const spark = { attr, t: s.t.slice(), v: (s.mean || s.v).slice() };  // (finite only)
    const live = state.sparks[name];  // what came in while this was read
    if (live) {
      const last = spark.t.length ? spark.t[spark.t.length - 1] : -Infinity;
      live.t.forEach((t, i) => { if (t > last) { spark.t.push(t); spark.v.push(live.v[i]); } });
    }
    state.sparks[name] = spark;
    drawSpark(name);
  } catch (err) {
    if (!(err instanceof NeedKey)) console.error(err);
  }
}

function extendSpark(name, entry) {
  const attr = primary(entry);
  if (!attr) return;
  let spark = state.sparks[name];
  if (!spark) spark = state.sparks[name] = { attr, t: [], v: [] };
  if (spark.attr !== attr) return;
  const a = entry.attributes[attr];
  const last = spark.t.length ? spark.t[spark.t.length - 1] : -Infinity;
  if (typeof a.value === "number" && a.timestamp > last) { spark.t.push(a.timestamp); spark.v.push(a.value); }
  const first = now() - HOUR;
  while (spark.t.length && spark.t[0] < first) { spark.t.shift(); spark.v.shift(); }
  drawSpark(name);
}

function drawSpark(name) {
  const row = document.querySelector(`tr[data-object="${CSS.escape(name)}"]`);
  const spark = state.sparks[name];
  if (!row || !spark) return;
  const canvas = row.querySelector("canvas.spark");
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  canvas.title = `${spark.attr}, last hour`;
  canvas.dataset.points = spark.t.length;
  if (spark.t.length < 2) return;
  const t1 = now(), t0 = t1 - HOUR;
  const lo = Math.min(...spark.v), hi = Math.max(...spark.v);
  const x = (t) => (t - t0) / HOUR * (canvas.width - 2) + 1;
  const y = (v) => canvas.height - 2 - (hi > lo ? (v - lo) / (hi - lo) : 0.5) * (canvas.height - 4);
  ctx.strokeStyle = row.classList.contains("disconnected") ? "#999" : "#1f6fb2";
  ctx.lineWidth = 1.2;
  ctx.beginPath();
  spark.t.forEach((t, i) => (i ? ctx.lineTo(x(t), y(spark.v[i])) : ctx.moveTo(x(t), y(spark.v[i]))));
  ctx.stroke();
}

// -- status -------------------------------------------------------------------------------------
function updateStatus(t) {
  const entries = Object.values(state.entries);
  const down = entries.filter((e) => !e.connected).map((e) => e.object);
  const lags = entries.filter((e) => e.time && e.archived_time)
    .map((e) => Math.max(0, e.time - e.archived_time));
  const archived = entries.map((e) => e.archived_time || 0);
  $("st-connected").textContent = `${entries.length - down.length} / ${entries.length}`;
  $("st-rows").textContent = entries.reduce((n, e) => n + (e.archived_rows || 0), 0)
    .toLocaleString();
  $("st-lag").textContent = lags.length ? Math.max(...lags).toFixed(1) + " s" : "-";
  const newest = Math.max(0, ...archived);
  $("st-archived").textContent = newest ? age(t - newest) + " ago" : "nothing yet";
  $("st-disconnected").textContent = down.length ? down.join(", ") : "none";
  $("st-disconnected").classList.toggle("bad", down.length > 0);
}

async function loadPlugins() {
  let rows;
  try {
    rows = await (await api("/api/v1/warden/plugins")).json();
  } catch (err) {
    $("plugin-message").textContent = err instanceof NeedKey ? "listing plugins needs the key"
      : String(err.message || err);
    return;
  }
  const body = document.querySelector("#plugins tbody");
  body.replaceChildren();
  if (!rows.length) $("plugin-message").textContent = "no plugins configured";
  for (const p of rows) {
    const row = document.createElement("tr");
    row.innerHTML = "<td></td><td></td><td></td><td></td><td></td>";
    const cells = row.children;
    [p.name, p.state, p.runs, p.errors].forEach((v, i) => { cells[i].textContent = v; });
    cells[3].title = p.last_error || "";
    if (p.state !== "available") {
      const button = document.createElement("button");
      const action = p.state === "stopped" ? "start" : "stop";  // enabled or running
      button.textContent = action;
      button.addEventListener("click", () => switchPlugin(p.name, action));
      cells[4].appendChild(button);
    }
    body.appendChild(row);
  }
}

async function switchPlugin(name, action) {
  if (!key) {
    const given = prompt(`To ${action} ${name}, give the server's API key:`);
    if (!given) return;
    key = given.trim();
    sessionStorage.setItem("warden-key", key);
  }
  try {
    await api(`/api/v1/warden/plugins/${encodeURIComponent(name)}/${action}`, { method: "POST" });
    $("plugin-message").textContent = `${name}: ${action} done`;
  } catch (err) {
    if (err instanceof NeedKey) {  // ask again next time
      key = "";
      sessionStorage.removeItem("warden-key");
      $("plugin-message").textContent = `${action} ${name}: the key was refused`;
    } else {
      $("plugin-message").textContent = String(err.message || err);
    }
  }
  loadPlugins();
}

// -- the day plot -------------------------------------------------------------------------------
function openDetail(name) {
  const day = (state.detail && state.detail.day) || state.cfg.today;
  state.detail = { object: name, day, start: null, end: null, attr: null, data: null };
  $("detail").hidden = false;
  $("detail-title").textContent = name;
  $("day").value = day;
  loadDetail();
  $("detail").scrollIntoView({ block: "nearest" });
}

async function loadDetail() {
  const d = state.detail;
  const canvas = $("dayplot");
  const params = new URLSearchParams({ object: d.object, day: d.day, bins: canvas.width });
  if (d.start !== null) { params.set("start", d.start); params.set("end", d.end); }
  $("plot-info").textContent = "reading ...";
  const read = ++state.reads;
  try {
    const data = await (await api(`${API}/series?${params}`)).json();
    // another object, range or refresh was asked for meanwhile: its answer draws, not this one
    if (read !== state.reads) return;
    d.data = data;
    const attrs = Object.keys(data.attributes);
    const select = $("attr");
    select.replaceChildren(...attrs.map((a) => new Option(a, a)));
    if (!attrs.includes(d.attr)) d.attr = attrs[0] || null;
    select.value = d.attr || "";
    drawDetail();
  } catch (err) {
    if (read === state.reads) showError(err);
  }
}

function followDetail(entry) {
  // today's whole-day view grows with the live values (re-read at most every 10 s)
  const d = state.detail;
  if (!entry || !d || d.day !== state.cfg.today || d.start !== null || document.hidden) return;
  if (!d.reread || Date.now() - d.reread > 10000) { d.reread = Date.now(); loadDetail(); }
}

function drawDetail() {
  const d = state.detail;
  const canvas = $("dayplot");
  const ctx = canvas.getContext("2d");
  const W = canvas.width, H = canvas.height, L = 70, R = 10, T = 10, B = 30;
  ctx.clearRect(0, 0, W, H);
  const s = d.data && d.attr ? d.data.attributes[d.attr] : null;
  const t0 = d.data.start, t1 = d.data.end;
  const n = s ? s.t.length : 0;
  canvas.dataset.points = n;
  canvas.dataset.start = t0;
  canvas.dataset.end = t1;
  const binned = s && s.mean !== undefined;
  $("plot-info").textContent = n
    ? `${d.data.rows.toLocaleString()} rows` + (binned ? `, ${n} bins of ${age(s.width)}` : "")
    : "no readings in this range";
  ctx.strokeStyle = "#888";
  ctx.strokeRect(L, T, W - L - R, H - T - B);
  ctx.font = "12px sans-serif";
  ctx.fillStyle = "#333";
  drawTimeAxis(ctx, t0, t1, L, W - R, H - B);
  if (!n) return;
  const lows = binned ? s.min : s.v, highs = binned ? s.max : s.v;
  let lo = Math.min(...lows), hi = Math.max(...highs);
  if (lo === hi) { lo -= 1; hi += 1; }
  const x = (t) => L + (t - t0) / (t1 - t0) * (W - L - R);
  const y = (v) => H - B - (v - lo) / (hi - lo) * (H - T - B);
  for (let i = 0; i <= 4; i++) {
    const v = lo + (hi - lo) * i / 4;
    ctx.fillText(format(v), 4, y(v) + 4);
  }
  if (binned) {  // the range of each bin, then its mean
    ctx.fillStyle = "rgba(31, 111, 178, 0.25)";
    s.t.forEach((t, i) => {
      ctx.fillRect(x(t - s.width / 2), y(s.max[i]), Math.max(1, x(t + s.width / 2) - x(t - s.width / 2)),
        Math.max(1, y(s.min[i]) - y(s.max[i])));
    });
  }
  const values = binned ? s.mean : s.v;
  ctx.strokeStyle = "#1f6fb2";
  ctx.lineWidth = 1.5;
  ctx.beginPath();
  s.t.forEach((t, i) => (i ? ctx.lineTo(x(t), y(values[i])) : ctx.moveTo(x(t), y(values[i]))));
  ctx.stroke();
  if (n === 1) ctx.fillRect(x(s.t[0]) - 2, y(values[0]) - 2, 4, 4);
}

function drawTimeAxis(ctx, t0, t1, x0, x1, yAxis) {
  const span = t1 - t0;
  const steps = [1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 10800, 21600];
  const step = steps.find((s) => span / s <= 10) || 43200;
  const fmt = new Intl.DateTimeFormat(undefined, {
    timeZone: state.cfg.timezone, hour: "2-digit", minute: "2-digit",
    second: step < 60 ? "2-digit" : undefined, hourCycle: "h23",
  });
  // ticks on round local times: the facility's wall clock at t0, in seconds of its day
  const wall = new Intl.DateTimeFormat("en-GB", {
    timeZone: state.cfg.timezone, hour: "numeric", minute: "numeric", second: "numeric",
    hourCycle: "h23",
  }).formatToParts(new Date(t0 * 1000));
  const part = (type) => Number(wall.find((p) => p.type === type).value);
  const into = (part("hour") * 3600 + part("minute") * 60 + part("second")) % step;
  ctx.fillStyle = "#333";
  for (let t = t0 + (into ? step - into : 0); t <= t1; t += step) {
    const x = x0 + (t - t0) / span * (x1 - x0);
    ctx.fillText(fmt.format(new Date(t * 1000)), x - 16, yAxis + 16);
    ctx.beginPath();
    ctx.moveTo(x, yAxis);
    ctx.lineTo(x, yAxis + 4);
    ctx.stroke();
  }
}

// zoom: drag across the plot
(function zoom() {
  const canvas = $("dayplot");
  let from = null;
  const at = (event) => {
    const box = canvas.getBoundingClientRect();
    return (event.clientX - box.left) * canvas.width / box.width;
  };
  const time = (px) => {
    const d = state.detail.data;
    const L = 70, R = 10;
    const f = Math.min(1, Math.max(0, (px - L) / (canvas.width - L - R)));
    return d.start + f * (d.end - d.start);
  };
  canvas.addEventListener("mousedown", (e) => { from = at(e); });
  canvas.addEventListener("mousemove", (e) => {
    if (from === null) return;
    drawDetail();
    const ctx = canvas.getContext("2d");
    ctx.fillStyle = "rgba(0, 0, 0, 0.1)";
    ctx.fillRect(Math.min(from, at(e)), 0, Math.abs(at(e) - from), canvas.height);
  });
  canvas.addEventListener("mouseup", (e) => {
    const to = at(e);
    if (from !== null && Math.abs(to - from) > 5 && state.detail && state.detail.data) {
      const a = time(Math.min(from, to)), b = time(Math.max(from, to));
      if (b - a >= 1) { state.detail.start = a; state.detail.end = b; loadDetail(); }
    }
    from = null;
  });
  canvas.addEventListener("dblclick", () => {
    state.detail.start = state.detail.end = null;
    loadDetail();
  });
})();

$("reset-zoom").addEventListener("click", () => {
  state.detail.start = state.detail.end = null;
  loadDetail();
});
$("day").addEventListener("change", () => {
  if (!$("day").value) return;
  state.detail.day = $("day").value;
  state.detail.start = state.detail.end = null;
  loadDetail();
});
$("attr").addEventListener("change", () => { state.detail.attr = $("attr").value; drawDetail(); });

async function download(format) {
  const d = state.detail;
  const params = new URLSearchParams({ object: d.object, day: d.day, format });
  try {
    const response = await api(`${API}/export?${params}`);
    const blob = await response.blob();
    const link = document.createElement("a");
    link.href = URL.createObjectURL(blob);
    link.download = `${d.object}.${d.day}.${format === "csv" ? "csv" : "dat"}`;
    link.click();
    setTimeout(() => URL.revokeObjectURL(link.href), 10000);
  } catch (err) {
    showError(err);
  }
}
$("download-csv").addEventListener("click", () => download("csv"));
$("download-ascii").addEventListener("click", () => download("ascii"));

start().catch(showError);
