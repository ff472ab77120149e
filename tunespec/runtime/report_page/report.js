"use strict";
// The report page: everything it shows is in the JSON block #report-data (written by tunespec report).
// Text from the build is only ever set as textContent, never parsed as HTML.
const D = JSON.parse(document.getElementById("report-data").textContent);
const RUNS = D.runs;
const TWO = RUNS.length === 2;
const TAGS = TWO ? ["A", "B"] : [""];
const COLORS = ["#2f6fdb", "#e8710a", "#1a7f37", "#9334e6"];
const METRICS = ["rouge1", "rouge2", "rougeL", "rougeLsum"];
const SVGNS = "http://www.w3.org/2000/svg";

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null) continue;
    if (k === "class") e.className = v; else e.setAttribute(k, v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}
function sv(tag, attrs, text) {
  const e = document.createElementNS(SVGNS, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}
const isNum = (x) => typeof x === "number" && isFinite(x);
function fmt(x, digits) {
  if (!isNum(x)) return "–";
  if (digits !== undefined) return x.toFixed(digits);
  const a = Math.abs(x);
  if (a !== 0 && (a < 1e-3 || a >= 1e6)) return x.toExponential(2);
  return String(+x.toPrecision(4));
}
const pct = (x) => (isNum(x) ? (100 * x).toFixed(1) : "–");
const signed = (x, d = 1) => (isNum(x) ? (x > 0 ? "+" : "") + x.toFixed(d) : "–");
const runName = (i) => (TWO ? `${TAGS[i]}: ${RUNS[i].name}` : RUNS[i].name);

// ------------------------------------------------------------------------------------------ header

document.getElementById("title").textContent = "tunespec report: " + RUNS.map((r, i) => runName(i)).join(" vs ");
document.getElementById("subtitle").textContent = RUNS.map((r, i) =>
  `${TWO ? TAGS[i] + ": " : ""}${r.path}${r.description ? " — " + r.description : ""}`).join("   ·   ");
const missingList = document.getElementById("missing");
for (const m of D.missing) missingList.append(el("li", {}, "not there yet: " + m));
for (const n of D.notes) missingList.append(el("li", {}, "note: " + n));
document.getElementById("footer").textContent =
  `Written by tunespec ${D.tunespec} from ${RUNS.map((r) => r.path).join(" and ")}. ` +
  "This file is self-contained: it needs no network to open.";

// ------------------------------------------------------------------------------------------ charts

function ema(points, alpha) {
  // TensorBoard-style exponential moving average, debiased so the first points are not pulled to zero
  let s = 0, w = 0;
  const out = [];
  for (const [x, y] of points) {
    if (!isNum(y)) continue;
    s = alpha * s + (1 - alpha) * y;
    w = alpha * w + (1 - alpha);
    out.push([x, s / w]);
  }
  return out;
}

function niceTicks(lo, hi, n) {
  if (!(hi > lo)) { const d = Math.abs(lo) || 1; lo -= d * 0.5; hi += d * 0.5; }
  const raw = (hi - lo) / n;
  const mag = Math.pow(10, Math.floor(Math.log10(raw)));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= raw) || 10 * mag;
  const ticks = [];
  for (let t = Math.ceil(lo / step) * step; t <= hi + step * 1e-9; t += step) ticks.push(+t.toPrecision(12));
  return { lo: Math.min(lo, ticks[0]), hi: Math.max(hi, ticks[ticks.length - 1]), ticks };
}

