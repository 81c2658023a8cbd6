// evpilot dashboard: plain ES module, no build step, no external requests (served by evpilot).
const V = 230; // nominal phase voltage for A → W where no meter measures power
const MODES = ["off", "normal", "smart", "solar", "min+solar"];
const PHASE_MODES = ["not_present", "always_1p", "always_3p", "solar_1p", "auto"];
const STATE_WORDS = {
  charger_free: "No car",
  charger_insert: "Car connected, waiting to start",
  charger_wait: "Ready, waiting for current",
  charger_charging: "Charging",
  charger_pause: "Paused",
  charger_end: "Finished",
  charger_fault: "Fault",
};
const COLORS = ["#1d5fd6", "#e0892a", "#2e7d32", "#8e24aa", "#c62828", "#00838f", "#6d4c41", "#546e7a"];

const ROLES = ["viewer", "operator", "admin"];

const state = { site: null, settings: null, chargers: {}, everConnected: false, ws: null, live: false, historyDay: null };
const $ = (sel, root = document) => root.querySelector(sel);
const num = (x, d = 1) => (x === null || x === undefined || Number.isNaN(x)) ? "–" : Number(x).toFixed(d);
const watts = (w) => (w === null || w === undefined) ? "–" : Math.abs(w) >= 1000 ? `${num(w / 1000, 2)} kW` : `${num(w, 0)} W`;
const sum = (xs) => xs.reduce((a, b) => a + b, 0);
function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c);
  return e;
}
function setText(root, field, text) {
  const node = root.querySelector(`[data-field="${field}"]`);
  if (node && node.textContent !== text) node.textContent = text;
}
function dur(s) {
  if (s == null) return "–";
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60);
  return `${h}h ${String(m).padStart(2, "0")}m`;
}

// ---- API calls ---------------------------------------------------------------------------------

// With auth configured the page logs in (POST /api/login): the session token goes to the REST calls
// as `Authorization: Bearer` and to the socket as the subprotocol "bearer.<token>" (a browser
// cannot set headers on a WebSocket).
let token = sessionStorage.getItem("evpilot.token");
// The role the login answered with; null without auth (then everything shows). It only decides
// which controls show: the server checks every request itself.
let role = sessionStorage.getItem("evpilot.role");
const may = (need) => role === null || ROLES.indexOf(role) >= ROLES.indexOf(need);
// No browser credentials: a 401 (it challenges for HTTP basic) must come back to the page, which
// shows its own form, rather than make the browser wait on its password dialog.
async function api(method, path, body) {
  const init = { method, headers: {}, credentials: "omit" };
  if (token) init.headers.authorization = `Bearer ${token}`;
  if (body !== undefined) { init.headers["content-type"] = "application/json"; init.body = JSON.stringify(body); }
  const r = await fetch(path, init);
  const text = await r.text();
  let doc = null;
  try { doc = text ? JSON.parse(text) : null; } catch { doc = null; }
  if (r.status === 401 && path !== "/api/login") needLogin(token ? "your login has ended: log in again" : "");
  if (!r.ok) throw Object.assign(new Error((doc && doc.detail) || `${r.status} ${r.statusText}`), { status: r.status });
  return doc;
}

// ---- site ---------------------------------------------------------------------------------------

