// Kiln's charts: each <figure class="chart" data-series='[…]'> is drawn with uPlot from the
// series endpoint, with releases, rollbacks and annotations as vertical markers. No inline
// script (the CSP forbids it): everything the charts need is in data- attributes.
(function () {
  "use strict";

  var PALETTE = ["#2563eb", "#16a34a", "#dc2626", "#9333ea", "#ea580c", "#0891b2", "#ca8a04",
    "#db2777", "#4b5563", "#65a30d"];

  function getJSON(url) {
    return fetch(url, { credentials: "same-origin", headers: { "Accept": "application/json" } })
      .then(function (r) {
        if (!r.ok) throw new Error(url + " answered " + r.status);
        return r.json();
      });
  }

  function query(params) {
    return Object.keys(params).map(function (k) {
      return encodeURIComponent(k) + "=" + encodeURIComponent(params[k]);
    }).join("&");
  }

  // Lines of one chart: every (spec, source) pair, on one shared time axis.
  function align(lines) {
    var times = {};
    lines.forEach(function (l) { l.points.forEach(function (p) { times[p[0]] = true; }); });
    var xs = Object.keys(times).map(Number).sort(function (a, b) { return a - b; });
    var index = {};
    xs.forEach(function (t, i) { index[t] = i; });
    var data = [xs];
    lines.forEach(function (l) {
      var ys = xs.map(function () { return null; });
      l.points.forEach(function (p) { ys[index[p[0]]] = p[1]; });
      data.push(ys);
    });
    return data;
  }

  // Stacked lines: each drawn at the sum of itself and the lines before it (a missing point
  // adds nothing), so the top line is the total. Keeps the raw values for the legend.
  function stackUp(data) {
    var out = [data[0]];
    var below = data[0].map(function () { return 0; });
    for (var i = 1; i < data.length; i++) {
      out.push(data[i].map(function (v, k) {
        var anyHere = data.some(function (ys, j) { return j > 0 && ys[k] != null; });
        if (!anyHere) return null;
        below[k] += v == null ? 0 : v;
        return below[k];
      }));
    }
    return { data: out, raw: data };
  }

  function markerPlugin(markers) {
    return {
      hooks: {
        draw: [function (u) {
          var ctx = u.ctx;
          ctx.save();
          ctx.strokeStyle = "#f59e0b";
          ctx.fillStyle = "#b45309";
          ctx.lineWidth = 1.5 * devicePixelRatio;
          ctx.setLineDash([4 * devicePixelRatio, 3 * devicePixelRatio]);
          ctx.font = (10 * devicePixelRatio) + "px sans-serif";
          markers.forEach(function (m, i) {
            var x = Math.round(u.valToPos(m.t, "x", true));
            var alert = m.stream === "alerts";
            ctx.strokeStyle = alert ? (/ resolved/.test(m.title) ? "#16a34a" : "#dc2626") : "#f59e0b";
            ctx.fillStyle = alert ? ctx.strokeStyle : "#b45309";
            if (x < u.bbox.left || x > u.bbox.left + u.bbox.width) return;
            ctx.beginPath();
            ctx.moveTo(x, u.bbox.top);
            ctx.lineTo(x, u.bbox.top + u.bbox.height);
            ctx.stroke();
            // Staggered, so markers close in time keep readable titles.
            ctx.fillText(m.title, x + 3 * devicePixelRatio, u.bbox.top + (10 + 12 * (i % 3)) * devicePixelRatio);
          });
          ctx.restore();
        }]
      }
    };
  }

  // Horizontal dashed lines at a rule's thresholds (data-thresholds='[80, 70]').
  function thresholdPlugin(levels) {
    return {
      hooks: {
        draw: [function (u) {
          if (!levels.length) return;
          var ctx = u.ctx;
          ctx.save();
          ctx.strokeStyle = "#dc2626";
          ctx.lineWidth = 1 * devicePixelRatio;
          ctx.setLineDash([6 * devicePixelRatio, 4 * devicePixelRatio]);
          levels.forEach(function (v) {
            var y = Math.round(u.valToPos(v, "y", true));
            if (y < u.bbox.top || y > u.bbox.top + u.bbox.height) return;
            ctx.beginPath();
            ctx.moveTo(u.bbox.left, y);
            ctx.lineTo(u.bbox.left + u.bbox.width, y);
            ctx.stroke();
          });
          ctx.restore();
        }]
      }
    };
  }

  function draw(figure, from, to, markers, height) {
    var specs = JSON.parse(figure.getAttribute("data-series") || "[]");
    var levels = JSON.parse(figure.getAttribute("data-thresholds") || "[]");
    // An alert's markers belong on the charts of its metrics; the others on every chart.
    var shown = specs.map(function (s) { return s.metric; });
    markers = markers.filter(function (m) {
      return !m.metrics || m.metrics.split(",").some(function (x) { return shown.indexOf(x) >= 0; });
    });
    var requests = specs.map(function (spec) {
      var url = "/dashboards/series?" + query({
        metric: spec.metric, source: spec.source, aggregate: spec.aggregate, from: from, to: to
      });
      return getJSON(url).then(function (answer) {
        return answer.series.map(function (s) {
          var label = spec.label ? (answer.series.length > 1 ? spec.label + " " + s.source : spec.label) : (s.source || spec.metric);
          return { label: label, points: s.points };
        });
      });
    });
    return Promise.all(requests).then(function (groups) {
      var lines = [].concat.apply([], groups);
      var plot = figure.querySelector(".chart-plot");
      if (!lines.length || !lines.some(function (l) { return l.points.length; })) {
        figure.querySelector(".chart-empty").hidden = false;
        figure.setAttribute("data-drawn", "empty");
        return;
      }
      var data = align(lines);
      var stacked = figure.getAttribute("data-stacked") === "1";
      var series = [{}].concat(lines.map(function (l, i) {
        return { label: l.label, stroke: PALETTE[i % PALETTE.length], width: 1.5, spanGaps: true };
      }));
      var bands = [];
      if (stacked) {
        var stack = stackUp(data);
        data = stack.data;
        series.forEach(function (s, i) {
          if (i === 0) return;
          s.fill = PALETTE[(i - 1) % PALETTE.length] + "40";
          // The legend shows each line's own value, not the running total it is drawn at.
          s.value = function (u, v, si, idx) { var raw = stack.raw[si][idx]; return raw == null ? "--" : raw; };
          if (i > 1) bands.push({ series: [i, i - 1] });
        });
      }
      var opts = {
        width: Math.max(300, plot.clientWidth),
        height: height,
        series: series,
        scales: levels.length ? {
          x: { time: true, min: from, max: to },
          // Keep the thresholds in view even when the values stay far from them.
          y: { range: function (u, min, max) {
            var lo = Math.min(min, Math.min.apply(null, levels));
            var hi = Math.max(max, Math.max.apply(null, levels));
            var pad = (hi - lo) * 0.1 || 1;
            return [lo - pad, hi + pad];
          } }
        } : { x: { time: true, min: from, max: to } },
        cursor: { drag: { x: true, y: false } },
        legend: { live: true },
        bands: bands,
        plugins: [markerPlugin(markers), thresholdPlugin(levels)]
      };
      new uPlot(opts, data, plot);
      figure.setAttribute("data-drawn", "lines");
      figure.setAttribute("data-markers", String(markers.filter(function (m) { return m.t >= from && m.t <= to; }).length));
    });
  }

  function start() {
    var root = document.getElementById("charts");
    if (!root || !window.uPlot) return;
    var from = Number(root.getAttribute("data-from"));
    var to = Number(root.getAttribute("data-to"));
    var height = Number(root.getAttribute("data-height")) || 220;
    getJSON("/dashboards/markers?" + query({ from: from, to: to }))
      .catch(function () { return []; })
      .then(function (markers) {
        var figures = Array.prototype.slice.call(root.querySelectorAll("figure.chart"));
        return Promise.all(figures.map(function (f) {
          return draw(f, from, to, markers, height).catch(function (e) {
            f.querySelector(".chart-empty").textContent = "Could not load this chart: " + e.message;
            f.querySelector(".chart-empty").hidden = false;
            f.setAttribute("data-drawn", "error");
          });
        }));
      })
      .then(function () { root.setAttribute("data-ready", "1"); });
  }

  document.addEventListener("DOMContentLoaded", start);
})();
