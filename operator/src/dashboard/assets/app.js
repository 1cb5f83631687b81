// The dashboard's whole front end: fetch the JSON API every two seconds and
// redraw. No framework, no build step.
"use strict";

// A token given in the link (?token=) is kept for this tab only and taken
// out of the address bar; the API gets it as a bearer token, which a
// cross-site page cannot attach.
const params = new URLSearchParams(location.search);
if (params.has("token")) {
  sessionStorage.setItem("sluice-token", params.get("token"));
  params.delete("token");
  const rest = params.toString();
  history.replaceState(null, "", location.pathname + (rest ? "?" + rest : ""));
}
const token = sessionStorage.getItem("sluice-token");
const headers = token ? { Authorization: `Bearer ${token}` } : {};
const pct = (x) => (100 * x).toFixed(1) + "%";
const el = (tag, attrs = {}, text) => {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
};
// A template analysis: a row per metric with its phase, counts and latest
// measurement.
const metricsTable = (a) => {
  const t = el("table", { class: "analysis metrics", "data-verdict": a.verdict ?? "" });
  t.append(el("caption", {}, `Analysis (${a.run ?? "-"}, ${a.evaluatedAt ?? "-"}): ${a.verdict ?? "-"}`));
  for (const m of a.metrics) {
    const last = (m.measurements || []).at(-1) || {};
    const tr = el("tr", { "data-metric": m.name, "data-phase": m.phase });
    tr.append(
      el("th", { scope: "row" }, m.name + (m.dryRun ? " (dry run)" : "")),
      el("td", {}, m.phase),
      el("td", {}, `${m.successful ?? 0} ok · ${m.failed ?? 0} failed · ${(m.inconclusive ?? 0) + (m.error ?? 0)} inconclusive/error of ${m.count ?? 0}`),
      el("td", {}, `${last.value ?? "-"}${last.message ? " — " + last.message : ""}`),
    );
    t.append(tr);
  }
  return t;
};
const svgEl = (tag, attrs = {}, text) => {
  const e = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
};

async function api(path) {
  const r = await fetch(path, { headers });
  if (!r.ok) throw new Error(`${path}: ${r.status}`);
  return r.json();
}

function drawGraph(g) {
  const svg = document.getElementById("graph");
  svg.replaceChildren();
  const sources = g.nodes.filter((n) => n.kind === "source");
  const dests = g.nodes.filter((n) => n.kind === "destination");
  const pos = {};
  const place = (list, x) => list.forEach((n, i) => {
    pos[n.id] = { x, y: 40 + i * (260 / Math.max(list.length, 1)) + 20 };
  });
  place(sources, 20);
  place(dests, 620);
  for (const e of g.edges) {
    const a = pos[e.from], b = pos[e.to];
    if (!a || !b) continue;
    const grp = svgEl("g", { class: `edge ${e.health}`, "data-from": e.from, "data-to": e.to, "data-share": e.share.toFixed(4) });
    const x1 = a.x + 240, y1 = a.y + 16, x2 = b.x, y2 = b.y + 16;
    grp.append(svgEl("path", { d: `M${x1},${y1} C${x1 + 120},${y1} ${x2 - 120},${y2} ${x2},${y2}`, class: e.health }));
    grp.append(svgEl("text", { x: (x1 + x2) / 2 - 60, y: (y1 + y2) / 2 - 6 },
      `${e.rps.toFixed(1)} req/s · ${pct(e.share)} · ${pct(e.errorRate)} err`));
    svg.append(grp);
  }
  for (const n of g.nodes) {
    const p = pos[n.id];
    const grp = svgEl("g", { class: "node", "data-id": n.id });
    grp.append(svgEl("rect", { x: p.x, y: p.y, width: 240, height: 32 }));
    const label = n.kind === "source" ? `${n.namespace}/${n.label}` : `${n.label}${n.revision ? " @" + n.revision.slice(0, 7) : ""}`;
    grp.append(svgEl("text", { x: p.x + 10, y: p.y + 21 }, label));
    svg.append(grp);
  }
  const names = Object.fromEntries(g.nodes.map((n) => [n.id, n.kind === "source" ? `${n.namespace}/${n.label}` : n.label]));
  const body = document.querySelector("#edges tbody");
  body.replaceChildren();
  for (const e of g.edges) {
    const tr = el("tr", { class: e.health, "data-from": names[e.from], "data-to": names[e.to], "data-share": e.share.toFixed(4) });
    tr.append(el("td", {}, names[e.from]), el("td", {}, names[e.to]), el("td", {}, e.rps.toFixed(1)),
      el("td", {}, pct(e.share)), el("td", {}, pct(e.errorRate)));
    body.append(tr);
  }
}