// series: [{label, color, points: [[x, y]], width, opacity, dash, markers, legend}]
function lineChart(fig, title, { xLabel, yLabel, series, empty }) {
  fig.replaceChildren(el("figcaption", {}, title));
  const withData = series.filter((s) => s.points.some(([x, y]) => isNum(x) && isNum(y)));
  fig.dataset.series = String(withData.length);
  fig.dataset.points = String(withData.reduce((n, s) => n + s.points.length, 0));
  if (!withData.length) { fig.append(el("div", { class: "empty" }, empty || "nothing was logged")); return; }
  const W = 560, H = 240, L = 58, R = 14, T = 10, B = 36;
  const xs = [], ys = [];
  for (const s of withData) for (const [x, y] of s.points) if (isNum(x) && isNum(y)) { xs.push(x); ys.push(y); }
  const X = niceTicks(Math.min(...xs), Math.max(...xs), 6), Y = niceTicks(Math.min(...ys), Math.max(...ys), 5);
  const px = (x) => L + ((x - X.lo) / (X.hi - X.lo)) * (W - L - R);
  const py = (y) => H - B - ((y - Y.lo) / (Y.hi - Y.lo)) * (H - T - B);
  const g = sv("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": title });
  const grid = sv("g", { class: "grid" }), axis = sv("g", { class: "axis" });
  for (const t of Y.ticks) {
    grid.append(sv("line", { x1: L, x2: W - R, y1: py(t), y2: py(t) }));
    axis.append(sv("text", { x: L - 6, y: py(t) + 4, "text-anchor": "end" }, fmt(t)));
  }
  for (const t of X.ticks) {
    grid.append(sv("line", { x1: px(t), x2: px(t), y1: T, y2: H - B }));
    axis.append(sv("text", { x: px(t), y: H - B + 15, "text-anchor": "middle" }, fmt(t)));
  }
  axis.append(sv("line", { x1: L, x2: W - R, y1: H - B, y2: H - B }));
  axis.append(sv("line", { x1: L, x2: L, y1: T, y2: H - B }));
  axis.append(sv("text", { x: (L + W - R) / 2, y: H - 4, "text-anchor": "middle" }, xLabel));
  axis.append(sv("text", { x: 12, y: (T + H - B) / 2, "text-anchor": "middle",
                           transform: `rotate(-90 12 ${(T + H - B) / 2})` }, yLabel));
  g.append(grid, axis);
  for (const s of withData) {
    const pts = s.points.filter(([x, y]) => isNum(x) && isNum(y));
    const d = pts.map(([x, y], i) => `${i ? "L" : "M"}${px(x).toFixed(1)},${py(y).toFixed(1)}`).join("");
    const path = sv("path", { d, fill: "none", stroke: s.color, "stroke-width": s.width || 2,
                              "stroke-opacity": s.opacity || 1, class: "series" });
    if (s.dash) path.setAttribute("stroke-dasharray", s.dash);
    path.dataset.label = s.label;
    path.dataset.n = String(pts.length);
    g.append(path);
    if (s.markers || pts.length === 1)
      for (const [x, y] of pts) g.append(sv("circle", { cx: px(x), cy: py(y), r: 3, fill: s.color }));
  }
  // hover: the value of every series at the nearest logged x
  const cursor = sv("line", { y1: T, y2: H - B, stroke: "#7a8291", "stroke-dasharray": "3 3", visibility: "hidden" });
  const hit = sv("rect", { x: L, y: T, width: W - L - R, height: H - T - B, fill: "transparent" });
  g.append(cursor, hit);
  fig.style.position = "relative";
  const tip = el("div", { class: "tip", hidden: "" });
  hit.addEventListener("mousemove", (ev) => {
    const box = g.getBoundingClientRect();
    const x = X.lo + ((ev.clientX - box.left) * (W / box.width) - L) / (W - L - R) * (X.hi - X.lo);
    let best = null;
    for (const v of xs) if (best === null || Math.abs(v - x) < Math.abs(best - x)) best = v;
    const lines = [`${xLabel} ${fmt(best)}`];
    for (const s of withData) {
      const p = s.points.find(([px_]) => px_ === best);
      if (p && isNum(p[1])) lines.push(`${s.label}: ${fmt(p[1])}`);
    }
    cursor.setAttribute("x1", px(best)); cursor.setAttribute("x2", px(best));
    cursor.setAttribute("visibility", "visible");
    tip.textContent = lines.join("\n");
    tip.hidden = false;
    const fb = fig.getBoundingClientRect();
    tip.style.left = `${Math.min(ev.clientX - fb.left + 12, fb.width - 180)}px`;
    tip.style.top = `${ev.clientY - fb.top + 12}px`;
  });
  hit.addEventListener("mouseleave", () => { tip.hidden = true; cursor.setAttribute("visibility", "hidden"); });
  fig.append(g, tip);
  const legend = el("div", { class: "legend" });
  for (const s of withData) if (s.legend !== false)
    legend.append(el("span", {}, el("i", { style: `background:${s.color};opacity:${s.opacity || 1}` }), s.label));
  fig.append(legend);
}

