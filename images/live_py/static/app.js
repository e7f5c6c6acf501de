// live_py page: renders the /events stream (snapshot, then activity events) as a table, a list and a chart of
// rows per minute per table (inline SVG, drawn here; the past minutes come from /api/activity). No dependencies,
// no build step.
"use strict";
(function () {
  const tables = document.getElementById("tables");
  const activity = document.getElementById("activity");
  const status = document.getElementById("status");
  const state = {};

  function cell(text, cls) {
    const td = document.createElement("td");
    td.textContent = text;
    if (cls) td.className = cls;
    return td;
  }

  function render() {
    const names = Object.keys(state).sort();
    tables.replaceChildren();
    if (names.length === 0) {
      const tr = document.createElement("tr");
      tr.appendChild(cell("no tables yet"));
      tables.appendChild(tr);
      return;
    }
    for (const name of names) {
      const t = state[name];
      const tr = document.createElement("tr");
      tr.appendChild(cell(name));
      tr.appendChild(cell(String(t.inserted), "n"));
      tr.appendChild(cell(t.changed ? "+" + t.delta + " at " + t.changed : "", "n"));
      tables.appendChild(tr);
    }
  }

  // --- the chart: rows per minute per table -------------------------------------------------------------------
  const SVG = "http://www.w3.org/2000/svg";
  const COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"];
  // rows: table -> {minute: rows}; pending: activity events that arrive while /api/activity is loading
  const chart = { minutes: 30, step: 60, through: 0, offset: 0, rows: {}, loading: false, pending: [] };
  const svg = document.getElementById("chart");
  const legend = document.getElementById("legend");
  const summary = document.getElementById("chart-summary");

  function el(name, attrs, text) {
    const e = document.createElementNS(SVG, name);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, String(v));
    if (text !== undefined) e.textContent = text;
    return e;
  }

  function add(table, when, rows) {
    const minute = Math.floor(when / chart.step) * chart.step;
    const t = chart.rows[table] || (chart.rows[table] = {});
    t[minute] = (t[minute] || 0) + rows;
  }

  // The server's minutes, replacing what the page had (on load and after every reconnect).
  function loadActivity() {
    chart.loading = true;
    fetch("/api/activity", { cache: "no-store" }).then(function (r) { return r.json(); }).then(function (a) {
      chart.minutes = a.minutes;
      chart.step = a.step;
      chart.through = a.through || 0;
      chart.offset = a.time - Date.now() / 1000;
      chart.rows = {};
      for (const [table, values] of Object.entries(a.tables)) {
        chart.rows[table] = {};
        values.forEach(function (v, i) { if (v) chart.rows[table][a.start + i * a.step] = v; });
      }
      chart.loading = false;
      for (const ev of chart.pending.splice(0)) count(ev);
      drawChart();
    }).catch(function () { chart.loading = false; summary.textContent = "the activity could not be loaded"; });
  }

  // An activity event into the chart, unless /api/activity's answer already counted it.
  function count(ev) {
    if (chart.loading) { chart.pending.push(ev); return; }
    if (ev.time <= chart.through) return;
    for (const c of ev.changes) add(c.table, ev.time, c.delta);
  }

  function niceMax(v) {
    if (v <= 5) return 5;
    const p = Math.pow(10, Math.floor(Math.log10(v)));
    for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
    return 10 * p;
  }

  function drawChart() {
    const W = 720, H = 240, L = 48, R = 12, T = 26, B = 30;
    const n = chart.minutes, step = chart.step;
    const end = Math.floor((Date.now() / 1000 + chart.offset) / step) * step;
    const start = end - (n - 1) * step;
    const names = Object.keys(chart.rows).sort();
    const series = names.map(function (name) {
      const values = [];
      for (let i = 0; i < n; i++) values.push(chart.rows[name][start + i * step] || 0);
      return { name: name, values: values };
    });
    let max = 0;
    for (const s of series) for (const v of s.values) max = Math.max(max, v);
    const ymax = niceMax(max);
    const x = function (i) { return L + (n === 1 ? 0 : i * (W - L - R) / (n - 1)); };
    const y = function (v) { return T + (H - T - B) * (1 - v / ymax); };

    svg.replaceChildren();
    svg.setAttribute("data-start", start);
    svg.setAttribute("data-step", step);
    for (const v of [0, ymax / 2, ymax]) {
      svg.appendChild(el("line", { class: v ? "grid" : "axis", x1: L, x2: W - R, y1: y(v), y2: y(v) }));
      svg.appendChild(el("text", { x: L - 6, y: y(v) + 4, "text-anchor": "end" }, String(v)));
    }
    svg.appendChild(el("line", { class: "axis", x1: L, x2: L, y1: T, y2: H - B }));
    const label = function (i, text, anchor) {
      svg.appendChild(el("text", { x: x(i), y: H - B + 16, "text-anchor": anchor }, text));
    };
    label(0, "-" + (n - 1) + " min", "start");
    label(Math.floor((n - 1) / 2), "-" + (n - 1 - Math.floor((n - 1) / 2)) + " min", "middle");
    label(n - 1, "now", "end");
    svg.appendChild(el("text", { x: 4, y: 12, "text-anchor": "start" }, "rows/min"));

    legend.replaceChildren();
    const parts = [];
    series.forEach(function (s, k) {
      const color = COLORS[k % COLORS.length];
      const points = s.values.map(function (v, i) { return x(i).toFixed(1) + "," + y(v).toFixed(1); }).join(" ");
      const line = el("polyline", { class: "series", points: points, stroke: color,
        "data-table": s.name, "data-values": s.values.join(",") });
      line.appendChild(el("title", {}, s.name));
      svg.appendChild(line);
      const total = s.values.reduce(function (a, b) { return a + b; }, 0);
      const now = s.values[n - 1];
      const li = document.createElement("li");
      li.setAttribute("data-table", s.name);
      const sw = el("svg", { class: "swatch", viewBox: "0 0 10 10", width: 12, height: 12 });
      sw.appendChild(el("rect", { width: 10, height: 10, rx: 2, fill: color }));
      li.appendChild(sw);
      li.appendChild(document.createTextNode(" " + s.name + ": " + now + " rows/min now, " + total + " in " + n + " min"));
      legend.appendChild(li);
      parts.push(s.name + ": " + total + " rows in the last " + n + " minutes, " + now + " in the current minute");
    });
    summary.textContent = parts.length ? parts.join("; ") : "no tables yet";
  }

  setInterval(drawChart, 5000); // the window slides with time

  const es = new EventSource("/events");
  es.onopen = function () { status.textContent = "live"; status.className = "status ok"; loadActivity(); };
  es.onerror = function () { status.textContent = "reconnecting…"; status.className = "status bad"; };
  es.addEventListener("snapshot", function (e) {
    const snap = JSON.parse(e.data);
    for (const [name, t] of Object.entries(snap.tables || {})) {
      state[name] = Object.assign(state[name] || {}, { inserted: t.inserted });
    }
    render();
  });
  es.addEventListener("activity", function (e) {
    const ev = JSON.parse(e.data);
    const when = new Date(ev.time * 1000).toLocaleTimeString();
    count(ev);
    for (const c of ev.changes) {
      state[c.table] = { inserted: c.inserted, delta: c.delta, changed: when };
      const li = document.createElement("li");
      li.textContent = when + "  " + c.table + "  +" + c.delta + " rows (" + c.inserted + " in all)";
      activity.prepend(li);
    }
    while (activity.children.length > 50) activity.lastChild.remove();
    render();
    drawChart();
  });
})();
