// live_py page: renders the /events stream (snapshot, then activity events). No dependencies.
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

  const es = new EventSource("/events");
  es.onopen = function () { status.textContent = "live"; status.className = "status ok"; };
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
    for (const c of ev.changes) {
      state[c.table] = { inserted: c.inserted, delta: c.delta, changed: when };
      const li = document.createElement("li");
      li.textContent = when + "  " + c.table + "  +" + c.delta + " rows (" + c.inserted + " in all)";
      activity.prepend(li);
    }
    while (activity.children.length > 50) activity.lastChild.remove();
    render();
  });
})();