function barChart(fig, title, { edges, counts, xLabel, color }) {
  fig.replaceChildren(el("figcaption", {}, title));
  fig.dataset.points = String(counts.length);
  if (!counts.length) { fig.append(el("div", { class: "empty" }, "no rows")); return; }
  const W = 560, H = 200, L = 48, R = 14, T = 10, B = 36;
  const X = { lo: edges[0], hi: edges[edges.length - 1] }, Y = niceTicks(0, Math.max(...counts), 4);
  const px = (x) => L + ((x - X.lo) / (X.hi - X.lo || 1)) * (W - L - R);
  const py = (y) => H - B - ((y - Y.lo) / (Y.hi - Y.lo)) * (H - T - B);
  const g = sv("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": title });
  const axis = sv("g", { class: "axis" });
  for (const t of Y.ticks) axis.append(sv("text", { x: L - 6, y: py(t) + 4, "text-anchor": "end" }, fmt(t)));
  for (const t of niceTicks(X.lo, X.hi, 6).ticks.filter((t) => t >= X.lo && t <= X.hi))
    axis.append(sv("text", { x: px(t), y: H - B + 15, "text-anchor": "middle" }, fmt(t)));
  axis.append(sv("line", { x1: L, x2: W - R, y1: H - B, y2: H - B }));
  axis.append(sv("text", { x: (L + W - R) / 2, y: H - 4, "text-anchor": "middle" }, xLabel));
  g.append(axis);
  counts.forEach((c, i) => {
    const r = sv("rect", { x: px(edges[i]) + 0.5, width: Math.max(px(edges[i + 1]) - px(edges[i]) - 1, 1),
                           y: py(c), height: py(0) - py(c), fill: color, class: "bar" });
    r.append(sv("title", {}, `${fmt(edges[i])}–${fmt(edges[i + 1])} tokens: ${c} rows`));
    g.append(r);
  });
  fig.append(g);
}

function drawTraining() {
  const alpha = +document.getElementById("smoothing").value;
  document.getElementById("smoothing-value").textContent = alpha.toFixed(2);
  const loss = [], lr = [], tps = [], mem = [];
  RUNS.forEach((r, i) => {
    const t = r.training, c = COLORS[i % COLORS.length], p = TWO ? TAGS[i] + " " : "";
    const raw = t.train.map((m) => [m.step, m.loss]);
    loss.push({ label: p + "train loss (raw)", color: c, points: raw, width: 1, opacity: 0.3 });
    loss.push({ label: p + `train loss (smoothed ${alpha.toFixed(2)})`, color: c, points: ema(raw, alpha), width: 2 });
    loss.push({ label: p + "eval loss", color: COLORS[(i + 2) % COLORS.length], dash: "5 3", markers: true,
                points: t.eval.map((m) => [m.step, m.eval_loss]) });
    lr.push({ label: p + "learning rate", color: c, points: t.train.map((m) => [m.step, m.lr]) });
    tps.push({ label: p + "tokens/s", color: c, points: t.train.map((m) => [m.step, m.tokens_per_s]) });
    mem.push({ label: p + "peak GPU memory", color: c, points: t.train.map((m) => [m.step, m.peak_memory_gib]) });
  });
  const none = RUNS.every((r) => !r.training.train.length);
  const why = none ? "no training metrics yet (tunespec train BUILD)" : undefined;
  lineChart(document.getElementById("chart-loss"), "Loss", { xLabel: "optimizer step", yLabel: "nats/token",
            series: loss, empty: why });
  lineChart(document.getElementById("chart-lr"), "Learning rate", { xLabel: "optimizer step", yLabel: "lr",
            series: lr, empty: why });
  lineChart(document.getElementById("chart-tps"), "Throughput (trained-on tokens/s, real tokens)",
            { xLabel: "optimizer step", yLabel: "tokens/s", series: tps, empty: why });
  lineChart(document.getElementById("chart-memory"), "Peak GPU memory", { xLabel: "optimizer step", yLabel: "GiB",
            series: mem, empty: why || "not recorded: peak memory is logged on CUDA GPUs only (this run had none)" });
}