function chart(series, stable) {
  const svg = svgEl("svg", { class: "chart", viewBox: "0 0 520 140", role: "img", "aria-label": "error rate over time by revision" });
  const revs = Object.keys(series);
  const ts = revs.flatMap((r) => series[r].map((p) => p.t));
  if (!ts.length) return svg;
  const t0 = Math.min(...ts), t1 = Math.max(...ts) || t0 + 1;
  const x = (t) => 30 + (480 * (t - t0)) / Math.max(t1 - t0, 1);
  const y = (r) => 120 - 100 * Math.min(r, 1);
  svg.append(svgEl("text", { x: 2, y: 22, "font-size": 10 }, "100%"), svgEl("text", { x: 8, y: 122, "font-size": 10 }, "0%"));
  revs.forEach((rev, i) => {
    const cls = rev === stable ? "ok" : "bad";
    const live = series[rev].filter((p) => p.requests > 0);
    svg.append(svgEl("polyline", { points: live.map((p) => `${x(p.t)},${y(p.errorRate)}`).join(" "), fill: "none", "stroke-width": 2, class: cls }));
    for (const p of live) {
      const dot = svgEl("circle", { cx: x(p.t), cy: y(p.errorRate), r: 3, class: cls, fill: "currentColor" });
      dot.append(svgEl("title", {}, `${rev.slice(0, 7)}: ${pct(p.errorRate)} of ${p.requests}`));
      svg.append(dot);
    }
    svg.append(svgEl("text", { x: 300, y: 14 + 12 * i, "font-size": 11, class: cls },
      `${rev === stable ? "stable" : "canary"} ${rev.slice(0, 7)}`));
  });
  return svg;
}

