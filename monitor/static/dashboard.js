// MuFleet dashboard: polls /api/fleet and /api/series and redraws the cards and charts.
"use strict";

const REFRESH_MS = 2000;
const COLORS = {
  blue: "#4c9aff", green: "#36b37e", amber: "#ffab00", red: "#ff5630", purple: "#9f7aea",
  teal: "#2dd4bf", pink: "#f472b6", grey: "#8b93a7",
};
const charts = {};
window.monitorCharts = charts;  // tests count the points of every chart

// ---------------------------------------------------------------------------------------------
// Formatting.

function fmt(value, digits) {
  if (value === null || value === undefined || Number.isNaN(value)) return "–";
  const abs = Math.abs(value);
  if (abs >= 1e6) return (value / 1e6).toFixed(1) + "M";
  if (abs >= 1e4) return (value / 1e3).toFixed(1) + "k";
  if (digits !== undefined) return value.toFixed(digits);
  if (Number.isInteger(value)) return String(value);
  if (abs >= 100) return value.toFixed(0);
  if (abs >= 1) return value.toFixed(2);
  return value.toPrecision(2);
}

function esc(text) {
  return String(text).replace(/[&<>"']/g, c => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c]));
}

function clock(seconds) {
  if (seconds < 1e9) return "";  // an empty chart's default 0..1 axis is not a time
  return new Date(seconds * 1000).toLocaleTimeString([], {hour: "2-digit", minute: "2-digit", second: "2-digit"});
}

// ---------------------------------------------------------------------------------------------
// Charts.

Chart.defaults.color = "#8b93a7";
Chart.defaults.borderColor = "rgba(139,147,167,0.15)";
Chart.defaults.font.family = getComputedStyle(document.body).fontFamily;
Chart.defaults.font.size = 11;

// Draws "waiting for data" on a chart that has no point yet.
const emptyNote = {
  id: "emptyNote",
  afterDraw(chart) {
    const any = chart.data.datasets.some(d => d.data.length > 0);
    if (any) return;
    const {ctx, chartArea: a} = chart;
    ctx.save();
    ctx.fillStyle = "#8b93a7";
    ctx.textAlign = "center";
    ctx.font = "12px " + Chart.defaults.font.family;
    const text = (chart.options.plugins.emptyNote || {}).text || "waiting for data…";
    ctx.fillText(text, (a.left + a.right) / 2, (a.top + a.bottom) / 2);
    ctx.restore();
  },
};
Chart.register(emptyNote);

function lineChart(id, lines, opts = {}) {
  const canvas = document.getElementById(id);
  if (!canvas) return;
  const datasets = lines.map(l => ({
    label: l.label, data: [], borderColor: l.color, backgroundColor: l.color + "33",
    yAxisID: l.axis || "y", borderWidth: 2, pointRadius: 0, pointHitRadius: 6, tension: 0.25,
    stepped: opts.stepped ? "before" : false, fill: !!l.fill, spanGaps: true,
    key: l.key, source: l.source || "series",
  }));
  const scales = {
    x: {type: "linear", ticks: {maxTicksLimit: 6, maxRotation: 0, callback: opts.xStep ? v => fmt(v) : v => clock(v)},
        title: {display: !!opts.xTitle, text: opts.xTitle}, grid: {display: false}},
    y: {beginAtZero: opts.zero !== false, ticks: {maxTicksLimit: 5, callback: v => fmt(v)},
        title: {display: !!opts.yTitle, text: opts.yTitle}, type: opts.log ? "logarithmic" : "linear"},
  };
  if (lines.some(l => l.axis === "y2")) {
    scales.y2 = {position: "right", beginAtZero: true, grid: {drawOnChartArea: false},
                 ticks: {maxTicksLimit: 5, callback: v => fmt(v)}, title: {display: !!opts.y2Title, text: opts.y2Title}};
  }
  charts[id] = new Chart(canvas, {
    type: "line",
    data: {datasets},
    options: {
      animation: false, responsive: true, maintainAspectRatio: false, parsing: false, normalized: true,
      interaction: {mode: "nearest", axis: "x", intersect: false},
      plugins: {
        emptyNote: {text: opts.emptyText},
        legend: {labels: {boxWidth: 14, boxHeight: 3}},
        tooltip: {callbacks: {title: items => items.length ? (opts.xStep ? (opts.xName || "step") + " " + fmt(items[0].parsed.x) : clock(items[0].parsed.x)) : "",
                              label: item => `${item.dataset.label}: ${fmt(item.parsed.y)}`}},
      },
      scales,
    },
  });
}

function barChart(id, label, color) {
  const canvas = document.getElementById(id);
  if (!canvas) return;
  charts[id] = new Chart(canvas, {
    type: "bar",
    data: {labels: [], datasets: [{label, data: [], backgroundColor: color, borderRadius: 3, key: "replay_versions"}]},
    options: {
      animation: false, responsive: true, maintainAspectRatio: false,
      plugins: {legend: {display: false}, emptyNote: {text: "no stored games yet"},
                tooltip: {callbacks: {title: items => items.length ? "version " + items[0].label : "",
                                      label: item => `${fmt(item.parsed.y)} games`}}},
      scales: {x: {title: {display: true, text: "model version"}, grid: {display: false}},
               y: {beginAtZero: true, ticks: {maxTicksLimit: 5, callback: v => fmt(v)}}},
    },
  });
}

// ---------------------------------------------------------------------------------------------
// Strength (the evaluator; the page has these canvases only when the fleet has one).

const updaters = {};  // chart id -> function(chart, series): charts not drawn from data.series
const LADDER_COLORS = [COLORS.grey, COLORS.amber, COLORS.red, COLORS.purple, COLORS.pink, COLORS.teal];

function strengthCharts() {
  // Elo of the newest rated version by version; the ladder's Elo as dashed reference lines and
  // the kept anchors (earlier versions) as points.
  lineChart("chart-strength-elo", [
    {key: "elo", label: "newest rated version", color: COLORS.green, source: "strength"},
  ], {xStep: true, xName: "version", xTitle: "model version", yTitle: "Elo (random = 0)", zero: false,
      emptyText: "no version rated yet"});
  updaters["chart-strength-elo"] = (chart, data) => {
    const st = data.strength;
    const points = [];
    st.version.forEach((v, i) => { if (st.elo[i] !== null) points.push({x: v, y: st.elo[i]}); });
    const datasets = [chart.data.datasets[0]];
    datasets[0].data = points;
    datasets[0].pointRadius = 2;
    if (points.length) {
      const x0 = points[0].x, x1 = points[points.length - 1].x;
      Object.entries(st.opponents).forEach(([name, elo], i) => {
        const color = LADDER_COLORS[i % LADDER_COLORS.length];
        datasets.push({label: name, key: "opponent:" + name, source: "strength", data: [{x: x0, y: elo}, {x: x1, y: elo}],
                       borderColor: color, backgroundColor: color, borderDash: [5, 4], borderWidth: 1.5,
                       pointRadius: x0 === x1 ? 3 : 0, pointHitRadius: 6, fill: false});
      });
      if (st.anchors.version.length) {
        datasets.push({label: "anchors (earlier versions)", key: "anchors", source: "strength", showLine: false,
                       data: st.anchors.version.map((v, i) => ({x: v, y: st.anchors.elo[i]})),
                       borderColor: COLORS.blue, backgroundColor: COLORS.blue, pointRadius: 4, pointStyle: "rectRot"});
      }
    }
    chart.data.datasets = datasets;
  };
  // The newest version's score per opponent (wins plus half the draws, per game).
  const canvas = document.getElementById("chart-strength-scores");
  if (canvas) {
    charts["chart-strength-scores"] = new Chart(canvas, {
      type: "bar",
      data: {labels: [], datasets: [{label: "score per game", data: [], backgroundColor: COLORS.teal, borderRadius: 3,
                                     key: "win_rates"}]},
      options: {
        animation: false, responsive: true, maintainAspectRatio: false,
        plugins: {legend: {display: false}, emptyNote: {text: "no version rated yet"},
                  tooltip: {callbacks: {title: items => items.length ? "vs " + items[0].label : "",
                                        label: item => `score ${fmt(item.parsed.y, 2)} per game`}}},
        scales: {x: {title: {display: true, text: "opponent"}, grid: {display: false}},
                 y: {min: 0, max: 1, ticks: {maxTicksLimit: 6}, title: {display: true, text: "score (win = 1, draw = ½)"}}},
      },
    });
    updaters["chart-strength-scores"] = (chart, data) => {
      chart.data.labels = data.strength.win_rates.opponent;
      chart.data.datasets[0].data = data.strength.win_rates.win_rate;
    };
  }
  // One-player games: the evaluator's mean return by version (2048: the shares of its games
  // reaching 512, 1024, 2048 on the right axis).
  const solo = document.getElementById("chart-strength-return");
  const tiles = solo && solo.dataset.tiles ? [
    {key: "512", label: "share ≥ 512", color: COLORS.teal, axis: "y2", source: "strength"},
    {key: "1024", label: "share ≥ 1024", color: COLORS.blue, axis: "y2", source: "strength"},
    {key: "2048", label: "share ≥ 2048", color: COLORS.pink, axis: "y2", source: "strength"},
  ] : [];
  lineChart("chart-strength-return", [
    {key: "mean_return", label: "mean return (greedy)", color: COLORS.green, source: "strength"},
    ...tiles,
  ], {xStep: true, xName: "version", xTitle: "model version", yTitle: "return", y2Title: "share of games",
      emptyText: "no version rated yet"});
  updaters["chart-strength-return"] = (chart, data) => {
    const st = data.strength;
    for (const ds of chart.data.datasets) {
      const ys = ds.key === "mean_return" ? st.mean_return : (st.max_tile[ds.key] || []);
      const points = [];
      st.version.forEach((v, i) => { if (ys[i] !== null && ys[i] !== undefined) points.push({x: v, y: ys[i]}); });
      ds.data = points;
      ds.pointRadius = 2;
    }
  };
}

function buildCharts() {
  lineChart("chart-selfplay", [
    {key: "agent_simulations_per_s", label: "simulations/s", color: COLORS.blue, fill: true},
    {key: "agent_moves_per_s", label: "moves/s", color: COLORS.green, axis: "y2"},
    {key: "environment_steps_per_s", label: "env steps/s", color: COLORS.teal, axis: "y2"},
  ], {yTitle: "simulations/s", y2Title: "moves, steps/s"});
  lineChart("chart-network", [
    {key: "network_requests_per_s", label: "requests/s", color: COLORS.purple, fill: true},
    {key: "network_batch_size", label: "rows per run", color: COLORS.amber, axis: "y2"},
    {key: "network_latency_ms", label: "latency ms (server)", color: COLORS.pink, axis: "y2"},
    {key: "agent_request_latency_ms", label: "latency ms (agents)", color: COLORS.red, axis: "y2"},
  ], {yTitle: "requests/s", y2Title: "rows, ms"});
  lineChart("chart-trainer", [
    {key: "trainer_steps_per_s", label: "trainer steps/s", color: COLORS.green, fill: true},
    {key: "agent_games_per_s", label: "games finished/s", color: COLORS.blue, axis: "y2"},
  ], {yTitle: "steps/s", y2Title: "games/s"});
  lineChart("chart-returns", [
    {key: "agent_recent_return", label: "agents", color: COLORS.green},
    {key: "replay_recent_return", label: "stored games", color: COLORS.blue},
  ], {zero: false, emptyText: "no finished games yet"});
  // 2048 only (the page has this canvas when the fleet plays 2048).
  lineChart("chart-max-tile", [
    {key: "agent_recent_max_tile", label: "mean largest tile", color: COLORS.amber, fill: true},
    {key: "agent_max_tile_512_share", label: "share ≥ 512", color: COLORS.teal, axis: "y2"},
    {key: "agent_max_tile_1024_share", label: "share ≥ 1024", color: COLORS.blue, axis: "y2"},
    {key: "agent_max_tile_2048_share", label: "share ≥ 2048", color: COLORS.pink, axis: "y2"},
  ], {yTitle: "tile", y2Title: "share of games", emptyText: "no finished games yet"});
  lineChart("chart-lengths", [
    {key: "agent_recent_length", label: "agents", color: COLORS.amber},
    {key: "replay_recent_length", label: "stored games", color: COLORS.purple},
  ], {emptyText: "no finished games yet"});
  lineChart("chart-losses", [
    {key: "total", label: "total", color: COLORS.red, source: "losses"},
    {key: "value", label: "value", color: COLORS.blue, source: "losses"},
    {key: "reward", label: "reward", color: COLORS.green, source: "losses"},
    {key: "policy", label: "policy", color: COLORS.amber, source: "losses"},
  ], {xStep: true, xTitle: "training step", emptyText: "the trainer has not trained yet"});
  lineChart("chart-replay-size", [
    {key: "replay_positions", label: "positions", color: COLORS.blue, fill: true},
    {key: "replay_games", label: "games", color: COLORS.green, axis: "y2"},
  ], {yTitle: "positions", y2Title: "games"});
  lineChart("chart-replay-rates", [
    {key: "replay_inserts_per_s", label: "inserted", color: COLORS.teal, fill: true},
    {key: "replay_samples_per_s", label: "sampled", color: COLORS.amber},
  ]);
  barChart("chart-replay-versions", "games", COLORS.purple);
  lineChart("chart-reanalyse", [
    {key: "reanalyse_positions_per_s", label: "positions reanalysed/s", color: COLORS.teal, fill: true},
    {key: "reanalyse_target_age", label: "age of replaced targets (versions)", color: COLORS.amber, axis: "y2"},
    {key: "replay_reanalysed_fraction", label: "fraction of sampled targets reanalysed", color: COLORS.purple,
     axis: "y2"},
  ], {yTitle: "positions/s", y2Title: "versions, fraction",
      emptyText: "no reanalyse worker (make run REANALYSERS=1)"});
  lineChart("chart-versions", [
    {key: "trainer_exported_version", label: "trainer: exported", color: COLORS.green},
    {key: "network_latest_version", label: "network: served", color: COLORS.purple},
    {key: "agent_model_version", label: "agents: newest used", color: COLORS.blue},
    {key: "agent_oldest_model_version", label: "agents: oldest used", color: COLORS.grey},
    {key: "evaluator_rated_version", label: "evaluator: newest rated", color: COLORS.amber},
  ], {stepped: true, emptyText: "no model version yet"});
  strengthCharts();
}

function updateCharts(data) {
  const t0 = data.time.length ? data.time[0] : undefined;
  const t1 = data.time.length ? data.time[data.time.length - 1] : undefined;
  for (const [id, chart] of Object.entries(charts)) {
    if (updaters[id]) {
      if (data.strength) updaters[id](chart, data);
    } else if (chart.config.type === "bar") {
      chart.data.labels = data.replay_versions.version.map(String);
      chart.data.datasets[0].data = data.replay_versions.games;
    } else {
      for (const ds of chart.data.datasets) {
        const xs = ds.source === "losses" ? data.losses.step : data.time;
        const ys = ds.source === "losses" ? data.losses[ds.key] : data.series[ds.key];
        const points = [];
        for (let i = 0; i < xs.length; i++) {
          if (ys[i] !== null && ys[i] !== undefined) points.push({x: xs[i], y: ys[i]});
        }
        ds.data = points;
      }
      if (chart.data.datasets[0].source !== "losses" && t0 !== undefined && t1 > t0) {
        chart.options.scales.x.min = t0;  // the time axis spans the history, not "nice" round ticks
        chart.options.scales.x.max = t1;
      }
    }
    chart.update("none");
  }
}

// ---------------------------------------------------------------------------------------------
// Fleet cards.

function serviceCard(s) {
  const rows = [];
  if (s.grpc) rows.push(`<dt>gRPC</dt><dd>${esc(s.grpc.address)} <span class="muted">${esc(s.grpc.status.toLowerCase())}</span></dd>`);
  for (const i of s.instances) {
    const path = i.path !== "/metrics" ? i.path : "";
    rows.push(`<dt>metrics</dt><dd>${esc(i.address + path)} <span class="muted">${i.up ? "up" : "down"}</span></dd>`);
  }
  const version = s.model_version === null ? "–" : "v" + s.model_version;
  const versions = s.versions_available && s.versions_available.length > 1
    ? ` <span class="muted">(loaded ${s.versions_available.map(v => "v" + v).join(", ")})</span>` : "";
  if (s.role !== "environment") rows.push(`<dt>model</dt><dd>${version}${versions}</dd>`);
  const facts = s.facts.map(([label, value]) => `<div><b>${fmt(value)}</b><span>${esc(label)}</span></div>`).join("");
  const messages = s.messages.map(m => `<p class="card-error">${esc(m)}</p>`).join("") +
    (s.note ? `<p class="muted small card-note">${esc(s.note)}</p>` : "");
  return `<article class="card service status-${esc(s.status)}" data-service="${esc(s.name)}">
    <header><span class="dot"></span><h3>${esc(s.name)}</h3><span class="status-text">${esc(s.status)}</span></header>
    <dl class="addresses">${rows.join("")}</dl><div class="facts">${facts}</div>${messages}</article>`;
}

function updateFleet(fleet) {
  document.getElementById("services").innerHTML = fleet.services.map(serviceCard).join("");
  document.getElementById("alerts").innerHTML = fleet.errors.map(m => `<div class="alert">${esc(m)}</div>`).join("");
  const pill = document.getElementById("fleet-pill");
  pill.textContent = `${fleet.up}/${fleet.total} services up`;
  pill.className = "pill " + (fleet.up === fleet.total ? "ok" : "bad");
  for (const kpi of document.querySelectorAll(".kpi")) {
    kpi.querySelector("b").textContent = fmt(fleet.throughput[kpi.dataset.key]);
  }
  const stats = fleet.replay;
  const box = document.getElementById("replay-stats");
  if (stats) {
    const keys = ["games", "positions", "capacity", "games_added_total", "inserts_total", "samples_total",
                  "sample_batches_total", "duplicates_total", "evicted_games_total", "rate_limited_total",
                  "min_positions", "samples_per_insert"];
    box.innerHTML = keys.map(k => `<div><span>${k.replace(/_/g, " ")}</span><b>${fmt(stats[k])}</b></div>`).join("");
  } else if (fleet.replay_error) {
    box.innerHTML = `<p class="card-error">${esc(fleet.replay_error)}</p>`;
  }
  document.getElementById("updated").textContent = "updated " + clock(fleet.time);
}

// ---------------------------------------------------------------------------------------------
// Polling.

async function getJSON(url) {
  const response = await fetch(url, {cache: "no-store"});
  return response.json();
}

let failures = 0;
async function refresh() {
  try {
    const [fleet, series] = await Promise.all([getJSON("api/fleet"), getJSON("api/series?max_points=300")]);
    updateFleet(fleet);
    updateCharts(series);
    failures = 0;
  } catch (error) {
    failures += 1;
    if (failures >= 2) {
      document.getElementById("alerts").innerHTML = `<div class="alert">the monitor itself is unreachable (${esc(error.message)}); retrying</div>`;
      const pill = document.getElementById("fleet-pill");
      pill.textContent = "monitor unreachable";
      pill.className = "pill bad";
    }
  } finally {
    setTimeout(refresh, REFRESH_MS);
  }
}

buildCharts();
refresh();
