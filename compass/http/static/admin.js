// The /admin page: reads the admin API with the key from sessionStorage and draws it with uPlot.
// No build step; the page holds no data until the key is accepted.
"use strict";

const KEY_STORAGE = "compassAdminKey";
const COLORS = ["#e63946", "#457b9d", "#2a9d8f", "#f4a261", "#6a4c93", "#8ab17d", "#e76f51", "#264653"];
const REFRESH_MS = 5000;
const modelColors = new Map();
const charts = new Map();
let refreshes = 0;
let busy = false;

class AuthError extends Error {}

const $ = id => document.getElementById(id);

function adminKey() { return sessionStorage.getItem(KEY_STORAGE); }

async function api(path, options = {}) {
  const headers = {...(options.headers || {})};
  const key = adminKey();
  if (key) headers.Authorization = "Bearer " + key;
  const response = await fetch(path, {...options, headers});
  let body = null;
  try { body = await response.json(); } catch (_) { body = null; }
  const message = body && body.error ? body.error.message : response.statusText;
  if (response.status === 401 || response.status === 403) throw new AuthError(message);
  if (!response.ok) throw new Error(`${path}: ${message}`);
  return body;
}

function escapeText(value) {
  const div = document.createElement("div");
  div.textContent = value == null ? "" : String(value);
  return div.innerHTML;
}

function fixed(value, digits) { return value == null || Number.isNaN(value) ? "—" : Number(value).toFixed(digits); }
function percent(value) { return value == null ? "—" : (100 * value).toFixed(1) + " %"; }

function colorOf(model) {
  if (!modelColors.has(model)) modelColors.set(model, COLORS[modelColors.size % COLORS.length]);
  return modelColors.get(model);
}

// -- Beta densities ----------------------------------------------------------------------------

function lgamma(x) {  // Lanczos approximation: enough for plotting
  const c = [0.99999999999980993, 676.5203681218851, -1259.1392167224028, 771.32342877765313,
    -176.61502916214059, 12.507343278686905, -0.13857109526572012, 9.9843695780195716e-6,
    1.5056327351493116e-7];
  if (x < 0.5) return Math.log(Math.PI / Math.sin(Math.PI * x)) - lgamma(1 - x);
  x -= 1;
  let a = c[0];
  const t = x + 7.5;
  for (let i = 1; i < 9; i++) a += c[i] / (x + i);
  return 0.5 * Math.log(2 * Math.PI) + (x + 0.5) * Math.log(t) - t + Math.log(a);
}

function betaPdf(x, a, b) {
  if (x <= 0 || x >= 1 || a <= 0 || b <= 0) return 0;
  return Math.exp((a - 1) * Math.log(x) + (b - 1) * Math.log(1 - x) + lgamma(a + b) - lgamma(a) - lgamma(b));
}

// -- charts ------------------------------------------------------------------------------------

// One uPlot per element id, reused while its series stay the same (no flicker on refresh).
function plot(id, element, series, data, extra = {}) {
  const signature = JSON.stringify(series.map(s => [s.label, s.stroke, s.scale]));
  const old = charts.get(id);
  if (old && old.signature === signature && old.chart.root.isConnected) {
    old.chart.setData(data);
    return old.chart;
  }
  if (old) old.chart.destroy();
  element.innerHTML = "";
  const width = Math.max(320, element.clientWidth || element.parentElement.clientWidth || 420);
  const opts = {width, height: 210, series: [{}, ...series], legend: {show: true}, ...extra};
  const chart = new uPlot(opts, data, element);
  chart.root.dataset.chart = id;
  charts.set(id, {chart, signature});
  return chart;
}

function drawPosteriors(bandit) {
  const box = $("contexts");
  const contexts = bandit.contexts || {};
  if (!Object.keys(contexts).length) {
    box.textContent = `selector "${bandit.selector}" keeps no posteriors`;
    return;
  }
  const xs = Array.from({length: 199}, (_, i) => (i + 1) / 200);
  for (const [context, models] of Object.entries(contexts)) {
    let card = box.querySelector(`[data-context="${CSS.escape(context)}"]`);
    if (!card) {
      card = document.createElement("div");
      card.dataset.context = context;
      card.innerHTML = `<h3>${escapeText(context)}</h3><div class="plot"></div><table class="posteriors"><thead>
        <tr><th>model</th><th class="num">α</th><th class="num">β</th><th class="num">mean</th><th>95 %</th>
        <th class="num">obs</th><th class="num">share</th><th>updated</th></tr></thead><tbody></tbody></table>`;
      box.appendChild(card);
    }
    const names = Object.keys(models);
    const data = [xs, ...names.map(m => xs.map(x => betaPdf(x, models[m].alpha, models[m].beta)))];
    const series = names.map(m => ({label: m, stroke: colorOf(m), width: 2, fill: colorOf(m) + "1a"}));
    plot(`posterior:${context}`, card.querySelector(".plot"), series, data, {
      scales: {x: {time: false, range: [0, 1]}, y: {range: (u, lo, hi) => [0, Math.max(1, hi) * 1.05]}},
      axes: [{label: "answer quality"}, {label: "density"}],
      legend: {show: false},
    });
    card.querySelector("tbody").innerHTML = names.map(m => {
      const s = models[m];
      const last = s.last_update ? new Date(s.last_update * 1000).toLocaleTimeString() : "—";
      return `<tr data-model="${escapeText(m)}" data-alpha="${s.alpha}" data-beta="${s.beta}" data-mean="${s.mean}">
        <td><span class="swatch" style="background:${colorOf(m)}"></span>${escapeText(m)}</td>
        <td class="num">${fixed(s.alpha, 2)}</td><td class="num">${fixed(s.beta, 2)}</td>
        <td class="num">${fixed(s.mean, 3)}</td><td>${fixed(s.ci95[0], 2)}–${fixed(s.ci95[1], 2)}</td>
        <td class="num">${s.pulls ?? 0}</td><td class="num">${percent(s.share)}</td><td>${last}</td></tr>`;
    }).join("");
  }
}