function bar(label, value, limit) {
  const pct = limit > 0 ? Math.max(0, Math.min(100, (100 * value) / limit)) : 0;
  const cls = value > limit ? "fill over" : pct > 85 ? "fill hot" : "fill";
  return el("div", { class: "bar" }, el("span", {}, label),
    el("div", { class: "track" }, el("div", { class: cls, style: `width:${pct.toFixed(1)}%` })),
    el("span", {}, `${num(value)} / ${num(limit, 0)} A`));
}
function phaseBars(currents, limit) {
  const box = el("div");
  (currents || [0, 0, 0]).forEach((a, i) => box.append(bar(`L${i + 1}`, a, limit)));
  return box;
}
function circuitLoad(name) {
  // A metered circuit shows its meter; otherwise the chargers on it and on the circuits below it.
  const site = state.site, circuits = (state.settings && state.settings.circuits) || [];
  const c = circuits.find((x) => x.name === name);
  const reading = site && site.meters ? site.meters[`circuit:${name}`] : null;
  if (c && c.metered && reading) return reading.currents;
  const load = [0, 0, 0];
  for (const cid of c ? c.chargers : []) {
    const ch = state.chargers[cid];
    if (ch) ch.amperage.forEach((a, i) => { load[i] += a; });
  }
  for (const child of circuits.filter((x) => x.parent === name)) circuitLoad(child.name).forEach((a, i) => { load[i] += a; });
  return load;
}
function circuitTree(parent) {
  const circuits = (state.settings && state.settings.circuits) || [];
  const kids = circuits.filter((c) => c.parent === parent);
  if (!kids.length) return null;
  const ul = el("ul", { class: "tree" });
  for (const c of kids) {
    const li = el("li", { "data-circuit": c.name }, el("div", { class: "cname" }, `${c.name} · ${num(c.limit, 0)} A${c.chargers.length ? " · " + c.chargers.join(", ") : ""}`),
      phaseBars(circuitLoad(c.name), c.limit));
    const sub = circuitTree(c.name);
    if (sub) li.append(sub);
    ul.append(li);
  }
  return ul;
}
function renderSite() {
  const s = state.site;
  if (!s) return;
  const root = $("#site-card");
  setText(root, "site-mode", s.mode);
  const sim = s.sim;
  const mains = s.mains;
  const grid = mains ? (mains.power ?? (mains.powers && mains.powers.every((p) => p !== null) ? sum(mains.powers) : V * sum(mains.currents))) : null;
  const house = sim ? V * sum(sim.house) : s.base_load ? V * sum(s.base_load) : null;
  const battery = sim ? sim.battery_w : s.battery_current !== null ? V * s.battery_current : null;
  setText(root, "pv_w", sim ? watts(sim.pv_w) : "–");
  setText(root, "house_w", watts(house));
  setText(root, "battery_w", watts(battery));
  setText(root, "grid_w", grid === null ? "–" : `${watts(Math.abs(grid))} ${grid >= 0 ? "import" : "export"}`);
  setText(root, "mains-state", mains ? (mains.fresh ? "" : "meter stale") + (s.fallback ? " · fallback" : "") : "no reading");
  $("#mains").replaceChildren(phaseBars(mains ? mains.currents : null, s.mains_limit));
  const tree = circuitTree(null);
  if (tree) $("#circuits").replaceChildren(tree);
}

// ---- chargers -----------------------------------------------------------------------------------