function drawRollouts(list, actions) {
  const root = document.getElementById("rollouts");
  root.replaceChildren();
  if (!list.length) root.append(el("p", {}, "No Rollouts in this namespace."));
  for (const r of list) {
    const card = el("article", { class: "card", "data-rollout": r.name, "data-phase": r.phase });
    const h = el("h3", {}, `${r.name} `);
    h.append(el("span", { class: `phase ${r.phase}`, "data-reason": r.reason }, r.reason ? `${r.phase} (${r.reason})` : r.phase));
    card.append(h, el("p", {}, r.message));
    const steps = el("ol", { class: "steps", "aria-label": "steps" });
    r.steps.forEach((s, i) => steps.append(el("li", i === r.currentStep ? { "aria-current": "step" } : {}, `${i + 1}. ${s}`)));
    card.append(steps);
    const w = r.weights || {};
    const bg = r.blueGreen;
    if (bg) {
      const preview = bg.previewService ? ` · preview ${bg.previewService} → ${bg.previewRevision ?? "-"}` : "";
      card.append(el("p", { class: "blue-green" }, `Blue-green: active ${bg.activeService} → ${bg.activeRevision ?? "-"}${preview} · stable ${r.stableRevision ?? "-"}`));
    } else {
      card.append(el("p", {}, `Weights: stable ${w.stable ?? "-"}%, canary ${w.canary ?? "-"}% · stable ${r.stableRevision ?? "-"}${r.canaryRevision ? " · canary " + r.canaryRevision : ""}`));
    }
    if ((r.headerRoutes || []).length) {
      card.append(el("p", { class: "header-routes" }, `Header routes to the canary: ${r.headerRoutes.join(", ")}`));
    }
    if ((r.mirrorRoutes || []).length) {
      card.append(el("p", { class: "mirror-routes" }, `Mirror routes to the canary: ${r.mirrorRoutes.join(", ")}`));
    }
    if (r.analysis && (r.analysis.metrics || []).length) {
      card.append(metricsTable(r.analysis));
    } else if (r.analysis) {
      const a = r.analysis;
      const rate = (v) => (v === undefined || v === null ? "-" : pct(Number(v)));
      card.append(el("p", { class: "analysis", "data-verdict": a.verdict ?? "" },
        `Analysis (${a.evaluatedAt ?? "-"}): ${a.verdict ?? "-"} · canary ${rate(a.canaryErrorRate)} errors over ${a.canaryRequests ?? 0} requests, p99 ${a.canaryP99Ms ?? "-"} ms · stable ${rate(a.stableErrorRate)} over ${a.stableRequests ?? 0}`));
    }
    card.append(chart(r.series || {}, r.stableRevision));
    const conds = el("table", { class: "conditions" });
    conds.append(el("caption", {}, "Conditions"));
    for (const c of r.conditions || []) {
      const tr = el("tr", { "data-type": c.type, "data-status": c.status });
      tr.append(el("th", { scope: "row" }, c.type), el("td", {}, c.status), el("td", {}, c.reason), el("td", {}, c.message || ""));
      conds.append(tr);
    }
    card.append(conds);
    const ev = el("ul", { class: "events", "aria-label": "events" });
    for (const e of r.events || []) ev.append(el("li", { "data-reason": e.reason }, `${e.type} ${e.reason}: ${e.message}`));
    card.append(ev);
    if (actions) {
      for (const a of ["promote", "abort"]) {
        const b = el("button", { type: "button" }, a);
        b.onclick = async () => {
          const res = await fetch(`/api/rollouts/${r.namespace}/${r.name}/${a}`, {
            method: "POST",
            headers: { ...headers, "X-Sluice-Action": a },
          });
          if (!res.ok) alert(`${a}: ${res.status} ${await res.text()}`);
        };
        card.append(b);
      }
    }
    root.append(card);
  }
}

function drawPolicies(rows) {
  const body = document.querySelector("#policies tbody");
  body.replaceChildren();
  for (const r of rows) {
    const tr = el("tr");
    const names = r.policies.map((p) => `${p.name} (${p.action}, ${p.rules} rules)`).join(", ") || "none: all allowed";
    tr.append(el("td", {}, r.workload), el("td", {}, r.sidecar ? "yes" : "no"), el("td", {}, r.mtlsMode), el("td", {}, names),
      el("td", {}, r.sidecar ? String(r.denied) : "-"));
    body.append(tr);
  }
}

let config = { actions: false, namespaces: [] };
async function refresh() {
  const ns = document.getElementById("namespace").value || params.get("namespace") || "default";
  try {
    const [g, ro, pol] = await Promise.all([
      api(`/api/graph?namespace=${ns}`), api(`/api/rollouts?namespace=${ns}`), api(`/api/policies?namespace=${ns}`),
    ]);
    drawGraph(g);
    drawRollouts(ro, config.actions);
    drawPolicies(pol);
    document.getElementById("updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
    document.body.dataset.loaded = "true";
  } catch (e) {
    document.getElementById("updated").textContent = `error: ${e.message}`;
  }
}

async function start() {
  config = await api("/api/config");
  const select = document.getElementById("namespace");
  const want = params.get("namespace") || "default";
  for (const n of config.namespaces) select.append(el("option", n === want ? { selected: "" } : {}, n));
  select.onchange = refresh;
  await refresh();
  setInterval(refresh, 2000);
}
start();