function drawDrift(bandit) {
  const box = $("drift");
  const models = (bandit.drift && bandit.drift.acting && bandit.drift.models) || {};
  const names = Object.keys(models);
  box.hidden = !names.length;
  box.querySelector("tbody").innerHTML = names.map(m => {
    const d = models[m];
    return `<tr data-model="${escapeText(m)}" data-shift="${d.shift}"><td><span class="swatch" style="background:${colorOf(m)}"></span>${escapeText(m)}</td>
      <td class="num">${fixed(d.recent_events, 1)}</td><td class="num">${fixed(d.mean_residual, 3)}</td>
      <td class="num">${fixed(d.shift, 3)}</td></tr>`;
  }).join("");
}

function cumulative(values) {
  let total = 0;
  return values.map(v => (total += v || 0));
}

function drawTimeline(timeline, savings) {
  const t = timeline.t;
  const timeScale = {x: {time: true}};
  const shareSeries = timeline.models.map(m => ({label: m, stroke: colorOf(m), width: 2, fill: colorOf(m) + "22"}));
  plot("share", $("share-plot"), shareSeries, [t, ...timeline.models.map(m => timeline.share[m])], {
    scales: {...timeScale, y: {range: [0, 1]}},
    axes: [{}, {label: "share", values: (u, ticks) => ticks.map(v => Math.round(v * 100) + "%")}],
  });
  const strongest = timeline.strongest_model || "strongest";
  plot("cost", $("cost-plot"), [
    {label: "actual $", stroke: "#2a9d8f", width: 2, fill: "#2a9d8f22"},
    {label: `all ${strongest} $`, stroke: "#e63946", width: 2, dash: [6, 4]},
  ], [t, cumulative(timeline.cost_usd), cumulative(timeline.strongest_cost_usd)], {
    scales: {...timeScale, y: {range: (u, lo, hi) => [0, Math.max(hi, 1e-6) * 1.05]}},
    axes: [{}, {label: "USD", size: 70, values: (u, ticks) => ticks.map(v => v.toPrecision(3))}],
  });
  $("savings-title").textContent = savings.saved_fraction == null
    ? "Cumulative cost vs always the strongest model"
    : `Cumulative cost vs always ${strongest}: saved $${savings.saved_usd.toFixed(4)} (${percent(savings.saved_fraction)})`;
  plot("cache", $("cache-plot"), [
    {label: "hit rate", stroke: "#6a4c93", width: 2, scale: "rate"},
    {label: "requests", stroke: "#999", width: 1, scale: "n", fill: "#99999922"},
  ], [t, timeline.cache_hit_rate, timeline.total], {
    scales: {...timeScale, rate: {range: [0, 1]}, n: {range: (u, lo, hi) => [0, Math.max(1, hi) * 1.1]}},
    axes: [{}, {scale: "rate", label: "hit rate", values: (u, ticks) => ticks.map(v => Math.round(v * 100) + "%")},
      {scale: "n", side: 1, label: "requests", grid: {show: false}}],
  });
}

// -- cards and requests ------------------------------------------------------------------------

function drawCards(stats, savings, cache) {
  const cards = [
    ["requests", stats.total_calls, `${stats.errors} errors`],
    ["spent $", fixed(stats.total_cost_usd, 4), `${stats.total_tokens} tokens`],
    ["saved $", fixed(savings.saved_usd, 4),
      `${percent(savings.saved_fraction)} vs ${savings.strongest_model ? savings.strongest_model.model : "—"}`],
    ["cache hit rate", percent(stats.cache.hit_rate), `${stats.cache.hits} / ${stats.cache.lookups} lookups`],
    ["cache entries", cache.entries ?? (cache.enabled === false ? "off" : "—"), cache.backend || ""],
    ["avg latency ms", fixed(stats.avg_latency_ms, 1), `routing ${fixed(stats.avg_routing_ms, 2)} ms`],
  ];
  $("cards").innerHTML = cards.map(([name, value, note]) =>
    `<div class="card" data-card="${escapeText(name)}">${escapeText(name)}<b>${escapeText(value)}</b>
     <small>${escapeText(note)}</small></div>`).join("");
}