function limitValue(c) {
  const src = c.limit_source, L = c.limits;
  if (src === "idle") return ["none", c.plugged ? "not drawing current now" : "no car plugged in"];
  if (src === "max") return [`charger MAX ${num(L.max_current)} A`, "the charger's configured maximum"];
  if (src === "cable") return [`cable ${num(L.cable)} A`, "the charging cable's rating"];
  if (src === "user" && L.user !== null) return [`your limit ${num(L.user)} A`, "the current limit set for this charger"];
  if (src === "override" && L.override !== null) return [`override ${num(L.override)} A`, "an override is in force"];
  if (src === "temperature") return ["temperature 0 A", `the charger is too hot (${num(c.temperature)} °C)`];
  if (src.startsWith("ocpp:") && L.profiles[src]) return [`${src} ${num(L.profiles[src].amps)} A`, "the OCPP charging profile in force"];
  if (L.leases[src]) return [`lease ${src} ${num(L.leases[src].amps)} A`, "a limit leased by an external controller"];
  const s = state.site;
  if (s && src === "mains") {
    const base = s.base_load ? Math.max(...s.base_load) : null;
    const others = Object.values(state.chargers).filter((x) => x.id !== c.id).map((x) => `${num(x.current.allocated)} A ${x.id}`);
    return [`mains ${num(s.mains_limit, 0)} A`, [`${num(base)} A house`, ...others, `${num(c.current.allocated)} A ${c.id}`].join(" + ")];
  }
  if (s && src.startsWith("circuit:")) {
    const name = src.slice(8);
    const circuit = ((state.settings && state.settings.circuits) || []).find((x) => x.name === name);
    const parts = circuit ? circuit.chargers.map((id) => `${num(state.chargers[id] ? state.chargers[id].current.allocated : null)} A ${id}`) : [];
    const reading = s.meters ? s.meters[src] : null;
    if (circuit && circuit.metered && reading) {
      const other = Math.max(...reading.currents) - sum(circuit.chargers.map((id) => state.chargers[id] ? Math.max(...state.chargers[id].amperage) : 0));
      parts.unshift(`${num(Math.max(0, other))} A other load`);
    }
    return [`circuit ${name} ${circuit ? num(circuit.limit, 0) : "?"} A`, parts.join(" + ")];
  }
  if (s && src === "capacity") return [`capacity ${num(s.capacity_limit)} A`, "the capacity (peak) limit of the site"];
  // A site-wide cap binds as site:<name> (the OCPP station cap as its own ocpp:ChargePointMaxProfile).
  const cap = src.startsWith("site:") ? src.slice(5) : src;
  if (s && s.site_limits && s.site_limits[cap]) return [`site ${cap} limit ${num(s.site_limits[cap].amps)} A`, "an external cap on all chargers together"];
  if (src === "solar" && s) return [`solar surplus ${num(s.solar_surplus)} A`, s.solar_surplus !== null && s.solar_surplus < 6 ? "not enough sun to charge" : "the PV power left over by the house"];
  return [src, ""];
}
function chargerCard(c) {
  const id = c.id;
  const err = el("div", { class: "error", "data-field": "error", "data-charger": id, role: "alert" });
  const act = (fn) => async () => {
    err.textContent = "";
    try { const doc = await fn(); if (doc && doc.id === id) { state.chargers[id] = doc; renderCharger(doc); } }
    catch (e) { err.textContent = e.message; }
  };
  const mode = el("select", { "data-charger": id, "data-action": "mode", "aria-label": "mode" },
    el("option", { value: "" }, "site default"), ...MODES.map((m) => el("option", { value: m }, m)));
  mode.addEventListener("change", act(() => api("PUT", `/api/chargers/${id}/mode`, { mode: mode.value || null })));
  const max = c.limits.max_current;
  const slider = el("input", { type: "range", min: "6", max: String(max), step: "0.1", "data-charger": id, "aria-label": "current limit slider" });
  const input = el("input", { type: "number", step: "0.1", "data-charger": id, "data-field": "current-input", "aria-label": "current limit (A)" });
  // An edited value stays until it is sent and taken: a live update arriving between leaving the
  // input and the click on Set must not put the old value back.
  const editing = (what) => () => { card.dataset[what] = "1"; };
  const sent = (what, call) => async () => { const doc = await call(); delete card.dataset[what]; return doc; };
  slider.addEventListener("input", () => { input.value = slider.value; card.dataset.editCurrent = "1"; });
  input.addEventListener("input", () => { slider.value = input.value; card.dataset.editCurrent = "1"; });
  const setCurrent = act(sent("editCurrent", () => {
    const text = input.value.trim();
    return api("PUT", `/api/chargers/${id}/current_limit`, { current: text === "" ? null : Number(text) });
  }));
  slider.addEventListener("change", setCurrent);
  input.addEventListener("keydown", (e) => { if (e.key === "Enter") setCurrent(); });
  const phase = el("select", { "data-charger": id, "data-action": "phase_mode", "aria-label": "phase mode" },
    ...PHASE_MODES.map((m) => el("option", { value: m }, m)));
  phase.addEventListener("change", act(() => api("PUT", `/api/chargers/${id}/phase_mode`, { phase_mode: phase.value })));
  const capKwh = el("input", { type: "number", step: "0.1", min: "0", "data-charger": id, "data-field": "cap-energy", "aria-label": "energy cap (kWh)", placeholder: "kWh" });
  const capMin = el("input", { type: "number", step: "1", min: "0", "data-charger": id, "data-field": "cap-time", "aria-label": "time cap (min)", placeholder: "min" });
  const capValue = (input) => (input.value.trim() === "" ? null : Number(input.value));
  const setCaps = act(sent("editCaps", () => api("PUT", `/api/chargers/${id}/caps`, { energy_kwh: capValue(capKwh), time_min: capValue(capMin) })));
  for (const capInput of [capKwh, capMin]) capInput.addEventListener("input", editing("editCaps"));
  const enable = el("input", { type: "checkbox", "data-charger": id, "data-action": "enable" });
  enable.addEventListener("change", act(() => api("PUT", `/api/chargers/${id}/enabled`, { enabled: enable.checked })));
  const card = el("article", { class: "card", id: `c-${id}`, "data-charger": id },
    el("h2", {}, el("span", { "data-field": "name" }, c.name || id), el("span", { class: "pill", "data-field": "state" }, "")),
    el("div", { class: "big", "data-field": "power" }, ""),
    el("table", { class: "kv" }, el("tbody", {},
      ...[["Currents", "amperage"], ["Current chain", "chain"], ["Binding limit", "limit"], ["Why", "reason"],
        ["Mode · phases", "mode"], ["Session", "session"], ["Caps", "caps"], ["Errors", "errors"]]
        .map(([label, field]) => el("tr", {}, el("td", {}, label), el("td", { "data-field": field }, "")))
    )),
    el("div", { class: "controls", "data-charger": id },
      el("button", { class: "primary", "data-charger": id, "data-action": "start", onclick: act(() => api("POST", `/api/chargers/${id}/start`)) }, "Start"),
      el("button", { "data-charger": id, "data-action": "stop", onclick: act(() => api("POST", `/api/chargers/${id}/stop`)) }, "Stop"),
      mode,
      el("label", {}, enable, " enabled"),
      el("div", { class: "current" }, el("span", {}, "Limit"), slider, input,
        el("button", { "data-charger": id, "data-action": "current", onclick: setCurrent }, "Set"),
        el("button", { "data-charger": id, "data-action": "current-clear", onclick: act(sent("editCurrent", () => api("PUT", `/api/chargers/${id}/current_limit`, { current: null }))) }, "Clear")),
      el("div", { class: "current" }, el("span", {}, "Caps"), capKwh, el("span", {}, "kWh"), capMin, el("span", {}, "min"),
        el("button", { "data-charger": id, "data-action": "caps", onclick: setCaps }, "Set")),
      el("label", {}, "phases ", phase)),
    err);
  return card;
}
function renderCharger(c) {
  let card = document.getElementById(`c-${c.id}`);
  if (!card) { card = chargerCard(c); $("#chargers").append(card); }
  $(".controls", card).hidden = !may("operator");
  const pill = $('[data-field="state"]', card);
  pill.className = `pill ${c.work_state.replace("charger_", "")}`;
  setText(card, "state", STATE_WORDS[c.work_state] || c.work_state);
  setText(card, "power", `${num(c.power_w / 1000, 2)} kW`);
  setText(card, "amperage", `${c.amperage.map((a) => num(a)).join(" / ")} A`);
  const ch = c.current;
  setText(card, "chain", `${num(ch.allocated)} allocated → ${num(ch.available)} available → ${num(ch.commanded)} commanded → ${num(ch.signaled)} A signaled`);
  const [value, reason] = limitValue(c);
  setText(card, "limit", value);
  setText(card, "reason", reason);
  setText(card, "mode", `${c.mode}${c.mode_setting === null ? " (site)" : ""} · ${c.phases} phase${c.phases === 1 ? "" : "s"}`);
  const s = c.session;
  setText(card, "session", s ? `${num(s.energy_kwh, 2)} kWh · ${dur(s.duration_s)}${s.id_tag ? " · " + s.id_tag : ""}` : "none");
  setText(card, "caps", [c.caps.energy_kwh ? `${c.caps.energy_kwh} kWh` : null, c.caps.time_min ? `${c.caps.time_min} min` : null].filter(Boolean).join(" · ") || "none");
  setText(card, "errors", c.errors.length ? c.errors.join(", ") : "none");
  const mode = $('[data-action="mode"]', card);
  if (document.activeElement !== mode) mode.value = c.mode_setting || "";
  const enable = $('[data-action="enable"]', card);
  enable.checked = c.enabled;
  const phase = $('[data-action="phase_mode"]', card);
  if (document.activeElement !== phase) phase.value = c.phase_mode;
  for (const [field, value] of [["cap-energy", c.caps.energy_kwh], ["cap-time", c.caps.time_min]]) {
    const input = $(`[data-field="${field}"]`, card);
    if (document.activeElement !== input && !card.dataset.editCaps) input.value = value === null ? "" : String(value);
  }
  const input = $('[data-field="current-input"]', card);
  const slider = $('input[type="range"]', card);
  slider.max = String(c.limits.max_current); // MAX may change in the settings
  if (document.activeElement !== input && document.activeElement !== slider && !card.dataset.editCurrent) {
    const v = c.limits.user === null ? "" : String(c.limits.user);
    input.value = v;
    slider.value = v === "" ? String(c.limits.max_current) : v;
  }
}

