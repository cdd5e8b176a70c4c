// harstream web: the fleet page and a wearer's page. Plain script, no build step, no other site.
// Every name and value from the server is shown with textContent or set as a property, never
// parsed as HTML: a device named <script> is shown as text.
"use strict";
(function () {
  const STALE_S = 30; // a device not heard for this long stands out
  const RATE_TOLERANCE = 0.02; // the scheduler's: a device further off is resampled
  let activities = {}; // name -> {colour, letter}, the terminal dashboard's
  let skew = 0; // the server's clock minus ours, in seconds

  const $ = (id) => document.getElementById(id);
  const now = () => Date.now() / 1000 + skew;
  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }
  const colour = (name) => (activities[name] || {}).colour || "#6c6c6c";
  const letter = (name) => (activities[name] || {}).letter || "?";
  function hms(s) {
    s = Math.round(s);
    const m = Math.floor(s / 60) % 60, sec = s % 60;
    return Math.floor(s / 3600) + ":" + String(m).padStart(2, "0") + ":" + String(sec).padStart(2, "0");
  }
  function ago(t) {
    if (t === null || t === undefined) return "never";
    const d = Math.max(0, now() - t);
    if (d < 90) return Math.round(d) + " s ago";
    if (d < 5400) return Math.round(d / 60) + " min ago";
    if (d < 172800) return Math.round(d / 3600) + " h ago";
    return Math.round(d / 86400) + " days ago";
  }
  const clock = (t, seconds) => new Date(t * 1000).toLocaleTimeString([], seconds ?
    { hour: "2-digit", minute: "2-digit", second: "2-digit" } : { hour: "2-digit", minute: "2-digit" });
  const total = (seconds) => Object.values(seconds || {}).reduce((a, b) => a + b, 0);
  const percent = (p) => (p === null || p === undefined) ? "" : Math.round(p * 100) + "%";

  function banners(status) {
    const box = $("banners");
    box.replaceChildren();
    for (const name of ["store", "broker"]) {
      const s = status[name];
      if (s && !s.ok) box.append(el("div", "banner", name + ": " + s.status));
    }
  }
  function badge(node, label) {
    node.textContent = label ? letter(label) + " " + label : "—";
    node.style.background = label ? colour(label) : "";
  }
  function bar(seconds) {
    const box = el("div", "bar"), whole = total(seconds);
    const parts = Object.entries(seconds || {}).sort((a, b) => b[1] - a[1]);
    for (const [name, s] of parts) {
      const part = el("span");
      part.style.width = (100 * s / whole) + "%";
      part.style.background = colour(name);
      part.title = name + " " + hms(s);
      box.append(part);
    }
    return box;
  }
  function problems(row) {
    const out = [];
    if (row.t !== null && row.t !== undefined && now() - row.t > STALE_S) out.push("silent");
    const h = row.health;
    if (h) {
      if (h.rate_hz && h.model_hz && Math.abs(h.rate_hz / h.model_hz - 1) > RATE_TOLERANCE) {
        out.push("rate " + h.rate_hz.toFixed(1) + " Hz");
      }
      const dropped = total(h.dropped);
      if (dropped) out.push("dropped " + dropped);
      if (h.gaps) out.push("gaps " + h.gaps);
      if (h.clock_jumps) out.push("clock jumps " + h.clock_jumps);
    }
    return out;
  }
  function legend() {
    const box = $("legend");
    if (!box) return;
    box.replaceChildren();
    for (const name of Object.keys(activities)) {
      const key = el("span", "badge small");
      badge(key, name);
      box.append(key);
    }
  }
  function learn(answer) {
    if (answer.now) skew = answer.now - Date.now() / 1000;
    if (answer.activities) {
      activities = answer.activities;
      legend();
    }
  }
  async function getJSON(url) {
    const response = await fetch(url, { credentials: "same-origin", cache: "no-store" });
    if (!response.ok) throw new Error(url + ": " + response.status);
    return response.json();
  }
  function stream(url, handlers) {
    const source = new EventSource(url);
    for (const [name, handle] of Object.entries(handlers)) {
      source.addEventListener(name, (message) => handle(JSON.parse(message.data)));
    }
    return source;
  }

  // -- the fleet ------------------------------------------------------------------------------------
  function fleetPage() {
    const rows = new Map(); // id -> {row, tr, cells}
    const tbody = document.querySelector("#fleet tbody");
    let sortKey = "id", sortDir = 1, resort = false;
    const keyOf = {
      id: (r) => r.id, label: (r) => r.label || "", confidence: (r) => r.confidence || 0,
      t: (r) => r.t || 0, today: (r) => total(r.seconds), health: (r) => problems(r).length,
    };

    function make(row) {
      const tr = el("tr"), cells = {};
      for (const name of ["id", "label", "confidence", "t", "today", "health"]) {
        cells[name] = el("td", "c-" + name);
        tr.append(cells[name]);
      }
      const link = el("a", "device", row.id);
      link.href = "/device/" + encodeURIComponent(row.id);
      link.title = row.id;
      cells.id.append(link);
      cells.badge = el("span", "badge");
      cells.label.append(cells.badge);
      const entry = { row, tr, cells };
      rows.set(row.id, entry);
      return entry;
    }
    function fill(entry) {
      const { row, cells } = entry;
      badge(cells.badge, row.label);
      cells.confidence.textContent = percent(row.confidence);
      cells.t.textContent = ago(row.t);
      cells.today.replaceChildren(bar(row.seconds), el("span", "sub", hms(total(row.seconds))));
      health(entry);
    }
    function health(entry) {
      const found = problems(entry.row);
      entry.cells.health.textContent = found.length ? found.join(" · ") : "ok";
      entry.tr.classList.toggle("warn", found.length > 0);
    }
    function visible(row) {
      const text = $("filter").value.trim().toLowerCase(), activity = $("activity-filter").value;
      return (!text || row.id.toLowerCase().includes(text)) && (!activity || row.label === activity);
    }
    function order() {
      const key = keyOf[sortKey];
      const sorted = [...rows.values()].sort((a, b) => {
        const x = key(a.row), y = key(b.row);
        return (x < y ? -1 : x > y ? 1 : a.row.id < b.row.id ? -1 : 1) * sortDir;
      });
      const fragment = document.createDocumentFragment();
      for (const entry of sorted) {
        entry.tr.hidden = !visible(entry.row);
        fragment.append(entry.tr);
      }
      tbody.append(fragment);
      $("empty").hidden = rows.size > 0;
      $("summary").textContent = rows.size + " devices";
      resort = false;
    }
    function options() {
      const select = $("activity-filter"), chosen = select.value;
      const first = select.firstElementChild;
      select.replaceChildren(first);
      for (const name of Object.keys(activities)) {
        const option = el("option", null, letter(name) + " " + name);
        option.value = name;
        select.append(option);
      }
      select.value = chosen;
    }
    function update(list) {
      for (const row of list) {
        const entry = rows.get(row.id) || make(row);
        entry.row = row;
        fill(entry);
      }
      resort = true;
    }
    async function load() {
      const answer = await getJSON("/api/fleet");
      learn(answer);
      options();
      banners(answer);
      rows.clear();
      tbody.replaceChildren();
      update(answer.devices);
      order();
      document.body.dataset.rendered = String(performance.now());
    }

    for (const th of document.querySelectorAll("th[data-sort]")) {
      th.addEventListener("click", () => {
        sortDir = sortKey === th.dataset.sort ? -sortDir : 1;
        sortKey = th.dataset.sort;
        order();
      });
    }
    $("filter").addEventListener("input", order);
    $("activity-filter").addEventListener("change", order);
    setInterval(() => { // the clock moves: "last heard" and "silent" with it
      for (const entry of rows.values()) {
        entry.cells.t.textContent = ago(entry.row.t);
        health(entry);
      }
      if (resort) order();
    }, 1000);
    load().catch((error) => banners({ store: { ok: false, status: String(error) } }));
    stream("/api/stream", {
      devices: (batch) => {
        const known = Object.keys(activities).length;
        learn(batch);
        if (Object.keys(activities).length !== known) options();
        update(batch.devices);
        if (rows.size < 200) order(); // a big fleet re-sorts once a second (above)
      },
      status: banners,
      reload: () => load(),
    });
  }

  // -- one wearer -----------------------------------------------------------------------------------
  function devicePage() {
    const id = decodeURIComponent(location.pathname.slice("/device/".length));
    const query = "?id=" + encodeURIComponent(id);
    $("device-id").textContent = id;
    document.title = "harstream · " + id;
    let state = null, fetching = false;

    function live(part) {
      const row = part.live;
      badge($("activity"), row.label);
      $("confidence").textContent = percent(row.confidence);
      $("heard").textContent = "last heard " + ago(row.t);
      probs(part.probs || {});
      healthList(row);
      events(part.events || []);
    }
    function probs(values) {
      const box = $("probs");
      box.replaceChildren();
      const entries = Object.entries(values).sort((a, b) => b[1] - a[1]);
      if (!entries.length) box.append(el("p", "sub", "none live (start the recognizer with --publish and give --broker)"));
      for (const [name, p] of entries) {
        const line = el("div", "prob"), fill = el("span", "fill");
        fill.style.width = (100 * p) + "%";
        fill.style.background = colour(name);
        line.append(el("span", "name", letter(name) + " " + name), el("span", "track"), el("span", "value", percent(p)));
        line.children[1].append(fill);
        box.append(line);
      }
    }
    function healthList(row) {
      const box = $("health"), h = row.health;
      box.replaceChildren();
      const add = (term, value) => box.append(el("dt", null, term), el("dd", null, value));
      const found = problems(row);
      add("state", found.length ? found.join(" · ") : "ok");
      if (!h) {
        add("details", "none published (a recognizer with --publish sends them)");
        return;
      }
      add("rate", h.rate_hz ? h.rate_hz.toFixed(1) + " Hz (model " + h.model_hz + " Hz)" : "not measured yet");
      add("samples", h.samples);
      add("windows", h.windows);
      add("gaps", h.gaps);
      add("clock jumps", h.clock_jumps);
      const dropped = Object.entries(h.dropped || {});
      add("dropped", dropped.length ? dropped.map(([why, n]) => why + ": " + n).join(", ") : "none");
    }
    function events(list) {
      const box = $("events");
      box.replaceChildren();
      const shown = list.length ? list.slice().reverse() : fromEpisodes();
      if (!shown.length) box.append(el("li", "sub", "none yet"));
      for (const e of shown) {
        const item = el("li");
        const key = el("span", "badge small");
        badge(key, e.activity);
        const duration = e.duration_s ? " after " + hms(e.duration_s) : "";
        item.append(el("span", "sub", e.t ? clock(e.t, true) : ""), el("span", null, " " + (e.event || "") + " "),
          key, el("span", "sub", duration));
        box.append(item);
      }
    }
    function fromEpisodes() { // no broker: the store's last episodes, as their end events
      const entry = state && state.today.devices[id];
      return entry ? entry.episodes.slice(-10).reverse().map((e) => (
        { event: "end", activity: e.activity, t: e.end, duration_s: e.seconds })) : [];
    }
    function timeline(entry, truth) {
      const box = $("timeline");
      box.replaceChildren();
      const episodes = entry ? entry.episodes : [];
      const runs = merged(truth);
      const times = episodes.flatMap((e) => [e.start, e.end]).concat(runs.flatMap((r) => [r.start, r.end]));
      if (!times.length) {
        box.append(el("p", "sub", "nothing stored today"));
        return;
      }
      const from = Math.min(...times), to = Math.max(...times), span = Math.max(1, to - from);
      const lane = (name, parts) => {
        const row = el("div", "lane"), track = el("div", "track");
        row.append(el("span", "name", name), track);
        for (const part of parts) {
          const block = el("span", "block", letter(part.activity));
          block.style.left = (100 * (part.start - from) / span) + "%";
          block.style.width = Math.max(0.1, 100 * (part.end - part.start) / span) + "%";
          block.style.background = colour(part.activity);
          block.title = part.activity + " " + clock(part.start, true) + "–" + clock(part.end, true);
          track.append(block);
        }
        box.append(row);
      };
      lane("model", episodes);
      if (runs.length) lane("truth", runs);
      const axis = el("div", "axis");
      for (let k = 0; k <= 4; k++) {
        const tick = el("span", "tick", clock(from + span * k / 4, span < 600));
        tick.style.left = (25 * k) + "%";
        axis.append(tick);
      }
      box.append(axis);
    }
    function merged(truth) { // [t, seconds, label] windows -> runs of one label
      const runs = [];
      for (const [t, seconds, label] of truth) {
        const last = runs[runs.length - 1];
        if (last && last.activity === label && t - last.end < 2 * seconds + 1) last.end = t + seconds;
        else runs.push({ activity: label, start: t, end: t + seconds });
      }
      return runs;
    }
    function totals(entry) {
      const box = $("totals");
      box.replaceChildren();
      const seconds = entry ? entry.seconds : {};
      for (const [name, s] of Object.entries(seconds).sort((a, b) => b[1] - a[1])) {
        const item = el("span", "total");
        item.dataset.activity = name;
        item.dataset.seconds = String(s);
        const key = el("span", "badge small");
        badge(key, name);
        item.append(key, el("span", null, " " + hms(s)));
        box.append(item);
      }
      if (!box.children.length) box.append(el("span", "sub", "no predictions stored today"));
    }
    function days(list) {
      const box = $("days");
      box.replaceChildren();
      for (const day of list) {
        const line = el("div", "day");
        line.append(el("span", "date", day.date), bar(day.seconds), el("span", "sub", hms(total(day.seconds))));
        box.append(line);
      }
    }
    async function load() {
      fetching = true;
      try {
        state = await getJSON("/api/device" + query);
        learn(state);
        banners(state);
        const entry = state.today.devices[id];
        live(state);
        timeline(entry, state.truth);
        totals(entry);
        days(state.days);
        document.body.dataset.rendered = String(performance.now());
      } finally {
        fetching = false;
      }
    }
    let lastEvents = 0;
    load().catch((error) => banners({ store: { ok: false, status: String(error) } }));
    stream("/api/stream" + "?device=" + encodeURIComponent(id), {
      device: (part) => {
        learn(part);
        if (state) {
          state.live = part.live;
          live(part);
        }
        if ((part.events || []).length !== lastEvents && !fetching) { // an episode ended: the store has it
          lastEvents = part.events.length;
          setTimeout(() => load().catch(() => {}), 1500);
        }
      },
      status: banners,
      reload: () => load(),
    });
    setInterval(() => { if (state) $("heard").textContent = "last heard " + ago(state.live.t); }, 1000);
  }

  if (document.body.dataset.page === "fleet") fleetPage();
  else if (document.body.dataset.page === "device") devicePage();
})();
