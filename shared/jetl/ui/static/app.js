// jetl dashboard: live rows and log lines over server-sent events, and the charts (uPlot). Everything else is
// server-rendered HTML and plain forms.
(function () {
  "use strict";

  function listen(url, handlers, stateEl) {
    var es = new EventSource(url);
    es.onopen = function () { if (stateEl) stateEl.classList.add("on"); };
    es.onerror = function () { if (stateEl) stateEl.classList.remove("on"); };
    Object.keys(handlers).forEach(function (name) {
      es.addEventListener(name, function (e) { handlers[name](JSON.parse(e.data)); });
    });
    window.addEventListener("beforeunload", function () { es.close(); });
    return es;
  }

  // Runs page: a changed run's row is replaced in place, a new run is put on top.
  var runs = document.getElementById("runs");
  if (runs) {
    listen(runs.dataset.live, {
      run: function (d) {
        var tmp = document.createElement("tbody");
        tmp.innerHTML = d.html.trim();
        var row = tmp.firstElementChild;
        var old = document.getElementById(d.id);
        if (old) { old.replaceWith(row); } else { runs.tBodies[0].prepend(row); }
        var none = document.getElementById("no-runs");
        if (none) none.remove();
      }
    }, document.getElementById("live-state"));
  }

  // Run page: the ledger's counts follow the run; the log follows its lines.
  var ledger = document.getElementById("ledger");
  if (ledger) {
    listen(ledger.dataset.live, {
      run: function (d) {
        Object.keys(d.counts).forEach(function (k) {
          var cell = ledger.querySelector('[data-stage="' + k + '"]');
          if (cell) cell.textContent = d.counts[k];
        });
        var batches = document.getElementById("batches");
        if (batches) batches.textContent = d.batches;
        var verdict = document.getElementById("verdict");
        if (verdict) {
          verdict.className = "verdict " + d.verdict.css;
          verdict.querySelector("[data-verdict]").textContent = d.verdict.text;
          var c = d.counts;
          verdict.querySelector("[data-sum]").textContent =
            c.extracted + " = " + c.loaded + " + " + c.rejected + " + " + c.filtered;
        }
        var badge = document.getElementById("run-status");
        if (badge && badge.textContent !== d.status) {
          badge.textContent = d.status;
          badge.className = "badge " + d.status;
          if (d.status === "completed" || d.status === "failed") setTimeout(function () { location.reload(); }, 800);
        }
      }
    });
  }
  var log = document.getElementById("log");
  if (log) {
    listen(log.dataset.live, {
      log: function (d) {
        var line = document.createElement("div");
        line.className = d.level;
        line.textContent = [d.t, d.level.padEnd(7), d.service.padEnd(11), d.event, d.batch].join(" ");
        log.appendChild(line);
        while (log.childNodes.length > 2000) log.removeChild(log.firstChild);
        log.scrollTop = log.scrollHeight;
      }
    });
  }

  // An axis as wide as its longest label ("40,000" is not cut to "0,000" by uPlot's fixed 50 px).
  function axisSize(u, values, axisIdx, cycleNum) {
    var axis = u.axes[axisIdx];
    if (cycleNum > 1) return axis._size;
    var longest = (values || []).reduce(function (a, v) { return String(v).length > a.length ? String(v) : a; }, "");
    u.ctx.font = axis.font[0];
    return Math.ceil(axis.ticks.size + axis.gap + u.ctx.measureText(longest).width / devicePixelRatio) + 6;
  }

  // Whole-number x values (runs ago, seconds): ticks on whole numbers only, each label once.
  var WHOLE = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000];

  function chart(el, title, xs, ys, color, xTime) {
    if (!el || typeof uPlot === "undefined") return;
    var opts = {
      width: Math.max(el.clientWidth - 8, 200), height: 190,
      scales: { x: { time: !!xTime } },
      legend: { show: false },
      series: [{}, { label: title, stroke: color, fill: color + "33", width: 2, points: { show: xs.length < 60 } }],
      axes: [
        { stroke: "#667085", incrs: xTime ? undefined : WHOLE },
        { stroke: "#667085", size: axisSize }
      ]
    };
    el.uplot = new uPlot(opts, [xs, ys.map(function (v) { return v === null ? null : v; })], el);
  }

  var rate = document.getElementById("rate-data");
  if (rate) {
    var r = JSON.parse(rate.textContent);
    chart(document.getElementById("rate-chart"), "records loaded / s", r.x, r.loaded, "#1a9e5c", false);
  }
  var pdata = document.getElementById("pipeline-data");
  if (pdata) {
    var p = JSON.parse(pdata.textContent);
    chart(document.getElementById("chart-loaded"), "loaded", p.x, p.loaded, "#1a9e5c", false);
    chart(document.getElementById("chart-rejected"), "rejected", p.x, p.rejected, "#d2453a", false);
    chart(document.getElementById("chart-duration"), "seconds", p.x, p.duration, "#2f6fdb", false);
  }
})();