// ---- charts (hand-drawn SVG) --------------------------------------------------------------------

const SVG = "http://www.w3.org/2000/svg";
function svg(tag, attrs) { const e = document.createElementNS(SVG, tag); for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v); return e; }
function drawChart(box, t, series) {
  const started = performance.now();
  const W = 800, H = 160, L = 44, R = 6, T = 6, B = 18;
  const names = Object.keys(series);
  let max = 0;
  for (const n of names) for (const v of series[n]) if (v !== null && v > max) max = v;
  let min = 0;
  for (const n of names) for (const v of series[n]) if (v !== null && v < min) min = v;
  if (max === min) max = min + 1;
  const x = (i) => L + ((W - L - R) * i) / Math.max(1, t.length - 1);
  const y = (v) => T + ((H - T - B) * (max - v)) / (max - min);
  const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: "none", role: "img" });
  root.append(svg("line", { class: "axis", x1: L, x2: W - R, y1: y(0), y2: y(0) }));
  for (const [v, label] of [[max, num(max, 0)], [min, num(min, 0)]]) {
    const text = svg("text", { x: 2, y: Math.min(H - B, Math.max(10, y(v) + 4)) }); text.textContent = label; root.append(text);
  }
  const fmt = (s) => new Date(s * 1000).toISOString().slice(5, 16).replace("T", " ");
  if (t.length) {
    for (const [i, anchor] of [[0, "start"], [t.length - 1, "end"]]) {
      const text = svg("text", { x: x(i), y: H - 4, "text-anchor": anchor }); text.textContent = fmt(t[i]); root.append(text);
    }
  }
  let points = 0;
  names.forEach((n, k) => {
    let d = "", pen = false;
    series[n].forEach((v, i) => {
      if (v === null) { pen = false; return; }
      d += `${pen ? "L" : "M"}${x(i).toFixed(1)} ${y(v).toFixed(1)}`; pen = true; points += 1;
    });
    const dashed = /limit|available/.test(n);
    root.append(svg("path", { d, fill: "none", stroke: COLORS[k % COLORS.length], "stroke-width": 1.5, "stroke-dasharray": dashed ? "4 3" : "none", "vector-effect": "non-scaling-stroke", "data-series": n }));
  });
  const legend = el("div", { class: "legend" }, ...names.map((n, k) => el("span", {}, el("i", { style: `background:${COLORS[k % COLORS.length]}` }), n)));
  box.replaceChildren(root, legend);
  box.dataset.points = String(points);
  // Until the frame after the chart was painted (read by bench/dashboard.py).
  requestAnimationFrame(() => requestAnimationFrame(() => performance.measure(`chart ${box.id}`, { start: started })));
}
async function loadHistory() {
  const status = $('[data-field="history-state"]');
  const day = state.historyDay;
  // A chosen day runs from its UTC midnight to the next; otherwise the last 24 h on the site's clock.
  const query = day ? `from=${day}T00:00:00Z&to=${nextDay(day)}T00:00:00Z&step=60` : "step=60";
  $('[data-field="history-title"]').textContent = day ? `${day} (UTC)` : "Last 24 h";
  try {
    const h = await api("GET", `/api/history?${query}`);
    if (state.historyDay !== day) return; // another day was chosen meanwhile
    const picker = $('[data-action="history-day"]');
    if (!day) picker.max = new Date(h.to * 1000).toISOString().slice(0, 10);
    const pick = (re) => Object.fromEntries(Object.entries(h.series).filter(([n]) => re.test(n)));
    drawChart($("#chart-mains"), h.t, pick(/^(mains_l\d|mains_limit)$/));
    drawChart($("#chart-power"), h.t, pick(/^(pv_w|house_w|battery_w|grid_w)$/));
    drawChart($("#chart-chargers"), h.t, pick(/^charger:.*:(current|available)$/));
    status.textContent = `${h.t.length} steps of ${h.step} s`;
    $("#charts").dataset.window = `${h.from}-${h.to}`;
  } catch (e) {
    status.textContent = `history unavailable: ${e.message}`;
  }
}