function trainingStatus() {
  const box = document.getElementById("training-status");
  RUNS.forEach((r, i) => {
    const t = r.training, last = t.train[t.train.length - 1];
    let text = `${runName(i)}: `;
    if (t.finished) text += `trained, ${t.model_output}/ verified`;
    else if (t.train.length) text += `training has not finished (no ${t.model_output}/ yet)`;
    else text += "not trained yet";
    if (last) text += `; last logged step ${last.step}` + (t.total_steps ? ` of ${t.total_steps}` : "") +
      `, loss ${fmt(last.loss)}`;
    if (t.final && isNum(t.final.eval_loss)) text += `; final eval loss ${fmt(t.final.eval_loss)}`;
    if (t.cut_lines) text += `; ${t.cut_lines} cut metric line(s) skipped`;
    box.append(el("p", {}, text));
  });
}

// ------------------------------------------------------------------------------------------ evaluation

function ciPlot(entries, hi) {
  // one line per model: its 95% interval and the F1 as a dot, on 0..hi
  const W = 170, H = 8 + 10 * entries.length;
  const g = sv("svg", { viewBox: `0 0 ${W} ${H}`, width: W, height: H, class: "ciplot" });
  const x = (v) => 4 + (v / hi) * (W - 8);
  entries.forEach(([m, color], k) => {
    const y = 8 + 10 * k;
    if (isNum(m.ci_low) && isNum(m.ci_high))
      g.append(sv("line", { x1: x(m.ci_low), x2: x(m.ci_high), y1: y, y2: y, stroke: color, "stroke-width": 2 }));
    if (isNum(m.f1)) g.append(sv("circle", { cx: x(m.f1), cy: y, r: 3, fill: color }));
  });
  return g;
}

