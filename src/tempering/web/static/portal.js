// The job page made live: the loss chart (uPlot) and the event list follow the job's Server-Sent Events;
// without JavaScript the page still shows everything as of its load. No request leaves this server.
(function () {
  "use strict";
  var job = document.getElementById("job");
  var chartEl = document.getElementById("loss-chart");
  if (!job || !chartEl) { return; }
  var points = JSON.parse(chartEl.dataset.points || "[]");
  var statuses = JSON.parse(job.dataset.statuses || "{}");
  var plot = null;
  function data() {
    points.sort(function (a, b) { return a.step - b.step; });
    return [points.map(function (p) { return p.step; }),
            points.map(function (p) { return p.train_loss == null ? null : p.train_loss; }),
            points.map(function (p) { return p.valid_loss == null ? null : p.valid_loss; })];
  }
  function draw() {
    chartEl.dataset.count = String(points.length);
    if (!window.uPlot) { return; }
    if (plot) { plot.setData(data()); return; }
    plot = new window.uPlot({
      width: Math.max(320, Math.min(760, chartEl.clientWidth || 760)), height: 260,
      scales: { x: { time: false } },
      series: [{ label: "step" },
               { label: chartEl.dataset.train, stroke: "#2563eb", width: 2, spanGaps: true },
               { label: chartEl.dataset.valid, stroke: "#dc2626", width: 2, spanGaps: true }]
    }, data(), chartEl);
  }
  draw();
  if (job.dataset.finished !== "no" || !window.EventSource) { return; }
  var source = new EventSource(job.dataset.live);
  source.addEventListener("event", function (message) {
    var e = JSON.parse(message.data);
    var list = document.getElementById("job-events");
    var item = document.createElement("li");
    item.textContent = e.message;
    item.className = "level-" + e.level;
    list.insertBefore(item, list.firstChild);
    if (e.point) {  // the server picks the chart's points (web.tuning._point)
      points.push(e.point);
      draw();
    }
  });
  source.addEventListener("status", function (message) {
    var s = JSON.parse(message.data);
    var chip = document.getElementById("job-status");
    chip.textContent = statuses[s.status] || s.status;
    chip.className = "chip chip-" + s.status;
    if (s.fine_tuned_model) { document.getElementById("job-model").textContent = s.fine_tuned_model; }
  });
  source.addEventListener("end", function () {
    source.close();
    document.getElementById("job-done").hidden = false;
    var cancel = document.getElementById("job-cancel");
    if (cancel) { cancel.hidden = true; }
  });
})();