// ---- sessions -----------------------------------------------------------------------------------

function sessionQuery() {
  const form = $("#session-filters");
  const q = new URLSearchParams();
  for (const name of ["charger", "card", "from", "to"]) {
    const v = form.elements[name].value.trim();
    if (v) q.set(name, name === "to" ? nextDay(v) : v);
  }
  return q;
}
function nextDay(date) {
  // The "to" date is inclusive in the form, exclusive in the API.
  const d = new Date(`${date}T00:00:00Z`);
  return Number.isNaN(d.getTime()) ? date : new Date(d.getTime() + 86400e3).toISOString().slice(0, 10);
}
async function loadSessions() {
  const q = sessionQuery();
  const err = $('[data-field="sessions-error"]');
  $('[data-field="sessions-csv"]').setAttribute("href", `/api/sessions.csv?${q}`);
  try {
    const [rows, totals, months] = await Promise.all([
      api("GET", `/api/sessions?limit=200&${q}`),
      api("GET", `/api/sessions/totals?by=day&${q}`),
      api("GET", `/api/sessions/totals?by=month&${q}`),
    ]);
    err.textContent = "";
    const iso = (t) => new Date(t * 1000).toISOString().slice(0, 16).replace("T", " ");
    $('[data-field="sessions"]').replaceChildren(...rows.map((r) => el("tr", { "data-session": r.id },
      el("td", {}, iso(r.started_at)), el("td", {}, r.charger_id), el("td", {}, r.id_tag || "–"),
      el("td", {}, dur(r.ended_at - r.started_at)), el("td", {}, num(r.energy_kwh, 2)), el("td", {}, r.stop_reason))));
    for (const [field, doc] of [["totals", totals], ["totals-month", months]]) {
      $(`[data-field="${field}"]`).replaceChildren(...doc.totals.map((t) => el("tr", { "data-period": t.period },
        el("td", {}, t.period), el("td", {}, String(t.sessions)), el("td", {}, num(t.energy_kwh, 2)))));
    }
  } catch (e) {
    err.textContent = e.message;
  }
}
function sessionChargerOptions() {
  const select = $('[data-action="session-charger"]');
  for (const id of Object.keys(state.chargers)) {
    if (!select.querySelector(`option[value="${CSS.escape(id)}"]`)) select.append(el("option", { value: id }, id));
  }
}