function rougeSection() {
  const box = document.getElementById("rouge");
  const tuned = [];
  RUNS.forEach((r, i) => {
    if (TWO) box.append(el("h3", {}, runName(i)));
    const ev = r.evaluation;
    if (!ev) { box.append(el("p", { class: "hint" }, `not evaluated yet: tunespec evaluate ${r.path}`)); return; }
    const s = ev.summary, labels = ev.labels, st = s.settings || {};
    box.append(el("p", { class: "hint" },
      `Split ${st.split}, ${st.rows} rows; references combined by ${st.multi_ref}; ROUGE F1 ×100 with the 95% ` +
      "bootstrap interval (1000 resamples over rows); tokenizer " + (st.rouge_tokenizer || "–") + ". Generation: " +
      Object.entries(st.generation || {}).map(([k, v]) => `${k}=${v}`).join(", ") + `, stop=${JSON.stringify(st.stop)}`));
    const hasRouge = labels.some((l) => s[l] && s[l].rouge1);
    const head = el("tr", {}, el("th", {}, "metric"),
      labels.map((l) => el("th", { class: "num" }, `${l} (${s[l].model})`)),
      s.delta ? el("th", { class: "num" }, "Δ tuned − base") : null,
      hasRouge ? el("th", {}, "95% intervals") : null);
    const body = [];
    if (hasRouge) {
      const hi = Math.max(...labels.flatMap((l) => METRICS.map((m) => (s[l][m] || {}).ci_high || 0)), 0.01) * 1.1;
      for (const m of METRICS) {
        body.push(el("tr", {}, el("td", {}, m),
          labels.map((l) => { const v = s[l][m] || {};
            return el("td", { class: "num", "data-metric": m, "data-label": l }, pct(v.f1), " ",
                      el("span", { class: "ci" }, `[${pct(v.ci_low)}, ${pct(v.ci_high)}]`)); }),
          s.delta ? el("td", { class: "num " + (s.delta[m] > 0 ? "pos" : s.delta[m] < 0 ? "neg" : "") },
                       signed(100 * s.delta[m])) : null,
          el("td", {}, ciPlot(labels.map((l, k) => [s[l][m] || {}, COLORS[k % COLORS.length]]), hi))));
      }
    }
    const extra = [["eval loss", "eval_loss", (x) => fmt(x, 4)], ["perplexity", "perplexity", (x) => fmt(x, 2)],
                   ["generated tokens/s", "tokens_per_second", (x) => fmt(x, 1)]];
    for (const [name, key, f] of extra) {
      if (!labels.some((l) => isNum(s[l][key]))) continue;
      body.push(el("tr", {}, el("td", {}, name), labels.map((l) => el("td", { class: "num" }, f(s[l][key]))),
        s.delta ? el("td", { class: "num" },
                     isNum(s.base && s.base[key]) && isNum(s.tuned && s.tuned[key])
                       ? signed(s.tuned[key] - s.base[key], key === "eval_loss" ? 4 : 2) : "–") : null,
        hasRouge ? el("td", {}) : null));
    }
    box.append(el("table", { class: "rouge", "data-run": String(i) }, el("thead", {}, head), el("tbody", {}, body)));
    if (hasRouge) {
      const legend = el("div", { class: "legend" });
      labels.forEach((l, k) => legend.append(el("span", {}, el("i", { style: `background:${COLORS[k % COLORS.length]}` }), l)));
      box.append(legend);
    }
    const agree = s.tuned && s.tuned.merged_vs_adapter;
    if (agree) box.append(el("p", { class: "hint" },
      `tuned is the merged model; at the merge it chose base+adapter's next token at ${(100 * agree.top1_agreement).toFixed(2)}% ` +
      `of ${agree.positions_checked} positions (largest logit difference ${fmt(agree.max_logit_diff)}, ${agree.dtype})`));
    tuned.push([i, s[labels.includes("tuned") ? "tuned" : labels[labels.length - 1]]]);
  });
  if (TWO && tuned.length === 2 && tuned[0][1] && tuned[1][1] && tuned[0][1].rouge1 && tuned[1][1].rouge1) {
    box.append(el("h3", {}, "B − A (tuned models)"));
    const rows = METRICS.map((m) => { const d = tuned[1][1][m].f1 - tuned[0][1][m].f1;
      return el("tr", {}, el("td", {}, m), el("td", { class: "num" }, pct(tuned[0][1][m].f1)),
                el("td", { class: "num" }, pct(tuned[1][1][m].f1)),
                el("td", { class: "num " + (d > 0 ? "pos" : d < 0 ? "neg" : "") }, signed(100 * d))); });
    box.append(el("table", { class: "rouge-compare" },
      el("thead", {}, el("tr", {}, el("th", {}, "metric"), el("th", { class: "num" }, "A"), el("th", { class: "num" }, "B"),
                          el("th", { class: "num" }, "Δ B − A"))), el("tbody", {}, rows)));
    box.append(el("p", { class: "hint" }, "The two runs' intervals are in their own tables; a difference inside " +
      "both intervals may be noise (the runs may also differ in their rows: see the spec difference)."));
  }
}

// ------------------------------------------------------------------------------------------ predictions

