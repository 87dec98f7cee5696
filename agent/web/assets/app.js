// synthehr web page: a chat over the agent, streamed as NDJSON from POST /api/chat.
// No framework and nothing loaded from outside this server.
"use strict";

const $ = (sel, root = document) => root.querySelector(sel);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

function safeUrl(url) {
  try {
    const u = new URL(url, location.href);
    return (u.protocol === "http:" || u.protocol === "https:") ? u.href : null;
  } catch (e) { return null; }
}

// ---- a small, safe Markdown subset for answers (text is escaped; only http(s) links) ------------
function inline(text) {
  const frag = document.createDocumentFragment();
  const re = /(`[^`]+`)|(\*\*[^*]+\*\*)|\[([^\]]+)\]\((https?:\/\/[^)\s]+|\/files\/[^)\s]+)\)|(https?:\/\/[^\s<>"')\]]+)/g;
  let last = 0, m;
  while ((m = re.exec(text)) !== null) {
    if (m.index > last) frag.append(text.slice(last, m.index));
    if (m[1]) frag.append(el("code", { text: m[1].slice(1, -1) }));
    else if (m[2]) frag.append(el("strong", { text: m[2].slice(2, -2) }));
    else if (m[3]) {
      const href = safeUrl(m[4]);
      const local = m[4].startsWith("/files/");
      frag.append(href ? el("a", local ? { href: m[4], class: "file-link", download: /\.(csv|parquet)$/i.test(m[4]) } :
        { href, target: "_blank", rel: "noopener noreferrer" }, m[3]) : m[3]);
    } else if (m[5]) {
      let url = m[5], tail = "";
      while (/[.,;:]$/.test(url)) { tail = url.slice(-1) + tail; url = url.slice(0, -1); }
      const href = safeUrl(url);
      frag.append(href ? el("a", { href, target: "_blank", rel: "noopener noreferrer", text: url }) : url);
      if (tail) frag.append(tail);
    }
    last = re.lastIndex;
  }
  if (last < text.length) frag.append(text.slice(last));
  return frag;
}

function markdown(text) {
  const root = el("div");
  const lines = String(text || "").replace(/\r/g, "").split("\n");
  let para = [], list = null;
  const flushPara = () => {
    if (!para.length) return;
    const p = el("p");
    para.forEach((line, i) => { if (i) p.append(el("br")); p.append(inline(line)); });
    root.append(p); para = [];
  };
  for (const raw of lines) {
    const line = raw.trimEnd();
    const bullet = line.match(/^\s*[-*•]\s+(.*)$/), num = line.match(/^\s*\d+[.)]\s+(.*)$/);
    if (bullet || num) {
      flushPara();
      const tag = bullet ? "ul" : "ol";
      if (!list || list.tagName.toLowerCase() !== tag) { list = el(tag); root.append(list); }
      list.append(el("li", {}, inline((bullet || num)[1])));
      continue;
    }
    list = null;
    if (!line.trim()) { flushPara(); continue; }
    para.push(line);
  }
  flushPara();
  return root;
}

// ---- state ---------------------------------------------------------------------------------------
// busy: a turn is running; turn: its id (for Stop); queue: messages sent while it runs (sent in order after it).
const state = { session: null, busy: false, turn: null, queue: [], controller: null };

async function api(path, opts = {}) {
  const resp = await fetch(path, { credentials: "same-origin", ...opts });
  if (!resp.ok) throw new Error(`${path}: HTTP ${resp.status}`);
  return resp.json();
}

async function newSession() {
  const { name } = await api("/api/sessions", { method: "POST", headers: { "Content-Type": "application/json" }, body: "{}" });
  setSession(name);
  clearMessages();
}

function setSession(name) {
  state.session = name;
  localStorage.setItem("synthehr.session", name);
  document.body.dataset.session = name;
  refreshSessions();
}

function clearMessages() {
  const box = $("#messages");
  box.replaceChildren();
  box.append(welcome);
  $("#conv-title").textContent = "New conversation";
}

// ---- the phone-width menu (the sidebar as a drawer) ------------------------------------------------
function setMenu(open) {
  document.body.classList.toggle("menu-open", open);
  $("#menu-toggle").setAttribute("aria-expanded", open ? "true" : "false");
}

// ---- sidebar ---------------------------------------------------------------------------------------
function fmtEps(v) { return (v === null || v === undefined) ? "–" : Number(v).toPrecision(3).replace(/\.?0+$/, ""); }
function fmtDelta(v) { return (v === null || v === undefined) ? "–" : Number(v).toExponential(1); }
function fmtDate(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  return isNaN(d) ? iso : d.toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short" });
}

// What sets a data set apart: its filters and target shares ("all patients" when it has none).
function selection(ds) {
  const parts = [...(ds.filters || []), ...(ds.shares || []).map((s) => `share ${s}`)];
  return parts.length ? parts.join(" · ") : "no filters: all patients with the condition";
}

async function refreshDatasets() {
  let data;
  try { data = await api("/api/datasets"); } catch (e) { return; }
  const list = $("#datasets");
  list.replaceChildren();
  if (!data.datasets.length) { list.append(el("li", { class: "muted", text: "None yet" })); return; }
  for (const ds of data.datasets) {
    const links = el("div", { class: "ds-links" });
    if (ds.links.csv) links.append(el("a", { href: ds.links.csv, download: "", text: "CSV" }));
    if (ds.links.parquet) links.append(el("a", { href: ds.links.parquet, download: "", text: "Parquet" }));
    if (ds.links.card_html) links.append(el("a", { href: ds.links.card_html, target: "_blank", text: "Data card" }));
    list.append(el("li", { class: "dataset-item", "data-dataset": ds.id, title: ds.id },
      el("div", { class: "ds-title", text: `${ds.condition || "Cohort"} · ${ds.n_rows} patients` }),
      el("div", { class: "ds-filters", text: selection(ds) }),
      el("div", { class: "ds-meta", text: `ε ${fmtEps(ds.epsilon)} · ${ds.source_title || ds.source}` }),
      el("div", { class: "ds-meta", text: `${fmtDate(ds.created_at)} · ${ds.id}` }),
      links));
  }
}

async function refreshSessions() {
  let data;
  try { data = await api("/api/sessions"); } catch (e) { return; }
  const list = $("#sessions");
  list.replaceChildren();
  const items = data.sessions.filter((s) => s.turns > 0);
  if (!items.length) { list.append(el("li", { class: "muted", text: "None yet" })); return; }
  for (const s of items) {
    list.append(el("li", { class: s.name === state.session ? "current" : "" },
      el("button", { class: "session", type: "button", title: s.name, onclick: () => { setMenu(false); openSession(s.name); } },
        el("div", { class: "ds-title", text: s.title }),
        el("div", { class: "ds-meta", text: `${s.turns} turn${s.turns === 1 ? "" : "s"} · ${fmtDate(s.updated_at)}` }))));
  }
}

async function openSession(name) {
  if (state.busy) return;
  setSession(name);
  clearMessages();
  let data;
  try { data = await api(`/api/sessions/${encodeURIComponent(name)}`); } catch (e) { return; }
  if (data.turns.length) welcome.remove();
  for (const t of data.turns) {
    addUser(t.user);
    const view = new TurnView();
    for (const s of t.steps) view.staticStep(s);
    view.finish({ type: "answer", ...t, text: t.text ?? t.answer });
  }
  if (data.turns.length) $("#conv-title").textContent = data.turns[0].user;
}

// ---- knowledge base status (built in the background when the server starts) --------------------------
async function pollStatus() {
  let st;
  try { st = await api("/api/status"); } catch (e) { return; }
  const k = st.knowledge || {};
  const box = $("#kb-status");
  box.dataset.state = k.state || "idle";
  const pct = k.total ? ` ${Math.round(100 * Math.min(k.done, k.total) / k.total)} %` : "";
  box.textContent = k.state === "building" ? `${k.text}${pct}` : (k.text || "");
  if (k.state === "building") setTimeout(pollStatus, 2000);
}

// ---- one assistant turn ------------------------------------------------------------------------
// What each tool does, in the clinician's words (the tool's name stays visible for the technically minded).
const TOOL_WORDS = {
  generate_cohort: "Generating the synthetic cohort",
  train_generator: "Training a private generator",
  cohort_stats: "Computing statistics",
  explain_provenance: "Looking up the sources",
  privacy_budget: "Checking the privacy budget",
  export_dataset: "Exporting the data set",
};
function toolWords(tool) { return TOOL_WORDS[tool] || (tool ? tool.replace(/_/g, " ") : "Working"); }

function argsSummary(args) {
  if (!args || typeof args !== "object") return "";
  return Object.entries(args).filter(([, v]) => v !== null && v !== "" && !(Array.isArray(v) && !v.length))
    .map(([k, v]) => `${k}=${typeof v === "object" ? JSON.stringify(v) : v}`).join(", ");
}

class TurnView {
  constructor() {
    this.statusText = el("span", { text: "Sending…" });
    this.status = el("div", { class: "status" }, el("span", { class: "spinner", "aria-hidden": "true" }), this.statusText);
    this.steps = el("div", { class: "steps" });
    this.progressBox = el("div", { class: "progress-list" });
    this.live = null; // the answer as it streams (where the backend streams)
    this.body = el("div", { class: "body" }, this.steps, this.progressBox, this.status);
    this.node = el("div", { class: "msg assistant" }, el("div", { class: "avatar", "aria-hidden": "true", text: "S" }), this.body);
    this.pendingThought = null;
    this.open = [];
    this.progress = {};
    $("#messages").append(this.node);
    scrollDown();
  }

  stepBlock(tool, args, cls, thought) {
    const stateTag = el("span", { class: "state", text: cls === "running" ? "running…" : cls === "failed" ? "error" : "done" });
    const body = el("div", { class: "step-body" });
    const why = thought || this.pendingThought;
    this.pendingThought = null;
    if (why) body.append(el("h4", { text: "Why" }), el("div", { class: "thought", text: why }));
    body.append(el("h4", { text: "Arguments" }), el("pre", { class: "args", text: JSON.stringify(args || {}, null, 2) }));
    const block = el("details", { class: `step ${cls}`, "data-tool": tool || "" },
      el("summary", {}, el("span", { class: "what", text: toolWords(tool) }), el("span", { class: "tool", text: tool || "" }),
        stateTag, el("span", { class: "short", text: argsSummary(args) })),
      body);
    block._state = stateTag;
    block._body = body;
    this.steps.append(block);
    scrollDown();
    return block;
  }

  setResult(block, text, failed, stopped = false) {
    block._body.append(el("h4", { text: stopped ? "Stopped" : failed ? "Error" : "Result" }), el("pre", { class: "observation", text: text || "" }));
    block.classList.remove("running");
    block.classList.add(stopped ? "stopped" : failed ? "failed" : "done");
    block._state.textContent = stopped ? "stopped" : failed ? "error" : "done";
  }

  staticStep(s) {
    if (!s.tool) return;
    const block = this.stepBlock(s.tool, s.args, "done", s.thought);
    this.setResult(block, s.observation, !!s.failed);
  }

  onEvent(ev) {
    if (ev.type === "start") { state.turn = ev.turn; this.statusText.textContent = "Reading your request…"; return; }
    if (ev.type === "status") { this.statusText.textContent = ev.text; return; }
    if (ev.type === "progress") { this.onProgress(ev); return; }
    if (ev.type === "delta" || ev.type === "answer_replace") { this.onAnswerPiece(ev); return; }
    if (ev.type === "step") {
      if (ev.kind === "thought") {
        if (ev.text) { this.pendingThought = ev.text; this.statusText.textContent = ev.text; }
        return;
      }
      if (ev.kind === "action") {
        this.open.push(this.stepBlock(ev.tool, ev.args, "running"));
        this.statusText.textContent = `${toolWords(ev.tool)}…`;
        return;
      }
      if (ev.kind === "observation" || ev.kind === "error") {
        if (!ev.tool && ev.kind === "error") return; // the model's own format retries: not the clinician's concern
        let idx = -1;
        for (let i = this.open.length - 1; i >= 0; i--) if (!ev.tool || this.open[i].dataset.tool === ev.tool) { idx = i; break; }
        const block = idx >= 0 ? this.open.splice(idx, 1)[0] : this.stepBlock(ev.tool, ev.args, "running");
        this.setResult(block, ev.text, ev.kind === "error");
        for (const p of Object.values(this.progress)) this.endProgress(p); // a finished step ends its progress bars
        this.statusText.textContent = this.open.length ? `${toolWords(this.open[this.open.length - 1].dataset.tool)}…` : "Writing the answer…";
      }
    }
  }

  // The answer as it is written. A capable model's unchecked wording is shown as provisional (dimmed, "checking…");
  // answer_replace puts the checked answer in its place (an empty text withdraws a draft that was not final).
  onAnswerPiece(ev) {
    if (!this.live) {
      this.live = el("div", { class: "answer streaming", "aria-live": "polite" });
      this.body.insertBefore(this.live, this.status);
    }
    if (ev.type === "answer_replace") {
      this.live._text = ev.text || "";
      this.live.classList.remove("provisional");
      if (ev.text && !ev.kept) this.replaced = true;
    } else {
      this.live._text = (this.live._text || "") + ev.text;
      this.live.classList.toggle("provisional", !!ev.provisional);
    }
    this.live.replaceChildren(markdown(this.live._text));
    this.statusText.textContent = this.live.classList.contains("provisional") ? "Checking the answer against the results…" : "Writing the answer…";
    scrollDown();
  }

  onProgress(ev) {
    const key = ev.task || "work";
    let p = this.progress[key];
    if (!p) {
      const bar = el("progress", { max: "1", value: "0" });
      const label = el("span", { class: "label", text: ev.label || key });
      const info = el("span", { class: "muted detail" });
      p = this.progress[key] = { box: el("div", { class: "progress", "data-task": key }, label, bar, info), bar, info };
      this.progressBox.append(p.box);
      scrollDown();
    }
    if (ev.total) { p.bar.max = ev.total; p.bar.value = Math.min(ev.done, ev.total); } else { p.bar.removeAttribute("value"); }
    p.info.textContent = [ev.detail, ev.eta].filter(Boolean).join(" · ");
    if (ev.state === "finish") this.endProgress(p);
    if (ev.state === "stopped") this.endProgress(p, true);
  }

  endProgress(p, stopped = false) {
    if (p.box.classList.contains("finished")) return;
    p.box.classList.add("finished");
    if (stopped) { p.box.classList.add("stopped"); p.info.textContent = "stopped"; return; }
    p.info.textContent = "done";
    if (p.bar.max) p.bar.value = p.bar.max;
  }

  finish(ev) {
    this.status.remove();
    if (this.live) { this.live.remove(); this.live = null; }
    const stopped = ev.type === "cancelled";
    for (const b of this.open) this.setResult(b, stopped ? "Stopped before it finished." : "(no result)", true, stopped);
    this.open = [];
    for (const p of Object.values(this.progress)) this.endProgress(p, stopped);
    if (ev.type === "error") {
      this.body.append(el("div", { class: "answer error", role: "alert" }, markdown(ev.text)));
    } else if (ev.type === "cancelled") {
      this.body.append(el("div", { class: "answer cancelled", role: "status" }, markdown(ev.text)));
    } else {
      this.body.append(el("div", { class: "answer" }, markdown(ev.text ?? ev.answer ?? "")));
      if (this.replaced) {
        this.body.append(el("div", { class: "muted answer-note", text: "The model's own wording did not match the tool results, so this answer was written from the results instead." }));
      }
      for (const ds of ev.datasets || []) this.body.append(datasetCard(ds));
      const plots = [...(ev.plots || [])];
      if (plots.length) {
        this.body.append(el("div", { class: "plots" }, plots.map((p) =>
          el("figure", { class: "plot" }, el("a", { href: p.url, target: "_blank" }, el("img", { src: p.url, alt: p.alt || p.name })),
            el("figcaption", { text: p.alt || p.name })))));
      }
      if ((ev.downloads || []).length) {
        this.body.append(el("div", { class: "downloads files" }, ev.downloads.map((f) =>
          el("a", { class: "btn small", href: f.url, download: "", text: `Download ${f.name}` }))));
      }
      if ((ev.citations || []).length) {
        this.body.append(el("section", { class: "citations" }, el("h4", { text: "Sources" }),
          el("ol", {}, ev.citations.map((c) => {
            const href = c.url ? safeUrl(c.url) : null;
            return el("li", {}, href ? el("a", { href, target: "_blank", rel: "noopener noreferrer", text: c.title || c.url }) : (c.title || c.url));
          }))));
      }
    }
    scrollDown();
  }
}

function datasetCard(ds) {
  const fact = (k, v, cls = "") => el("div", { class: `fact ${cls}` }, el("div", { class: "k", text: k }), el("div", { class: "v" }, v));
  const source = ds.source_url && safeUrl(ds.source_url)
    ? el("a", { href: safeUrl(ds.source_url), target: "_blank", rel: "noopener noreferrer", text: ds.source_title || ds.source })
    : (ds.source_title || ds.source);
  const eps = `${fmtEps(ds.epsilon)}` + (ds.target_epsilon ? ` (target ${fmtEps(ds.target_epsilon)})` : "");
  const downloads = el("div", { class: "downloads" });
  if (ds.links.csv) downloads.append(el("a", { class: "btn small primary download-csv", href: ds.links.csv, download: "", text: "Download CSV" }));
  if (ds.links.parquet) downloads.append(el("a", { class: "btn small download-parquet", href: ds.links.parquet, download: "", text: "Download Parquet" }));
  if (ds.links.card_html) downloads.append(el("a", { class: "btn small card-link", href: ds.links.card_html, target: "_blank", text: "Data card" }));
  if (ds.links.card_json) downloads.append(el("a", { class: "btn small", href: ds.links.card_json, target: "_blank", text: "card.json" }));
  const card = el("section", { class: "dataset-card", "data-dataset": ds.id },
    el("h3", { text: `${ds.condition || "Synthetic cohort"} — ${ds.n_rows} synthetic patients` }),
    el("div", { class: "sub", text: ds.id }),
    el("div", { class: "facts" },
      fact("Source", source, "wide"),
      fact("Selection", selection(ds), "wide"),
      fact("Privacy ε", eps),
      fact("δ", fmtDelta(ds.delta)),
      fact("Accountant", ds.accountant || "–"),
      fact("Columns", String(ds.n_columns || (ds.columns || []).length || "–"))),
    downloads);
  if ((ds.columns || []).length) {
    card.append(el("details", {}, el("summary", { text: `Columns (${ds.columns.length})` }),
      el("ul", { class: "cols" }, ds.columns.map((c) => el("li", { text: c })))));
  }
  if ((ds.missing_observations || []).length) {
    card.append(el("details", {}, el("summary", { text: `Requested but not in the source (${ds.missing_observations.length})` }),
      el("ul", { class: "cols" }, ds.missing_observations.map((c) => el("li", { text: typeof c === "string" ? c : (c.label || c.name || JSON.stringify(c)) + (c.reason ? ` — ${c.reason}` : "") })))));
  }
  return card;
}

function addUser(text, queued = false) {
  const node = el("div", { class: `msg user${queued ? " queued" : ""}` }, el("div", { class: "bubble", text }));
  if (queued) node.append(el("div", { class: "queued-note", text: "Queued: sent when the current answer is finished" }));
  $("#messages").append(node);
  scrollDown();
  return node;
}

function scrollDown() { const box = $("#messages"); box.scrollTop = box.scrollHeight; }

function setBusy(busy) {
  state.busy = busy;
  if (busy) document.body.dataset.busy = "1"; else delete document.body.dataset.busy;
  $("#stop").hidden = !busy;
  $("#send").textContent = busy ? "Queue" : "Send";
  $("#send").title = busy ? "Sent when the current answer is finished" : "";
}

// ---- sending -----------------------------------------------------------------------------------
// The composer stays usable during a turn: what is typed is never cleared by the page, and a message sent
// while a turn runs is queued (shown as such) and sent when the turn ends.
function submit() {
  const input = $("#input");
  const text = input.value.trim();
  if (!text) return;
  input.value = "";
  localStorage.removeItem("synthehr.draft");
  if (state.busy) {
    state.queue.push({ text, node: addUser(text, true) });
    welcome.remove();
    return;
  }
  send(text);
}

async function stop() {
  if (!state.busy || !state.turn) return;
  $("#stop").disabled = true;
  $("#stop").textContent = "Stopping…";
  try {
    await api(`/api/turns/${encodeURIComponent(state.turn)}/cancel`, { method: "POST", headers: { "Content-Type": "application/json" }, body: "{}" });
  } catch (e) { /* the turn had just finished */ }
}

async function send(text, queuedNode = null) {
  text = text.trim();
  if (!text || state.busy) return;
  setBusy(true);
  state.turn = null;
  welcome.remove();
  if ($("#conv-title").textContent === "New conversation") $("#conv-title").textContent = text;
  if (queuedNode) { queuedNode.classList.remove("queued"); queuedNode.querySelector(".queued-note")?.remove(); $("#messages").append(queuedNode); }
  else addUser(text);
  const view = new TurnView();
  let finished = false;
  try {
    const resp = await fetch("/api/chat", {
      method: "POST", credentials: "same-origin",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ session: state.session, text }),
    });
    if (!resp.ok || !resp.body) {
      let msg = `The server answered HTTP ${resp.status}.`;
      try { msg = (await resp.json()).error || msg; } catch (e) { /* not JSON */ }
      view.finish({ type: "error", text: msg }); finished = true;
    } else {
      const reader = resp.body.getReader();
      const decoder = new TextDecoder();
      let buf = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += decoder.decode(value, { stream: true });
        let nl;
        while ((nl = buf.indexOf("\n")) >= 0) {
          const line = buf.slice(0, nl).trim();
          buf = buf.slice(nl + 1);
          if (!line) continue;
          const ev = JSON.parse(line);
          if (ev.type === "answer" || ev.type === "error" || ev.type === "cancelled") { view.finish(ev); finished = true; }
          else view.onEvent(ev);
        }
      }
    }
  } catch (e) {
    if (!finished) { view.finish({ type: "error", text: `Lost the connection to the server (${e.message}).` }); finished = true; }
  } finally {
    if (!finished) view.finish({ type: "error", text: "The turn ended without an answer." });
    setBusy(false);
    state.turn = null;
    $("#stop").disabled = false;
    $("#stop").textContent = "Stop";
    refreshDatasets();
    refreshSessions();
    const next = state.queue.shift();
    if (next) setTimeout(() => send(next.text, next.node), 0);
    else $("#input").focus();
  }
}

let welcome;

async function init() {
  welcome = $("#welcome");
  $("#composer").addEventListener("submit", (e) => { e.preventDefault(); submit(); });
  $("#input").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) { e.preventDefault(); submit(); }
  });
  $("#stop").addEventListener("click", stop);
  // The draft survives a reload or a closed tab; leaving during a turn asks first (leaving stops the turn).
  const draft = localStorage.getItem("synthehr.draft");
  if (draft) $("#input").value = draft;
  $("#input").addEventListener("input", () => localStorage.setItem("synthehr.draft", $("#input").value));
  window.addEventListener("beforeunload", (e) => { if (state.busy || state.queue.length) { e.preventDefault(); e.returnValue = ""; } });
  $("#menu-toggle").addEventListener("click", () => setMenu(!document.body.classList.contains("menu-open")));
  $("#menu-backdrop").addEventListener("click", () => setMenu(false));
  document.addEventListener("keydown", (e) => { if (e.key === "Escape") setMenu(false); });
  for (const b of document.querySelectorAll(".example")) b.addEventListener("click", () => { $("#input").value = b.textContent; $("#input").focus(); });
  $("#new-chat").addEventListener("click", () => { if (!state.busy) { setMenu(false); newSession(); } });
  try {
    const info = await api("/api/info");
    $("#info").textContent = `synthehr ${info.version} · model: ${info.llm.backend}`;
    $("#info").title = `workspace: ${info.workspace}`;
  } catch (e) { /* offline page */ }
  pollStatus();
  const saved = localStorage.getItem("synthehr.session");
  if (saved) await openSession(saved); else await newSession();
  refreshDatasets();
  document.body.dataset.ready = "1";
}

document.addEventListener("DOMContentLoaded", init);
