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

  // One colour per kind of marker (app.css's .mk-* legend uses the same).
  var MARKER_COLOURS = {
    release: "#2563eb", rollback: "#dc2626", bake: "#9333ea", annotation: "#b45309",
    alert: "#db2777", resolved: "#16a34a"
  };

  // Markers: a line per event in its kind's colour with a short label ("▲ v2", "↩ v1"), an
  // annotation with an end drawn as a band. Labels sit in two rows inside the plot, moved to
  // the left of their line at the right edge, and a label that would overlap one already
  // drawn is left out (its line stays; hovering shows the full text of the nearest marker).
  function markerPlugin(markers, tip) {
    var px = function (n) { return n * devicePixelRatio; };
    return {
      hooks: {
        draw: [function (u) {
          var ctx = u.ctx;
          var left = u.bbox.left, right = u.bbox.left + u.bbox.width;
          var top = u.bbox.top, bottom = u.bbox.top + u.bbox.height;
          var rows = [-Infinity, -Infinity];
          var drawnLabels = 0;
          ctx.save();
          ctx.font = px(11) + "px sans-serif";
          ctx.textBaseline = "top";
          markers.forEach(function (m) {
            var colour = MARKER_COLOURS[m.kind] || MARKER_COLOURS.annotation;
            var x = Math.round(u.valToPos(m.t, "x", true));
            if (m.end != null && m.end > m.t) {
              var x2 = Math.round(u.valToPos(m.end, "x", true));
              var a = Math.max(x, left), b = Math.min(x2, right);
              if (b > a) {
                ctx.fillStyle = colour + "22";
                ctx.fillRect(a, top, b - a, bottom - top);
              }
            }
            if (x < left || x > right) return;
            ctx.strokeStyle = colour;
            ctx.lineWidth = px(1.5);
            ctx.setLineDash(m.kind === "annotation" ? [px(4), px(3)] : []);
            ctx.beginPath();
            ctx.moveTo(x, top);
            ctx.lineTo(x, bottom);
            ctx.stroke();
            var label = m.short || m.title;
            var w = ctx.measureText(label).width + px(6);
            var lx = x + px(3) + w > right ? x - px(3) - w : x + px(3);
            if (lx < left) return;
            for (var r = 0; r < rows.length; r++) {
              if (lx > rows[r]) {
                rows[r] = lx + w;
                ctx.fillStyle = "rgba(255,255,255,0.85)";
                ctx.fillRect(lx, top + px(2 + 14 * r), w, px(13));
                ctx.fillStyle = colour;
                ctx.fillText(label, lx + px(3), top + px(3 + 14 * r));
                drawnLabels++;
                return;
              }
            }
          });
          ctx.restore();
          u.root.setAttribute("data-marker-labels", String(drawnLabels));
        }],
        setCursor: [function (u) {
          if (!tip) return;
          var cx = u.cursor.left;
          if (cx == null || cx < 0) { tip.hidden = true; return; }
          var near = null, best = 7;
          markers.forEach(function (m) {
            var d = Math.abs(u.valToPos(m.t, "x") - cx);
            if (d < best) { best = d; near = m; }
          });
          if (!near) { tip.hidden = true; return; }
          tip.textContent = near.title;
          tip.hidden = false;
          tip.style.left = Math.min(cx + u.bbox.left / devicePixelRatio + 8, u.over.clientWidth - 40) + "px";
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
      var params = { metric: spec.metric, source: spec.source, aggregate: spec.aggregate, from: from, to: to };
      if (spec.across) params.across = spec.across;
      var url = "/dashboards/series?" + query(params);
      return getJSON(url).then(function (answer) {
        var names = answer.names || {};
        return answer.series.map(function (s) {
          var source = names[s.source] || s.source;
          // A combined line is named by its label, or by what it is ("max of 5 sources").
          var label = spec.across ? (spec.label || source)
            : spec.label ? (answer.series.length > 1 ? spec.label + " " + source : spec.label)
            : (source || spec.metric);
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
      var tip = document.createElement("div");
      tip.className = "marker-tip";
      tip.hidden = true;
      plot.appendChild(tip);
      var opts = {
        width: Math.max(240, plot.clientWidth),
        height: height,
        series: series,
        scales: stacked ? {
          x: { time: true, min: from, max: to },
          // A stack is a total: it starts at 0, or the bands would lie about the parts.
          y: { range: function (u, min, max) { return [0, max > 0 ? max * 1.1 : 1]; } }
        } : levels.length ? {
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
        plugins: [markerPlugin(markers, tip), thresholdPlugin(levels)]
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