function predictionModel() {
  // columns: [{title, run, label}] and rows: [{id, prompt, references, outputs: [...], scores: [{metric: f1}]}]
  const pick = (r) => r.evaluation.labels.includes("tuned") ? "tuned" : r.evaluation.labels[r.evaluation.labels.length - 1];
  if (TWO) {
    if (!RUNS[0].evaluation || !RUNS[1].evaluation) return null;
    const la = pick(RUNS[0]), lb = pick(RUNS[1]);
    const byId = new Map(RUNS[1].evaluation.rows.map((row) => [row.id, row]));
    const rows = [];
    for (const a of RUNS[0].evaluation.rows) {
      const b = byId.get(a.id);
      if (!b) continue;
      rows.push({ id: a.id, prompt: a.prompt, references: a.references,
                  outputs: [a.predictions[la], b.predictions[lb]], scores: [a.scores[la] || {}, b.scores[lb] || {}] });
    }
    const unmatched = RUNS[0].evaluation.rows.length + RUNS[1].evaluation.rows.length - 2 * rows.length;
    return { columns: [`A ${la}`, `B ${lb}`], rows, unmatched };
  }
  const ev = RUNS[0].evaluation;
  if (!ev) return null;
  const labels = ev.labels.filter((l) => ev.rows.some((row) => l in row.predictions));
  return { columns: labels, unmatched: 0,
           rows: ev.rows.map((row) => ({ id: row.id, prompt: row.prompt, references: row.references,
                                         outputs: labels.map((l) => row.predictions[l]),
                                         scores: labels.map((l) => row.scores[l] || {}) })) };
}

const PRED = { model: null, sortKey: null, sortDir: 1 };

function predictionSection() {
  const sel = document.getElementById("pred-metric");
  for (const m of METRICS) sel.append(el("option", { value: m }, m));
  sel.value = "rougeL";
  PRED.model = predictionModel();
  const table = document.getElementById("pred-table");
  if (!PRED.model || !PRED.model.columns.length) {
    table.replaceWith(el("p", { class: "hint" }, TWO
      ? "both builds need an evaluation with predictions: tunespec evaluate BUILD"
      : `no predictions yet: tunespec evaluate ${RUNS[0].path}` + (RUNS[0].evaluation ? " (with rouge in evaluation.metrics)" : "")));
    return;
  }
  const n = PRED.model.columns.length;
  PRED.sortKey = `score${n - 1}`;  // worst first: the last model's score, lowest at the top
  PRED.sortDir = 1;
  sel.addEventListener("change", renderPredictions);
  document.getElementById("pred-filter").addEventListener("input", renderPredictions);
  renderPredictions();
}

function predValue(row, key, metric) {
  if (key === "id") return row.id;
  if (key.startsWith("score")) return row.scores[+key.slice(5)][metric];
  if (key === "delta") {
    const a = row.scores[0][metric], b = row.scores[row.scores.length - 1][metric];
    return isNum(a) && isNum(b) ? b - a : null;
  }
  return null;
}

