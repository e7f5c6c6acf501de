// The status page's live updates: every 3 seconds it reads /status (the same JSON the page was rendered
// from). When the layout changed (an outcome, a stack, a service, the pin: view_key) it reloads; otherwise
// it updates the figures marked data-f (times, replicas, health) in place. Text only: nothing is parsed as HTML.
(function () {
  "use strict";
  var key = document.body.getAttribute("data-key");
  var live = document.getElementById("live");
  function field(v, path) {
    return path.split(".").reduce(function (o, k) { return o == null ? o : o[k]; }, v);
  }
  // utc formats an RFC 3339 time as the server does: 2006-01-02 15:04:05 UTC.
  function utc(t) {
    var d = new Date(t);
    if (isNaN(d.getTime()) || d.getUTCFullYear() <= 1) { return "never"; }
    return d.toISOString().slice(0, 19).replace("T", " ") + " UTC";
  }
  function tick() {
    fetch("status", { credentials: "same-origin", cache: "no-store", headers: { Accept: "application/json" } })
      .then(function (r) {
        if (!r.ok) { throw new Error("HTTP " + r.status); }
        return r.json();
      })
      .then(function (v) {
        if (v.view_key !== key) { location.reload(); return; }
        document.querySelectorAll("[data-f]").forEach(function (el) {
          var x = field(v, el.getAttribute("data-f"));
          if (x != null && el.hasAttribute("data-time")) { x = utc(x); }
          el.textContent = x == null ? "" : String(x);
        });
        live.textContent = "live: updated " + utc(new Date().toISOString());
        live.className = "ok";
      })
      .catch(function (e) {
        live.textContent = "not updating: " + e.message;
        live.className = "bad";
      });
  }
  tick();
  setInterval(tick, 3000);
})();