function explain(row) {
  const r = row.routing;
  if (!r) return row.requested_model ? `asked for ${row.requested_model}` : "not routed";
  const parts = [r.method];
  if (r.tier) {
    const score = r.score == null ? "" : ` ${Number(r.score).toFixed(2)}`;
    parts.push(`tier ${r.tier}${r.classifier ? ` (${r.classifier}${score})` : ""}`);
  }
  if (r.selector && r.context) {
    const p = r.propensity == null ? "" : `, p=${Number(r.propensity).toFixed(2)}`;
    parts.push(`${r.selector} in ${r.context} chose ${r.model} of ${(r.candidates || []).length}${p}`);
  }
  if (r.cache && r.cache.status && r.cache.status !== "off") {
    const sim = r.cache.similarity == null ? "" : ` ${r.cache.similarity}`;
    parts.push(`cache ${r.cache.status}${sim}`);
  }
  if ((r.attempts || []).length > 1) parts.push(`${r.attempts.length} attempts`);
  parts.push(`${fixed(r.routing_ms, 2)} ms`);
  return parts.join(" · ");
}

function drawRequests(recent) {
  $("recent-total").textContent = `(newest ${recent.data.length} of ${recent.total})`;
  $("recent").innerHTML = recent.data.map(r => {
    const fb = r.feedback == null ? "" : r.feedback >= 0.5 ? "up" : "down";
    const when = new Date(r.created_at).toLocaleTimeString();
    return `<tr data-id="${escapeText(r.id)}" data-model="${escapeText(r.model)}" data-feedback="${fb}">
      <td>${when}</td><td><code title="${escapeText(r.id)}">${escapeText(r.id.slice(-10))}</code></td>
      <td>${escapeText(r.tenant)}</td>
      <td><span class="swatch" style="background:${colorOf(r.model || "—")}"></span>${escapeText(r.model)}</td>
      <td class="why">${escapeText(explain(r))}</td><td>${escapeText(r.cache_status)}</td>
      <td class="num">${fixed(r.cost_usd, 5)}</td><td class="num">${fixed(r.total_ms, 0)}</td>
      <td class="answer" title="${escapeText(r.response_content)}">${escapeText(r.response_content)}</td>
      <td><button type="button" data-thumbs="up" class="${fb === "up" ? "chosen" : ""}" title="good answer">👍 good</button>
        <button type="button" data-thumbs="down" class="${fb === "down" ? "chosen" : ""}" title="bad answer">👎 bad</button>
      </td></tr>`;
  }).join("");
}

// -- life cycle --------------------------------------------------------------------------------

function showLogin(message) {
  document.body.dataset.state = "login";
  $("login").classList.remove("hidden");
  $("signout").classList.add("hidden");
  $("error").textContent = message || "";
  $("key").focus();
}

async function refresh() {
  if (busy) return;
  busy = true;
  try {
    const [stats, bandit, recent, timeline, savings, cache] = await Promise.all([
      api("/stats"), api("/admin/api/bandit"), api("/admin/api/requests?limit=25"),
      api("/admin/api/timeline?buckets=48"), api("/admin/api/savings"), api("/admin/api/cache")]);
    [...Object.values(bandit.contexts || {}).flatMap(Object.keys), ...timeline.models].sort().forEach(colorOf);
    $("login").classList.add("hidden");
    $("signout").classList.toggle("hidden", !adminKey());
    $("error").textContent = "";
    drawCards(stats, savings, cache);
    drawPosteriors(bandit);
    drawDrift(bandit);
    drawTimeline(timeline, savings);
    drawRequests(recent);
    document.body.dataset.state = "loaded";
    document.body.dataset.refreshes = String(++refreshes);
  } catch (err) {
    if (err instanceof AuthError) showLogin(adminKey() ? `key refused: ${err.message}` : "enter the admin key");
    else { $("error").textContent = err.message; document.body.dataset.state = "error"; }
  } finally {
    busy = false;
  }
}

async function sendFeedback(id, thumbs) {
  try {
    await api("/feedback", {method: "POST", headers: {"Content-Type": "application/json"},
                            body: JSON.stringify({id, thumbs})});
  } catch (err) {
    $("error").textContent = `feedback failed: ${err.message}`;
    return;
  }
  await refresh();
}

$("login").addEventListener("submit", ev => {
  ev.preventDefault();
  sessionStorage.setItem(KEY_STORAGE, $("key").value.trim());
  $("key").value = "";
  refresh();
});
$("signout").addEventListener("click", () => {
  sessionStorage.removeItem(KEY_STORAGE);
  location.reload();
});
$("recent").addEventListener("click", ev => {
  const button = ev.target.closest("button[data-thumbs]");
  if (button) sendFeedback(button.closest("tr").dataset.id, button.dataset.thumbs);
});
api("/health").then(h => { $("mode").textContent = h.demo ? "DEMO upstream" : ""; }).catch(() => {});
refresh();
setInterval(refresh, REFRESH_MS);