function renderPredictions() {
  const metric = document.getElementById("pred-metric").value;
  const filter = document.getElementById("pred-filter").value.trim().toLowerCase();
  const { columns, rows, unmatched } = PRED.model;
  const table = document.getElementById("pred-table");
  const two = columns.length >= 2;
  const sortable = (key, title, cls) => {
    const th = el("th", { class: `sortable ${cls || ""}`, "data-key": key }, title);
    if (PRED.sortKey === key) th.classList.add(PRED.sortDir > 0 ? "sorted-asc" : "sorted-desc");
    th.addEventListener("click", () => {
      if (PRED.sortKey === key) PRED.sortDir = -PRED.sortDir; else { PRED.sortKey = key; PRED.sortDir = 1; }
      renderPredictions();
    });
    return th;
  };
  table.tHead.replaceChildren(el("tr", {}, sortable("id", "id"), el("th", {}, "prompt"), el("th", {}, "references"),
    columns.map((c) => el("th", {}, `${c} output`)),
    columns.map((c, k) => sortable(`score${k}`, `${c} ${metric}`, "num")),
    two ? sortable("delta", `Δ ${columns[columns.length - 1]} − ${columns[0]}`, "num") : null));
  const shown = rows.filter((r) => !filter || [r.id, r.prompt, ...r.references, ...r.outputs]
    .some((t) => typeof t === "string" && t.toLowerCase().includes(filter)));
  const key = PRED.sortKey, dir = PRED.sortDir;
  shown.sort((a, b) => {
    const x = predValue(a, key, metric), y = predValue(b, key, metric);
    if (x === y) return String(a.id).localeCompare(String(b.id));
    if (x === null || x === undefined) return 1;  // rows without a score go last either way
    if (y === null || y === undefined) return -1;
    return (x < y ? -1 : 1) * dir;
  });
  const text = (t) => el("td", { class: "text" }, el("div", {}, t === undefined || t === null ? "–" : (t === "" ? "(empty)" : t)));
  table.tBodies[0].replaceChildren(...shown.map((r) => {
    const d = predValue(r, "delta", metric);
    return el("tr", { "data-id": r.id }, el("td", {}, r.id), text(r.prompt),
      text(r.references.map((x, k) => (r.references.length > 1 ? `[${k + 1}] ` : "") + x).join("\n")),
      r.outputs.map(text),
      r.scores.map((s, k) => el("td", { class: "num", "data-col": `score${k}` }, pct(s[metric]))),
      two ? el("td", { class: "num delta " + (d > 0 ? "pos" : d < 0 ? "neg" : ""), "data-col": "delta",
                       "data-value": isNum(d) ? String(d) : "" }, isNum(d) ? signed(100 * d) : "–") : null);
  }));
  document.getElementById("pred-count").textContent = `${shown.length} of ${rows.length} rows` +
    (unmatched ? `; ${unmatched} row(s) in only one build are left out` : "") + "; click a column header to sort";
}

// ------------------------------------------------------------------------------------------ data

function kvTable(pairs) {
  return el("table", { class: "kv" }, el("tbody", {}, pairs.filter(([, v]) => v !== undefined && v !== null && v !== "")
    .map(([k, v]) => el("tr", {}, el("th", {}, k), el("td", {}, v instanceof Node ? v : String(v))))));
}

function dataSection() {
  const box = document.getElementById("data-body");
  RUNS.forEach((r, i) => {
    if (TWO) box.append(el("h3", {}, runName(i)));
    const d = r.data;
    const t = d.template || {};
    box.append(kvTable([["template", `${t.name} (${t.kind})` + (t.stop ? `, stop ${JSON.stringify(t.stop)}` : "")],
                        ["max_length", d.max_length]]));
    const splits = Object.entries(d.splits);
    box.append(el("table", { class: "splits" },
      el("thead", {}, el("tr", {}, ["split", "rows", "tokens", "trained tokens", "trained fraction", "truncated",
        "length min", "median", "mean", "p95", "max"].map((h, k) => el("th", { class: k ? "num" : "" }, h)))),
      el("tbody", {}, splits.map(([name, s]) => el("tr", {}, el("td", {}, name),
        [s.rows, s.tokens, s.trained_tokens].map((v) => el("td", { class: "num" }, String(v))),
        el("td", { class: "num" }, (100 * s.trained_fraction).toFixed(1) + "%"), el("td", { class: "num" }, String(s.truncated)),
        ["min", "median", "mean", "p95", "max"].map((k) => el("td", { class: "num" }, fmt((s.length || {})[k]))))))));
    const drops = Object.entries(d.dropped || {}).flatMap(([stage, reasons]) =>
      Object.entries(reasons).map(([reason, n]) => [stage, reason, n]));
    box.append(el("h3", {}, "Rows the compile left out"));
    box.append(drops.length
      ? el("table", { class: "drops" }, el("thead", {}, el("tr", {}, el("th", {}, "stage"), el("th", {}, "reason"),
                                                               el("th", { class: "num" }, "rows"))),
           el("tbody", {}, drops.map(([s, why, n]) => el("tr", {}, el("td", {}, s), el("td", {}, why),
                                                          el("td", { class: "num" }, String(n))))))
      : el("p", { class: "hint" }, "none: every row read is in the build"));
    box.append(el("h3", {}, "Token lengths"));
    const grid = el("div", { class: "charts" });
    box.append(grid);
    splits.forEach(([name, s], k) => {
      const fig = el("figure", { class: "chart histogram", "data-split": name });
      grid.append(fig);
      barChart(fig, `${name}: rows by length (max_length ${d.max_length})`,
               { edges: s.histogram.edges, counts: s.histogram.counts, xLabel: "tokens per row",
                 color: COLORS[(i + k) % COLORS.length] });
    });
    box.append(el("h3", {}, "Loss mask of the first train rows"));
    box.append(el("p", { class: "hint" }, "Highlighted: the tokens that carry loss; the rest is masked (-100)."));
    for (const p of d.preview) {
      box.append(el("p", {}, `${p.id} (from ${p.source}): ${p.tokens} tokens, ${p.trained} trained ` +
                             `(${(100 * p.trained / Math.max(1, p.tokens)).toFixed(0)}%)`));
      box.append(el("pre", { class: "mask" }, p.spans.map(([trained, text]) =>
        el("span", { class: trained ? "trained" : "masked" }, text))));
    }
    if (!d.preview.length) box.append(el("p", { class: "hint" }, "the build has no train rows"));
  });
}

