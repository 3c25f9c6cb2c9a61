// plantfloor board: applies live states (Server-Sent Events) to the page the server painted.
// No figure is computed here: every number comes from the state (GET /api/v1/state).
"use strict";
(function () {
  const body = document.body;
  const tz = body.dataset.tz;
  const lang = body.dataset.lang === "ja" ? "ja-JP" : "en-GB";
  const L = JSON.parse(document.getElementById("labels").textContent);
  let state = JSON.parse(document.getElementById("state").textContent);
  let skew = 0; // the board's time minus the browser's, in ms

  // half to even, as the server's first paint (Python's format) rounds
  const nf = new Intl.NumberFormat("en-US", { maximumFractionDigits: 0, roundingMode: "halfEven" });
  const num = (x) => nf.format(x);
  const pct = (x) => (x === null || x === undefined ? "–" : (x * 100).toFixed(1) + "%");
  // ahead (+) or behind (-) by whole units as shown: what rounds to 0 reads ±0, never -0
  const signed = (x) => {
    const text = num(x);
    return text === "0" || text === "-0" ? "±0" : (x > 0 ? "+" : "") + text;
  };
  const behind = (x) => num(x).startsWith("-") && num(x) !== "-0";
  const fmtTime = (iso, kind) => {
    if (!iso) return "–";
    const d = new Date(iso);
    const opts = { timeZone: tz, hour12: false };
    if (kind === "date") Object.assign(opts, { year: "numeric", month: "2-digit", day: "2-digit" });
    else if (kind === "hour") Object.assign(opts, { hour: "2-digit", minute: "2-digit" });
    else Object.assign(opts, { hour: "2-digit", minute: "2-digit", second: "2-digit" });
    if (kind === "date" && lang !== "ja-JP") {
      // year-month-day as ISO 8601 writes it: 07/12 reads as July in one country, December in another
      const part = Object.fromEntries(new Intl.DateTimeFormat("en", opts).formatToParts(d)
        .map((p) => [p.type, p.value]));
      return `${part.year}-${part.month}-${part.day}`;
    }
    return d.toLocaleString(lang, opts);
  };
  const label = (k) => (k in L ? L[k] : k);
  const get = (obj, path) => path.split(".").reduce((o, k) => (o === null || o === undefined ? o : o[k]), obj);

  function setText(el, value) {
    let text;
    if (el.hasAttribute("data-pct")) text = pct(value);
    else if (el.hasAttribute("data-delta")) {
      text = signed(value);
      el.classList.toggle("ahead", !behind(value));
      el.classList.toggle("behind", behind(value));
    } else if (el.hasAttribute("data-time")) text = fmtTime(value, el.dataset.time);
    else if (el.hasAttribute("data-reason")) text = label(value || "unknown");
    else if (el.hasAttribute("data-duration")) text = Math.floor(value / 60) + " " + L.min;
    else if (typeof value === "number") text = num(value);
    else if (value === null || value === undefined) text = el.dataset.k.endsWith("shift_name") ? L.off_shift : "–";
    else text = String(value);
    if (el.textContent !== text) el.textContent = text;
  }

  function apply(s) {
    state = s;
    const lines = {};
    for (const ln of s.lines) lines[ln.line] = ln;
    for (const el of document.querySelectorAll("[data-k]")) {
      const key = el.dataset.k;
      if (key.startsWith("line:")) {
        const dot = key.indexOf(".");
        const ln = lines[key.slice(5, dot)];
        if (!ln) continue;
        const path = key.slice(dot + 1);
        if (path === "stale") { el.hidden = !ln.stale; continue; }
        setText(el, get(ln, path));
      } else if (key.startsWith("plant.") && s.plant) {
        setText(el, get(s.plant, key.slice(6)));
      }
    }
    for (const card of document.querySelectorAll("article.line")) {
      const ln = lines[card.dataset.line];
      if (!ln) continue;
      card.classList.toggle("red", ln.red);
      card.classList.toggle("stale", ln.stale);
      const st = card.querySelector(".state");
      st.className = "state " + ln.state;
    }
    document.getElementById("offline").hidden = !s.offline;
    document.getElementById("shift-name").textContent = s.shift.name || L.off_shift;
    rows("shift-hours", s.shift.hours.map((h) => [fmtTime(h.start, "hour"), num(h.figure.units),
      num(h.figure.target), pct(h.figure.attainment), h.break_min > 0 ? L.break + " " + Math.floor(h.break_min) + " " + L.min : ""]),
      s.shift.hours.map((h) => (h.break_min > 0 ? "brk" : "")));
    const ul = document.getElementById("pareto");
    ul.replaceChildren(...s.pareto.map((p) => {
      const li = document.createElement("li");
      const a = document.createElement("span"); a.textContent = label(p.reason);
      const b = document.createElement("b"); b.textContent = String(p.minutes);
      li.append(a, b); return li;
    }));
    rows("previous", s.previous_shifts.map((r) => [r.date, r.shift, num(r.units), num(r.target),
      pct(r.attainment), pct(r.oee), pct(r.coverage)]));
    body.dataset.stateId = s.id;
  }

  function rows(id, data, classes) {
    const tbody = document.querySelector("#" + id + " tbody");
    tbody.replaceChildren(...data.map((cells, i) => {
      const tr = document.createElement("tr");
      if (classes && classes[i]) tr.className = classes[i];
      for (const c of cells) { const td = document.createElement("td"); td.textContent = c; tr.append(td); }
      return tr;
    }));
  }

  // first paint: the server's times are ISO; show them in plant time
  for (const el of document.querySelectorAll("[data-time]")) el.textContent = fmtTime(el.textContent.trim(), el.dataset.time);
  apply(state);

  // live updates; EventSource reconnects by itself and sends Last-Event-ID
  const conn = document.getElementById("conn");
  function connect() {
    const es = new EventSource("/api/v1/events");
    es.addEventListener("state", (ev) => { apply(JSON.parse(ev.data)); });
    es.addEventListener("clock", (ev) => { skew = Date.parse(ev.data) - Date.now(); });
    es.onopen = () => { conn.textContent = L.live; conn.classList.remove("bad"); body.dataset.live = "1"; };
    es.onerror = () => {
      conn.textContent = L.reconnecting; conn.classList.add("bad"); body.dataset.live = "0";
      if (es.readyState === EventSource.CLOSED) { es.close(); setTimeout(connect, 3000); }
    };
  }
  connect();

  // the board's clock (the plant's), not the browser's: the page's own clock runs from the
  // board's last "clock" event
  const clock = document.getElementById("clock");
  setInterval(() => { clock.textContent = fmtTime(new Date(Date.now() + skew).toISOString(), "time"); }, 1000);

  // kiosk rotation between the plant page and each line's page
  const rotate = Number(body.dataset.rotate || 0);
  if (body.classList.contains("kiosk") && rotate > 0) {
    let i = -1;
    setInterval(() => {
      const cards = [...document.querySelectorAll("article.line")];
      i = (i + 1) % (cards.length + 1);
      body.classList.toggle("one-line", i < cards.length);
      cards.forEach((c, j) => c.classList.toggle("shown", j === i));
    }, rotate * 1000);
  }

  // history chart (uPlot, vendored) and the CSV link
  const axisLabel = (ts, bucket) => {
    if (ts === null || ts === undefined) return "";
    const iso = new Date(ts * 1000).toISOString();
    const hour = fmtTime(iso, "hour");
    if (bucket !== "hour") return fmtTime(iso, "date");
    return hour === "00:00" ? fmtTime(iso, "date") + "\n" + hour : hour;
  };
  const chartEl = document.getElementById("chart");
  let plot = null;
  async function history(bucket) {
    const days = bucket === "hour" ? 2 : bucket === "day" ? 35 : 35;
    const res = await fetch("/api/v1/history?bucket=" + bucket + "&days=" + days, { credentials: "same-origin" });
    if (!res.ok) return;
    const pts = await res.json();
    const xs = pts.map((p) => Date.parse(p.start) / 1000);
    const step = bucket === "hour" ? 3600 : bucket === "day" ? 86400 : 604800;
    const data = [xs, pts.map((p) => p.figure.units), pts.map((p) => p.figure.target)];
    if (plot) plot.destroy();
    if (typeof uPlot === "undefined") return;
    plot = new uPlot({
      width: Math.max(320, chartEl.clientWidth || 800), height: 260, tzDate: (ts) => uPlot.tzDate(new Date(ts * 1000), tz),
      series: [{ label: L.time, value: (u, ts) => (ts === null || ts === undefined ? "–"
        : fmtTime(new Date(ts * 1000).toISOString(), "date") + " " + fmtTime(new Date(ts * 1000).toISOString(), "hour")) },
        { label: L.units, stroke: "#2e86de", fill: "rgba(46,134,222,0.45)", paths: uPlot.paths.bars({ size: [0.6, 80] }) },
        { label: L.target, stroke: "#e67e22", width: 2, paths: uPlot.paths.stepped({ align: 1 }) }],
      // the bars' own width on both sides, and units from zero
      scales: { x: { time: true, range: (u, mn, mx) => [mn - step / 2, mx + step / 2] },
                y: { range: (u, mn, mx) => [0, Math.max(1, mx) * 1.15] } },
      // the plant's clock on the axis, 24-hour and year first (uPlot's own is US am/pm)
      axes: [{ values: (u, splits) => splits.map((ts) => axisLabel(ts, bucket)) }, {}],
    }, data, chartEl);
    chartEl.dataset.points = String(pts.length);
  }
  for (const b of document.querySelectorAll("[data-bucket]")) b.addEventListener("click", () => history(b.dataset.bucket));
  if (!body.classList.contains("kiosk")) window.addEventListener("load", () => history("hour"));
})();