// ---- live updates -------------------------------------------------------------------------------

function setConn(text, cls) { const c = $("#conn"); c.textContent = text; c.className = `conn ${cls}`; }
async function refused() {
  // Is the socket refused for want of a login? A read with the same credentials answers 401 then
  // (with auth off, or a server that is only restarting, it does not).
  try {
    const r = await fetch("/api/site", { headers: token ? { authorization: `Bearer ${token}` } : {}, credentials: "omit" });
    return r.status === 401;
  } catch { return false; }
}
function connect() {
  const url = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/api/ws`;
  const ws = token ? new WebSocket(url, [`bearer.${token}`]) : new WebSocket(url);
  state.ws = ws;
  let opened = false;
  ws.onopen = () => { opened = true; setConn(state.everConnected ? "live (reconnected)" : "live", "live"); state.everConnected = true; };
  ws.onclose = async () => {
    if (state.ws !== ws) return;
    setConn("connection lost, reconnecting…", "lost");
    if (!opened && await refused()) {
      needLogin("");
      return;
    }
    setTimeout(connect, 1000);
  };
  ws.onmessage = (ev) => {
    const frame = JSON.parse(ev.data);
    if (frame.topic === "site") { state.site = frame.message; renderSite(); }
    else if (frame.topic === "charger") { state.chargers[frame.message.id] = frame.message; renderCharger(frame.message); renderSite(); sessionChargerOptions(); }
    else if (frame.topic === "session" && frame.message.event === "ended") loadSessions();
  };
}
async function loadSettings() {
  try { state.settings = await api("GET", "/api/settings"); renderSite(); renderSettings(); } catch { /* shown as missing circuits */ }
}

// ---- settings (admin) ---------------------------------------------------------------------------

const settingsForm = $("#settings-form");
const setting = (name, root = settingsForm) => root.querySelector(`[data-setting="${name}"]`);
const numberOf = (input) => (input.value.trim() === "" ? null : Number(input.value));
function renderSettings(force = false) {
  const s = state.settings;
  if (!s || (settingsForm.dataset.dirty && !force)) return; // never overwrite what is being edited
  delete settingsForm.dataset.dirty;
  const mode = setting("mode");
  if (!mode.options.length) mode.append(...MODES.map((m) => el("option", { value: m }, m)));
  mode.value = s.mode;
  setting("mains_limit").value = String(s.mains_limit);
  setting("capacity_limit").value = s.capacity_limit === null ? "" : String(s.capacity_limit);
  for (const k of ["start_current", "stop_min", "max_import"]) setting(`solar.${k}`).value = String(s.solar[k]);
  if (s.circuits.length) {
    $('[data-field="settings-circuits"]').replaceChildren(...s.circuits.map((c) => el("label", {}, c.name,
      el("input", { type: "number", step: "0.1", "data-setting": "circuit", "data-circuit": c.name, value: String(c.limit) }))));
  }
  $('[data-field="settings-chargers"]').replaceChildren(...Object.entries(s.chargers).map(([id, c]) => el("tr", { "data-charger": id },
    el("td", {}, id),
    ...[["min_current", "0.1"], ["max_current", "0.1"], ["priority", "1"]].map(([k, step]) => el("td", {},
      el("input", { type: "number", step, "data-charger": id, "data-setting": k, "aria-label": `${id} ${k}`, value: String(c[k]) }))))));
}
function settingsChanges() {
  // Only what differs from the settings as loaded: the API keeps the rest as it is.
  const s = state.settings, body = {};
  const changed = (input, now) => { const v = numberOf(input); return v !== now ? v : undefined; };
  if (setting("mode").value !== s.mode) body.mode = setting("mode").value;
  const mains = numberOf(setting("mains_limit"));
  if (mains !== null && mains !== s.mains_limit) body.mains_limit = mains;
  const cap = changed(setting("capacity_limit"), s.capacity_limit);
  if (cap !== undefined) body.capacity_limit = cap;
  const solar = {};
  for (const k of ["start_current", "stop_min", "max_import"]) {
    const v = changed(setting(`solar.${k}`), s.solar[k]);
    if (v !== undefined) solar[k] = v;
  }
  if (Object.keys(solar).length) body.solar = solar;
  const circuits = {};
  for (const input of settingsForm.querySelectorAll('[data-setting="circuit"]')) {
    const c = s.circuits.find((x) => x.name === input.dataset.circuit);
    const v = c ? changed(input, c.limit) : undefined;
    if (v !== undefined) circuits[input.dataset.circuit] = v;
  }
  if (Object.keys(circuits).length) body.circuits = circuits;
  const chargers = {};
  for (const [id, c] of Object.entries(s.chargers)) {
    const row = {};
    for (const k of ["min_current", "max_current", "priority"]) {
      const input = settingsForm.querySelector(`[data-charger="${CSS.escape(id)}"][data-setting="${k}"]`);
      const v = input ? changed(input, c[k]) : undefined;
      if (v !== undefined) row[k] = v;
    }
    if (Object.keys(row).length) chargers[id] = row;
  }
  if (Object.keys(chargers).length) body.chargers = chargers;
  return body;
}
settingsForm.addEventListener("input", () => { settingsForm.dataset.dirty = "1"; });
settingsForm.addEventListener("reset", (e) => { e.preventDefault(); $('[data-field="settings-error"]').textContent = ""; renderSettings(true); });
settingsForm.addEventListener("submit", async (e) => {
  e.preventDefault();
  const err = $('[data-field="settings-error"]'), status = $('[data-field="settings-state"]');
  err.textContent = ""; status.textContent = "";
  const body = settingsChanges();
  if (!Object.keys(body).length) { status.textContent = "nothing changed"; return; }
  try {
    state.settings = await api("PUT", "/api/settings", body);
    renderSettings(true);
    renderSite();
    status.textContent = `saved: ${Object.keys(body).join(", ")}`;
  } catch (x) {
    err.textContent = x.message; // the API's refusal; it changed none of them
  }
});

// ---- login --------------------------------------------------------------------------------------

function applyRole() {
  document.body.dataset.role = role || "admin";
  $("#settings").hidden = !may("admin");
  for (const controls of document.querySelectorAll("#chargers .controls")) controls.hidden = !may("operator");
  $("#user").hidden = !token;
  setText($("#user"), "user", token ? `${sessionStorage.getItem("evpilot.user") || ""} (${role})` : "");
}
function needLogin(message) {
  if (!state.live && !$("#login").hidden) return;
  token = null; role = null; state.live = false; state.everConnected = false;
  for (const k of ["token", "role", "user"]) sessionStorage.removeItem(`evpilot.${k}`);
  const ws = state.ws;
  state.ws = null;
  if (ws) ws.close();
  state.chargers = {};
  $("#chargers").replaceChildren();
  $("main").hidden = true;
  $("#user").hidden = true;
  $("#login").hidden = false;
  $('[data-field="login-error"]').textContent = message;
  setConn("log in to see the site", "lost");
  $("#login-name").focus();
}
$("#login").addEventListener("submit", async (e) => {
  e.preventDefault();
  const form = e.target, err = $('[data-field="login-error"]');
  err.textContent = "";
  try {
    const doc = await api("POST", "/api/login", { name: form.elements.name.value, password: form.elements.password.value });
    token = doc.token; role = doc.role;
    sessionStorage.setItem("evpilot.token", token);
    sessionStorage.setItem("evpilot.role", role);
    sessionStorage.setItem("evpilot.user", form.elements.name.value);
    form.reset();
    start();
  } catch (x) {
    err.textContent = x.message;
  }
});
$('[data-action="logout"]').addEventListener("click", async () => {
  try { await api("POST", "/api/logout"); } catch { /* the session is forgotten here either way */ }
  needLogin("logged out");
});

// ---- start --------------------------------------------------------------------------------------

async function start() {
  // Without auth the settings answer at once; with auth a missing or lapsed login answers 401
  // (api() then shows the login form).
  try { state.settings = await api("GET", "/api/settings"); } catch (e) { if (e.status === 401) return; }
  state.live = true;
  $("#login").hidden = true;
  $("main").hidden = false;
  applyRole();
  renderSettings(true);
  renderSite();
  connect();
  loadSessions();
  loadHistory();
}
$("#session-filters").addEventListener("submit", (e) => { e.preventDefault(); loadSessions(); });
document.addEventListener("click", async (e) => {
  // Logged in, the CSV is fetched with the token (a plain link would make the browser ask for a
  // password) and saved from memory.
  const link = e.target.closest('a[href^="/api/sessions.csv"]');
  if (!link || !token) return;
  e.preventDefault();
  const err = $('[data-field="sessions-error"]');
  try {
    const r = await fetch(link.getAttribute("href"), { headers: { authorization: `Bearer ${token}` }, credentials: "omit" });
    if (r.status === 401) { needLogin("your login has ended: log in again"); return; }
    if (!r.ok) throw new Error(`${r.status} ${r.statusText}`);
    const url = URL.createObjectURL(await r.blob());
    const save = el("a", { href: url, download: "sessions.csv" });
    document.body.append(save);
    save.click();
    save.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10_000);
  } catch (x) {
    err.textContent = `CSV: ${x.message}`;
  }
});
$('[data-action="history-day"]').addEventListener("change", (e) => { state.historyDay = e.target.value || null; loadHistory(); });
$('[data-action="history-last24"]').addEventListener("click", () => { $('[data-action="history-day"]').value = ""; state.historyDay = null; loadHistory(); });
start();
setInterval(() => { if (state.live) loadHistory(); }, 60_000);
setInterval(() => { if (state.live) loadSettings(); }, 60_000);