// ------------------------------------------------------------------------------------------ lock

function lockSection() {
  const box = document.getElementById("lock-body");
  const grid = el("div", { class: TWO ? "grid2" : "" });
  box.append(grid);
  RUNS.forEach((r, i) => {
    const l = r.lock, col = el("div", {});
    grid.append(col);
    if (TWO) col.append(el("h3", {}, runName(i)));
    const inputs = el("ul", {}, ((l.inputs || {}).sources || []).flatMap((s) => (s.entries || []).flatMap((e) =>
      e.file ? [el("li", {}, el("code", {}, e.file), ` (${s.split}, ${s.rows_read} rows read) sha256 `, el("code", {}, String(e.sha256 || "").slice(0, 16) + "…"))]
             : (e.files || []).map((f) => el("li", {}, el("code", {}, f.file), " sha256 ", el("code", {}, String(f.sha256 || "").slice(0, 16) + "…"))))));
    col.append(kvTable([
      ["reproduce", el("code", {}, String(l.reproduce).replace("BUILD", r.path))],
      ["made by", l.command ? el("code", {}, l.command) : null],
      ["created", l.created], ["spec file", l.spec_file],
      ["extends", (l.extends || []).join(", ")], ["overrides", (l.overrides || []).join(" ")],
      ["input key", el("code", {}, l.input_key)], ["manifest sha256", el("code", {}, l.manifest_sha256)],
      ["model", JSON.stringify(Object.fromEntries(Object.entries(r.model || {}).filter(([, v]) => v !== null && !(Array.isArray(v) && !v.length))))],
      ["adapter", r.adapter],
      ["inputs", inputs],
      ["versions", Object.entries(l.versions || {}).map(([k, v]) => `${k} ${v}`).join(", ")]]));
    col.append(el("details", {}, el("summary", {}, "the resolved spec (portable paths)"),
                  el("pre", {}, JSON.stringify(l.spec, null, 2))));
  });
  if (TWO) {
    const sec = document.getElementById("spec-diff-section");
    sec.hidden = false;
    const diff = D.spec_diff || [];
    const show = (v) => (v === undefined || v === null ? "–" : typeof v === "string" ? v : JSON.stringify(v));
    document.getElementById("spec-diff").append(diff.length
      ? el("table", { class: "diff" }, el("thead", {}, el("tr", {}, el("th", {}, "key"), el("th", {}, "A"), el("th", {}, "B"))),
           el("tbody", {}, diff.map((x) => el("tr", {}, el("td", {}, el("code", {}, x.key)),
             el("td", {}, x.only === "b" ? "(absent)" : show(x.a)), el("td", {}, x.only === "a" ? "(absent)" : show(x.b))))))
      : el("p", {}, "The two builds' specs are the same."));
  }
}

document.getElementById("smoothing").addEventListener("input", drawTraining);
trainingStatus();
drawTraining();
rougeSection();
predictionSection();
dataSection();
lockSection();
document.body.dataset.ready = "1";
