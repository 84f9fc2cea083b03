// voxline dashboard: polls the server's JSON API and draws live calls, recent calls,
// one call's latency waterfall and the stage percentiles. Plain JavaScript, no library.
// Everything a caller or the bot said is untrusted: it only ever reaches the page as
// textContent, never as HTML.
"use strict";

(() => {
  const API = "/dashboard/api";
  const LIVE_EVERY_MS = 1000;
  const SLOW_EVERY_MS = 10000;
  const STAGES = [
    ["commit", "end of turn (commit)"],
    ["stt", "speech to text"],
    ["llm_first_token", "LLM first token"],
    ["first_chunk", "first chunk to TTS"],
    ["tts_first_audio", "TTS first audio"],
    ["transport", "sent to the caller (heard)"],
  ];
  const STAGE_NAMES = Object.fromEntries([...STAGES, ["voice_to_voice", "voice to voice"]]);

  const state = {
    liveVersion: 0,
    liveCalls: [],
    selected: null,
    query: "",
    detailVersion: -1,
  };
  window.voxlineDashboard = state; // for tests and the curious

  const $ = (selector) => document.querySelector(selector);

  /** An element with a class and text; text goes in as textContent, never as HTML. */
  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function setStatus(text, bad) {
    const status = $("#status");
    status.textContent = text;
    status.classList.toggle("bad", Boolean(bad));
  }

  async function get(path) {
    const response = await fetch(API + path, {
      credentials: "same-origin",
      headers: { Accept: "application/json" },
      cache: "no-store",
    });
    if (response.status === 401) {
      window.location.reload(); // the session ended: the server shows the sign-in form
      throw new Error("signed out");
    }
    const body = await response.json();
    if (!response.ok) throw new Error(body.error || `HTTP ${response.status}`);
    return body;
  }

  function time(iso) {
    return iso ? new Date(iso).toLocaleString() : "";
  }

  function duration(start, end) {
    const ms = (end ? new Date(end) : new Date()) - new Date(start);
    const secs = Math.max(0, Math.round(ms / 1000));
    return `${Math.floor(secs / 60)}:${String(secs % 60).padStart(2, "0")}`;
  }

  function ms(value) {
    return value === null || value === undefined ? "–" : `${Math.round(value)}`;
  }

  // -- live calls ------------------------------------------------------------------------

  function transcript(lines) {
    const list = el("ol", "transcript");
    for (const line of lines) {
      const item = el("li", `line ${line.who}${line.interrupted ? " interrupted" : ""}`);
      item.append(el("span", "who", line.who));
      item.append(el("span", "text", line.text));
      list.append(item);
    }
    return list;
  }

  function renderLive() {
    const box = $("#live");
    box.replaceChildren();
    $("#live-count").textContent = String(state.liveCalls.length);
    if (!state.liveCalls.length) {
      box.append(el("p", "empty", "No call in progress."));
      return;
    }
    for (const call of state.liveCalls) {
      const card = el("article", "call");
      card.dataset.callId = call.id;
      const head = el("header");
      head.append(el("strong", "persona", call.persona));
      head.append(el("span", "line-kind", call.transport));
      if (call.caller) head.append(el("span", "caller-id", call.caller));
      head.append(el("span", "since", `${duration(call.started_at)} min`));
      const open = el("button", "open", "waterfall");
      open.type = "button";
      open.addEventListener("click", () => select(call.id));
      head.append(open);
      card.append(head, transcript(call.lines));
      box.append(card);
    }
  }

  async function pollLive() {
    try {
      const body = await get(`/live?since=${state.liveVersion}`);
      setStatus("live", false);
      if (!body.unchanged) {
        const before = new Set(state.liveCalls.map((call) => call.id));
        state.liveCalls = body.calls;
        state.liveVersion = body.version;
        renderLive();
        const now = new Set(body.calls.map((call) => call.id));
        if ([...before].some((id) => !now.has(id))) loadStages(); // a call ended
        if (before.size !== now.size || [...now].some((id) => !before.has(id))) loadRecent();
        if (state.selected) loadDetail(state.selected);
      }
    } catch (error) {
      setStatus(`not connected: ${error.message}`, true);
    }
    setTimeout(pollLive, LIVE_EVERY_MS);
  }

  // -- stage percentiles ------------------------------------------------------------------

  async function loadStages() {
    try {
      const body = await get("/stages");
      const rows = $("#stages tbody");
      rows.replaceChildren();
      for (const stat of body.stages) {
        const row = el("tr");
        row.dataset.stage = stat.stage;
        row.append(el("td", "", STAGE_NAMES[stat.stage] || stat.stage));
        row.append(el("td", "num", stat.count));
        row.append(el("td", "num", ms(stat.p50_ms)));
        row.append(el("td", "num", ms(stat.p95_ms)));
        rows.append(row);
      }
    } catch (error) {
      setStatus(`stages: ${error.message}`, true);
    }
  }

  // -- recent calls -----------------------------------------------------------------------

  function searchQuery() {
    const form = $("#search");
    const params = new URLSearchParams();
    const persona = form.persona.value.trim();
    if (persona) params.set("persona", persona);
    for (const name of ["since", "until"]) {
      // datetime-local is the browser's local time: send it as an absolute time.
      if (form[name].value) params.set(name, new Date(form[name].value).toISOString());
    }
    return params.toString();
  }

  async function loadRecent() {
    const error = $("#search-error");
    try {
      const body = await get(`/calls${state.query ? "?" + state.query : ""}`);
      error.textContent = "";
      $("#recent-source").textContent =
        body.source === "records" ? "(call records)" : "(this process, no call records)";
      const rows = $("#recent tbody");
      rows.replaceChildren();
      for (const call of body.calls) {
        const row = el("tr", call.live ? "live" : "");
        row.dataset.callId = call.id;
        row.tabIndex = 0;
        row.append(el("td", "", time(call.started_at)));
        row.append(el("td", "", call.persona));
        row.append(el("td", "", call.transport));
        row.append(el("td", "", call.caller));
        row.append(el("td", "num", duration(call.started_at, call.ended_at || undefined)));
        row.append(el("td", "num", call.turns));
        row.append(el("td", "", call.live ? "in progress" : call.end_reason || ""));
        row.addEventListener("click", () => select(call.id));
        row.addEventListener("keydown", (event) => {
          if (event.key === "Enter") select(call.id);
        });
        rows.append(row);
      }
    } catch (caught) {
      error.textContent = caught.message;
    }
  }

  // -- one call: facts, transcript per turn, waterfall, tools ----------------------------------

  function select(id) {
    state.selected = id;
    loadDetail(id);
  }

  function axis(turns) {
    let low = 0;
    let high = 1;
    for (const turn of turns) {
      const spans = [...turn.bars, ...turn.tools.filter((call) => call.start_ms !== null)];
      for (const span of spans) {
        low = Math.min(low, span.start_ms);
        high = Math.max(high, span.end_ms);
      }
    }
    const span = high - low;
    const step = [50, 100, 200, 250, 500, 1000, 2000, 5000, 10000].find((s) => span / s <= 8);
    return { low, high, span, step: step || Math.ceil(span / 8) };
  }

  function ruler(scale) {
    const row = el("div", "wf-row wf-axis");
    row.append(el("span", "wf-label", "ms after the caller's last word"));
    const track = el("div", "wf-track");
    const first = Math.ceil(scale.low / scale.step) * scale.step;
    for (let tick = first; tick <= scale.high; tick += scale.step) {
      const mark = el("span", "wf-tick", tick);
      mark.style.left = `${((tick - scale.low) / scale.span) * 100}%`;
      track.append(mark);
    }
    row.append(track, el("span", "wf-value"));
    return row;
  }

  function waterfall(turn, scale) {
    const box = el("div", "waterfall");
    box.dataset.turn = turn.turn;
    box.append(ruler(scale));
    const byStage = Object.fromEntries(turn.bars.map((bar) => [bar.stage, bar]));
    for (const [stage, label] of STAGES) {
      const row = el("div", "wf-row");
      row.append(el("span", "wf-label", label));
      const track = el("div", "wf-track");
      const bar = byStage[stage];
      if (bar) {
        const block = el("span", `bar stage-${stage}`);
        block.dataset.stage = stage;
        block.style.left = `${((bar.start_ms - scale.low) / scale.span) * 100}%`;
        block.style.width = `${Math.max(0.3, ((bar.end_ms - bar.start_ms) / scale.span) * 100)}%`;
        block.title = `${label}: ${ms(bar.start_ms)} → ${ms(bar.end_ms)} ms`;
        track.append(block);
      }
      row.append(track, el("span", "wf-value", bar ? `${ms(bar.end_ms - bar.start_ms)} ms` : "–"));
      box.append(row);
    }
    for (const call of turn.tools) {
      if (call.start_ms === null || call.end_ms === null) continue;
      const row = el("div", "wf-row tool-row");
      row.append(el("span", "wf-label", `tool ${call.name}`));
      const track = el("div", "wf-track");
      const block = el("span", "bar stage-tool");
      block.dataset.stage = "tool";
      block.style.left = `${((call.start_ms - scale.low) / scale.span) * 100}%`;
      block.style.width = `${Math.max(0.3, ((call.end_ms - call.start_ms) / scale.span) * 100)}%`;
      track.append(block);
      row.append(track, el("span", "wf-value", `${ms(call.duration_ms)} ms`));
      box.append(row);
    }
    const total = el("div", "wf-total");
    total.textContent = `voice to voice ${ms(turn.latency_ms.voice_to_voice)} ms`;
    box.append(total);
    return box;
  }

  function json(value) {
    if (value === null || value === undefined) return "";
    return typeof value === "string" ? value : JSON.stringify(value);
  }

  function tools(turn) {
    const table = el("table", "tools");
    const head = el("tr");
    for (const name of ["tool", "arguments", "result", "ms"]) head.append(el("th", "", name));
    table.append(el("thead"), el("tbody"));
    table.tHead.append(head);
    for (const call of turn.tools) {
      const row = el("tr");
      row.dataset.tool = call.name;
      row.append(el("td", "", call.name));
      row.append(el("td", "code", json(call.arguments)));
      row.append(el("td", "code", json(call.result)));
      row.append(el("td", "num", ms(call.duration_ms)));
      table.tBodies[0].append(row);
    }
    return table;
  }

  function renderDetail(call) {
    $("#detail-section").hidden = false;
    $("#detail-section").dataset.callId = call.id;
    $("#detail-title").textContent = `${call.persona} · ${call.call_sid || call.id}`;
    const facts = $("#detail-facts");
    facts.replaceChildren();
    const fact = (name, value) => {
      if (value === null || value === undefined || value === "") return;
      facts.append(el("dt", "", name), el("dd", "", value));
    };
    fact("line", call.transport);
    fact("caller", call.caller);
    fact("started", time(call.started_at));
    fact("duration", duration(call.started_at, call.ended_at || undefined));
    fact("ended", call.live ? "in progress" : call.end_reason);
    fact("trace id", call.trace_id);
    fact("call id", call.id);

    const turns = $("#detail-turns");
    turns.replaceChildren();
    const scale = axis(call.turns);
    for (const turn of call.turns) {
      const block = el("article", "turn");
      block.dataset.turn = turn.turn;
      const title = [`turn ${turn.turn}`];
      if (turn.interrupted) title.push("interrupted");
      if (turn.unfinished) title.push("unfinished");
      block.append(el("h3", "", title.join(" · ")));
      const said = [
        { who: "caller", text: turn.caller },
        { who: "bot", text: turn.bot },
      ];
      if (turn.bot_heard && turn.bot_heard !== turn.bot) {
        said.push({ who: "heard", text: turn.bot_heard });
      }
      block.append(transcript(said));
      if (turn.error) block.append(el("p", "error", turn.error));
      block.append(waterfall(turn, scale));
      if (turn.tools.length) block.append(tools(turn));
      turns.append(block);
    }
    if (!call.turns.length) {
      turns.append(el("p", "empty", "No finished turn yet."));
      if (call.lines && call.lines.length) turns.append(transcript(call.lines));
    }
    $("#legend").textContent =
      "Bars share one time axis, in ms from the caller's last word. Stages that start " +
      "before the end-of-turn bar ends were prepared speculatively, before the turn was " +
      "committed; a tool call runs inside the LLM's first-token time.";
  }

  async function loadDetail(id) {
    try {
      const call = await get(`/calls/${encodeURIComponent(id)}`);
      if (state.selected === id) renderDetail(call);
    } catch (error) {
      $("#detail-section").hidden = false;
      $("#detail-title").textContent = `${id}: ${error.message}`;
    }
  }

  // -- start ------------------------------------------------------------------------------

  document.addEventListener("DOMContentLoaded", () => {
    $("#search").addEventListener("submit", (event) => {
      event.preventDefault();
      state.query = searchQuery();
      loadRecent();
    });
    pollLive();
    loadStages();
    loadRecent();
    setInterval(loadStages, SLOW_EVERY_MS);
    setInterval(loadRecent, SLOW_EVERY_MS);
  });
})();
