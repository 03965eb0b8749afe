// The dashboard's behaviour: charts (Chart.js from Debian's libjs-chart.js), live alerts (server-sent events),
// the review screen's keyboard shortcuts. No framework, no CDN.
(function () {
  "use strict";

  // --- charts on the cell page ---
  function ms(t) { return Date.parse(t); }
  function timeAxis() {
    return { type: "linear", ticks: { callback: function (v) { return new Date(v).toISOString().slice(5, 16).replace("T", " "); }, maxTicksLimit: 6 } };
  }
  function chart(id, config) {
    var el = document.getElementById(id);
    if (!el || !window.Chart) return;
    config.options = Object.assign({ responsive: true, maintainAspectRatio: false, animation: false, parsing: true }, config.options || {});
    new window.Chart(el, config);
  }
  function charts(c) {
    var trend = c.trend.map(function (b) { return Object.assign({ x: ms(b.start) }, b); });
    var alertPoints = c.alerts.map(function (a) { return { x: ms(a.time), y: 0, label: a.severity + " " + a.code }; });
    chart("chart-throughput", {
      type: "line",
      data: { datasets: [
        { label: "parts", data: trend.map(function (b) { return { x: b.x, y: b.parts }; }), borderColor: "#1f5fbf", pointRadius: 2 },
        { label: "parts/s (cell KPI)", data: c.latency.map(function (p) { return { x: ms(p.t), y: p.pps }; }), borderColor: "#1a7f37", pointRadius: 0, yAxisID: "y2" },
        { label: "alerts", type: "scatter", data: alertPoints, backgroundColor: "#b42318", pointStyle: "triangle", pointRadius: 7 }
      ] },
      options: { scales: { x: timeAxis(), y: { beginAtZero: true }, y2: { position: "right", beginAtZero: true, grid: { drawOnChartArea: false } } } }
    });
    var colors = { normal: "#1a7f37", reinspect: "#b54708", defective: "#b42318", not_inspected: "#8c959f" };
    chart("chart-verdicts", {
      type: "bar",
      data: { datasets: Object.keys(colors).map(function (k) {
        return { label: k, data: trend.map(function (b) { return { x: b.x, y: b[k] }; }), backgroundColor: colors[k] };
      }) },
      options: { scales: { x: Object.assign(timeAxis(), { stacked: true }), y: { stacked: true, beginAtZero: true } } }
    });
    chart("chart-probability", {
      type: "bar",
      data: { labels: c.histogram.map(function (_, i) { return (i / 20).toFixed(2); }),
              datasets: [{ label: "parts", data: c.histogram, backgroundColor: c.histogram.map(function (_, i) { return i >= 16 ? "#b42318" : i >= 10 ? "#b54708" : "#1a7f37"; }) }] },
      options: { plugins: { legend: { display: false } } }
    });
    chart("chart-latency", {
      type: "line",
      data: { datasets: [
        { label: "p50", data: c.latency.map(function (p) { return { x: ms(p.t), y: p.p50 }; }), borderColor: "#1f5fbf", pointRadius: 0 },
        { label: "p99", data: c.latency.map(function (p) { return { x: ms(p.t), y: p.p99 }; }), borderColor: "#b42318", pointRadius: 0 }
      ] },
      options: { scales: { x: timeAxis(), y: { beginAtZero: true } } }
    });
    chart("chart-process", {
      type: "line",
      data: { datasets: [
        { label: "temperature °C", data: c.process.map(function (p) { return { x: ms(p.t), y: p.temperature_c }; }), borderColor: "#b54708", pointRadius: 0, yAxisID: "y" },
        { label: "pressure kPa", data: c.process.map(function (p) { return { x: ms(p.t), y: p.pressure_kpa }; }), borderColor: "#1f5fbf", pointRadius: 0, yAxisID: "y" },
        { label: "vibration RMS", data: c.process.map(function (p) { return { x: ms(p.t), y: p.vibration_rms }; }), borderColor: "#6e40c9", pointRadius: 0, yAxisID: "y" },
        { label: "anomaly score", data: c.process.map(function (p) { return { x: ms(p.t), y: p.anomaly }; }), borderColor: "#b42318", pointRadius: 0, yAxisID: "y2" }
      ] },
      options: { scales: { x: timeAxis(), y: {}, y2: { position: "right", grid: { drawOnChartArea: false } } } }
    });
    var outcomes = { DONE: "#1a7f37", LATE: "#b54708", FAILED: "#b42318", SKIPPED: "#8c959f" };
    chart("chart-rejects", {
      type: "bar",
      data: { datasets: Object.keys(outcomes).map(function (k) {
        return { label: k, data: c.rejects.map(function (r) { return { x: ms(r.t), y: r[k] || 0 }; }), backgroundColor: outcomes[k] };
      }) },
      options: { scales: { x: Object.assign(timeAxis(), { stacked: true }), y: { stacked: true, beginAtZero: true } } }
    });
  }
  if (window.QC_CHARTS) charts(window.QC_CHARTS);

  // --- live alerts ---
  function liveAlerts(cfg) {
    var body = document.getElementById("alerts-body");
    var tpl = document.getElementById("alert-template");
    var state = document.getElementById("live-state");
    if (!body || !tpl || !window.EventSource) return;
    if (cfg.state === "acked") { state.textContent = "(live list shows open alerts only)"; return; }
    var q = new URLSearchParams({ after: cfg.after, cell: cfg.cell || "", severity: cfg.severity || "", code: cfg.code || "" });
    var source = new EventSource("/alerts/stream?" + q.toString());
    source.onopen = function () { state.textContent = "live"; state.dataset.live = "1"; };
    source.onerror = function () { state.textContent = "reconnecting…"; };
    source.addEventListener("alert", function (ev) {
      var a = JSON.parse(ev.data);
      if (document.getElementById("alert-" + a.id)) return;
      var row = tpl.content.firstElementChild.cloneNode(true);
      row.id = "alert-" + a.id;
      row.className = "new sev-" + a.severity;
      row.querySelector(".c-time").textContent = a.time.replace("T", " ").slice(0, 19);
      var link = row.querySelector(".c-cell"); link.textContent = a.cell; link.href = "/cells/" + a.cell;
      row.querySelector(".c-sev").textContent = a.severity;
      row.querySelector(".c-code").textContent = a.code;
      row.querySelector(".c-msg").textContent = a.message;
      var form = row.querySelector("form"); if (form) form.action = "/alerts/" + a.id + "/ack";
      var empty = body.querySelector("tr.empty"); if (empty) empty.remove();
      body.insertBefore(row, body.firstChild);
      window.QC_LAST_ALERT = { id: a.id, shown_at: Date.now() };
    });
  }
  if (window.QC_ALERTS) liveAlerts(window.QC_ALERTS);

  // --- heatmaps over sample images: a checkbox per figure, H on the review screen ---
  function heatToggle(box) {
    var heat = box.closest("figure").querySelector("img.heat");
    if (heat) heat.hidden = !box.checked;
  }
  document.querySelectorAll("input.heat-toggle").forEach(function (box) {
    box.addEventListener("change", function () { heatToggle(box); });
  });

  // --- review screen: buttons and keyboard shortcuts ---
  var form = document.getElementById("label-form");
  if (form) {
    var answer = document.getElementById("answer");
    form.querySelectorAll("button[data-answer]").forEach(function (b) {
      b.addEventListener("click", function () { answer.value = b.dataset.answer; });
    });
    var keys = { g: "good", d: "defective", u: "unsure" };
    document.addEventListener("keydown", function (ev) {
      var tag = (ev.target.tagName || "").toLowerCase();
      if (tag === "input" || tag === "select" || tag === "textarea" || ev.ctrlKey || ev.metaKey || ev.altKey) return;
      var box = document.getElementById("heat-toggle");
      if (ev.key.toLowerCase() === "h" && box) { ev.preventDefault(); box.checked = !box.checked; heatToggle(box); return; }
      var a = keys[ev.key.toLowerCase()];
      if (!a) return;
      ev.preventDefault();
      answer.value = a;
      form.submit();
    });
  }
})();
