// The web page of the retrieve-then-rerank API: plain DOM, no build step.
// Passages and queries are untrusted: every string reaches the page as a text node, never as HTML.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const form = $("ask-form");
  const queryInput = $("query");
  const askButton = $("ask-button");
  const configSelect = $("config");
  const compareBox = $("compare");
  const compareWrap = $("compare-with-wrap");
  const compareSelect = $("compare-with");
  const rerankerBox = $("reranker");
  const topK = $("top-k");
  const topN = $("top-n");
  const weight = $("weight");
  const filterInput = $("filter");
  const weightValue = $("weight-value");
  const errorBox = $("error");
  const statusLine = $("status");
  const results = $("results");
  const serverInfo = $("server-info");
  const collectionSelect = $("collection");
  const kbSummary = $("kb-summary");
  const dropZone = $("drop-zone");
  const fileInput = $("file-input");
  const uploadProgress = $("upload-progress");
  const uploadStatus = $("upload-status");
  const uploadFailures = $("upload-failures");
  const documentsBody = $("documents").querySelector("tbody");

  const RETRIEVED_SHOWN = 10; // retrieved hits shown before "show all"
  const STAGES = ["embed", "search", "retrieve", "rerank", "total"];
  const STOP_WORDS = new Set(
    ("a an and are as at be by can could did do does for from had has have how i if in into is it its of on or " +
      "should than that the their there these this those to was were what when where which who whom why will " +
      "with would you your").split(" "),
  );

  let configs = []; // [{name, reranker, top_k, top_n, weight}]
  let collections = []; // [{name, config, managed, documents, chunks, index_version}]
  let defaultCollection = "";
  let uploading = false;
  let requestSeq = 0;

  // ---- small DOM helpers -------------------------------------------------------------------------

  /** An element with attributes/properties and children (strings become text nodes). */
  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(props || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (key === "class") node.className = value;
      else if (key === "dataset") Object.assign(node.dataset, value);
      else if (key === "text") node.textContent = value;
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children.flat()) {
      if (child === undefined || child === null || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  const fmtScore = (x) => (typeof x === "number" && Number.isFinite(x) ? x.toFixed(3) : "–");
  const fmtMs = (x) => (x >= 100 ? x.toFixed(0) : x >= 10 ? x.toFixed(1) : x.toFixed(2));

  // ---- query-term highlighting -------------------------------------------------------------------

  const HAN = /\p{Script=Han}/u;
  const escapeRegExp = (s) => s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");

  /** The query's words worth marking: no stop words; Chinese runs as character bigrams. */
  function queryTerms(query) {
    const terms = new Set();
    for (const match of query.toLowerCase().matchAll(/[\p{L}\p{N}]+/gu)) {
      const word = match[0];
      if (HAN.test(word)) {
        const chars = [...word];
        if (chars.length === 1) terms.add(word);
        for (let i = 0; i + 1 < chars.length; i++) terms.add(chars[i] + chars[i + 1]);
      } else if (!STOP_WORDS.has(word)) {
        terms.add(word);
      }
    }
    return [...terms].sort((a, b) => b.length - a.length);
  }

  /** One regular expression for all terms: whole words (long ones may take a short suffix: symptom -> symptoms). */
  function termPattern(terms) {
    if (!terms.length) return null;
    const parts = terms.map((term) => {
      const body = escapeRegExp(term);
      if (HAN.test(term)) return body;
      const suffix = [...term].length >= 4 ? "\\p{L}{0,3}" : "";
      return `(?<![\\p{L}\\p{N}])${body}${suffix}(?![\\p{L}\\p{N}])`;
    });
    return new RegExp(parts.join("|"), "giu");
  }

  /** ``text`` as text nodes with the query's terms in <mark> elements. */
  function highlighted(text, pattern) {
    const fragment = document.createDocumentFragment();
    if (!pattern) {
      fragment.append(text);
      return fragment;
    }
    let last = 0;
    for (const match of text.matchAll(pattern)) {
      if (!match[0]) continue;
      if (match.index > last) fragment.append(text.slice(last, match.index));
      fragment.append(el("mark", null, match[0]));
      last = match.index + match[0].length;
    }
    if (last < text.length) fragment.append(text.slice(last));
    return fragment;
  }

  // ---- configs -----------------------------------------------------------------------------------

  const firstDefined = (...values) => values.find((v) => v !== undefined && v !== null);

  /** Accept the shapes a configs endpoint may take: a list, {configs: list}, or {configs: {name: info}}. */
  function normalizeConfigs(data) {
    let list = Array.isArray(data) ? data : data && (data.configs ?? data.items ?? data);
    if (list && !Array.isArray(list) && typeof list === "object") {
      list = Object.entries(list)
        .filter(([, info]) => info && typeof info === "object")
        .map(([name, info]) => ({ name, ...info }));
    }
    if (!Array.isArray(list)) return [];
    return list.map((info) => {
      const defaults = info.defaults || {};
      const rr = firstDefined(info.has_reranker, info.reranker_enabled, info.reranker, info.rerank);
      const rrInfo = rr && typeof rr === "object" ? rr : {};
      return {
        name: String(firstDefined(info.name, info.id, "default")),
        path: info.path || info.file || "",
        reranker: typeof rr === "object" ? rr !== null && rrInfo.enabled !== false : Boolean(rr),
        top_k: firstDefined(info.top_k, defaults.top_k, info.retriever && info.retriever.top_k),
        top_n: firstDefined(info.top_n, defaults.top_n, rrInfo.top_n),
        weight: firstDefined(info.weight, defaults.weight, rrInfo.weight),
      };
    });
  }

  const configByName = (name) => configs.find((c) => c.name === name) || configs[0];

  function fillSelect(select, selected) {
    select.replaceChildren(
      ...configs.map((c) =>
        el("option", { value: c.name, selected: c.name === selected }, c.name + (c.reranker ? "" : " (no reranker)")),
      ),
    );
  }

  /** Put the chosen config's defaults into the controls. */
  function applyDefaults() {
    const config = configByName(configSelect.value);
    if (!config) return;
    topK.value = config.top_k ?? "";
    topN.value = config.top_n ?? "";
    weight.value = config.weight ?? 1;
    rerankerBox.checked = config.reranker;
    syncControls();
  }

  function syncControls() {
    const config = configByName(configSelect.value);
    const hasReranker = Boolean(config && config.reranker);
    rerankerBox.disabled = !hasReranker;
    if (!hasReranker) rerankerBox.checked = false;
    const rerankOn = rerankerBox.checked;
    weight.disabled = !rerankOn;
    topN.disabled = !rerankOn;
    weightValue.textContent = Number(weight.value).toFixed(2);
    compareWrap.hidden = !compareBox.checked;
    compareSelect.disabled = !compareBox.checked;
    compareBox.disabled = configs.length < 2;
  }

  async function loadConfigs() {
    try {
      const data = await fetchJson("v1/configs");
      configs = normalizeConfigs(data);
      if (!configs.length) throw new Error("the server reported no configs");
      const preferred = firstDefined(data && data.default, configs[0].name);
      fillSelect(configSelect, preferred);
      fillSelect(compareSelect, (configs.find((c) => c.name !== preferred) || configs[0]).name);
      serverInfo.textContent =
        `${configs.length} config${configs.length > 1 ? "s" : ""}: ` +
        configs.map((c) => `${c.name}${c.reranker ? "" : " (no reranker)"}`).join(", ") +
        (configs.length > 1 ? " — tick Compare to run two side by side." : "");
      applyDefaults();
      await loadCollections();
      restoreFromUrl();
    } catch (err) {
      serverInfo.textContent = "Could not load the server's configs.";
      showError(err);
    }
  }

  // ---- requests ----------------------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  /** The server's {error: KIND, message: TEXT}, or FastAPI's {detail: str | [{loc, msg}]}, as one line. */
  function errorMessage(body, fallback) {
    if (!body || typeof body !== "object") return fallback;
    const detail = firstDefined(body.message, body.detail, body.error);
    if (detail === undefined) return fallback;
    if (typeof detail === "string") return detail;
    if (Array.isArray(detail)) {
      return detail
        .map((d) => (d && typeof d === "object" ? [(d.loc || []).filter((x) => x !== "body").join("."), d.msg]
          .filter(Boolean).join(": ") : String(d)))
        .join("; ");
    }
    if (typeof detail === "object") return firstDefined(detail.message, detail.detail, JSON.stringify(detail));
    return String(detail);
  }

  /** The API key typed into the page (sessionStorage: this tab only), as request headers. */
  function authHeaders() {
    const key = sessionStorage.getItem("rag-api-key");
    return key ? { Authorization: `Bearer ${key}` } : {};
  }

  async function fetchJson(url, body) {
    const init = body === undefined ? { headers: authHeaders() } : {
      method: "POST",
      headers: { "Content-Type": "application/json", Accept: "application/json", ...authHeaders() },
      body: JSON.stringify(body),
    };
    let response;
    try {
      response = await fetch(url, init);
    } catch (err) {
      throw new ApiError(0, `cannot reach the server (${err.message})`);
    }
    const raw = await response.text();
    let data = null;
    try {
      data = raw ? JSON.parse(raw) : null;
    } catch {
      data = null;
    }
    if (!response.ok) {
      if (response.status === 401 || response.status === 403) $("key-form").hidden = false;
      const fallback = raw && raw.length < 300 ? raw : response.statusText || "request failed";
      throw new ApiError(response.status, errorMessage(data, fallback));
    }
    if (data === null) throw new ApiError(response.status, "the server sent no JSON");
    return data;
  }

  /** The filter box's KEY=VALUE clauses (the server checks them and names what is wrong). */
  function filterClauses() {
    return filterInput.value.trim().split(/\s+/).filter(Boolean);
  }

  /** The request for one config: values equal to that config's defaults are left to the server. */
  function askBody(query, configName) {
    const config = configByName(configName) || {};
    const primary = configByName(configSelect.value) || {};
    const body = { query, config: configName };
    const k = parseInt(topK.value, 10);
    const n = parseInt(topN.value, 10);
    const w = Number(weight.value);
    if (topK.value !== "" && (k !== primary.top_k || configName === primary.name)) body.top_k = k;
    if (config.reranker) {
      body.reranker = rerankerBox.checked;
      if (rerankerBox.checked) {
        if (topN.value !== "" && (n !== primary.top_n || configName === primary.name)) body.top_n = n;
        if (weight.value !== "" && (w !== primary.weight || configName === primary.name)) body.weight = w;
      }
    } else {
      body.reranker = false;
    }
    if (collectionSelect.value && collectionSelect.value !== defaultCollection) body.collection = collectionSelect.value;
    const clauses = filterClauses();
    if (clauses.length) body.filter = clauses;
    if ($("answer") && $("answer").checked) body.answer = true;
    return body;
  }

  async function ask(event) {
    if (event) event.preventDefault();
    const query = queryInput.value;
    const names = [configSelect.value];
    if (compareBox.checked && compareSelect.value) names.push(compareSelect.value);
    const seq = ++requestSeq;
    hideError();
    setBusy(true, names.length > 1 ? `Asking ${names.join(" and ")}…` : "Asking…");
    const bodies = names.map((name) => askBody(query, name));
    const settled = await Promise.allSettled(bodies.map((body) => fetchJson("v1/ask", body)));
    if (seq !== requestSeq) return; // a newer question was asked meanwhile
    setBusy(false, "");
    results.dataset.answered = String(seq); // for tests and tools: this many questions have been answered
    const failures = settled.filter((s) => s.status === "rejected");
    if (failures.length === settled.length) {
      showError(failures[0].reason, names.length > 1 ? names[0] : "");
      results.replaceChildren();
      return;
    }
    failures.forEach((f) => showError(f.reason, names[settled.indexOf(f)]));
    const runs = settled.map((s, i) => (s.status === "fulfilled" ? { ...s.value, request: bodies[i] }
      : { error: s.reason, config: names[i] }));
    render(query, runs);
    saveToUrl(query);
  }

  function setBusy(busy, text) {
    askButton.disabled = busy;
    form.setAttribute("aria-busy", String(busy));
    results.setAttribute("aria-busy", String(busy));
    statusLine.textContent = text;
  }

  function showError(err, where) {
    const status = err && err.status ? ` (HTTP ${err.status})` : "";
    const line = el("p", null, el("strong", null, "Error" + status + (where ? ` in ${where}` : "") + ": "),
      err && err.message ? err.message : String(err));
    if (errorBox.hidden) errorBox.replaceChildren(line);
    else errorBox.append(line);
    errorBox.hidden = false;
  }

  function hideError() {
    errorBox.hidden = true;
    errorBox.replaceChildren();
  }

  // ---- rendering ---------------------------------------------------------------------------------

  /** "more" only where the passage is cut (measured once the lists are laid out). */
  function hideUnneededMore(root) {
    requestAnimationFrame(() => {
      for (const passage of root.querySelectorAll(".passage:not(.open)")) {
        const button = passage.nextElementSibling;
        if (button && passage.clientHeight && passage.scrollHeight <= passage.clientHeight + 1) button.hidden = true;
      }
    });
  }

  function render(query, runs) {
    const okRuns = runs.filter((r) => !r.error);
    const pattern = termPattern(queryTerms(okRuns.length ? okRuns[0].query || query : query));
    if (runs.length === 1) {
      results.replaceChildren(renderRun(runs[0], pattern));
      results.className = "results single";
      hideUnneededMore(results);
      return;
    }
    const finals = runs.map((r) => (r.error ? null : r.reranked || r.retrieved || []));
    results.replaceChildren(
      ...runs.map((run, i) => (run.error ? renderFailedRun(run) : renderCompared(run, pattern, finals[i], finals[1 - i], runs[1 - i]))),
    );
    results.className = "results compare";
    hideUnneededMore(results);
  }

  function runHeader(run, label) {
    return el("header", { class: "run-head" },
      el("h2", null, label || "Results", run.config ? el("span", { class: "config-name" }, run.config) : null),
      el("p", { class: "muted meta" },
        run.index_version ? `index ${run.index_version} · ` : "",
        `${(run.retrieved || []).length} retrieved`,
        run.reranked ? ` · ${run.reranked.length} reranked` : " · reranker off"),
      renderTimings(run.timings_ms || {}));
  }

  /** Per-stage timings: labelled figures and a bar of the stages' shares of the total. */
  function renderTimings(timings) {
    const keys = STAGES.filter((k) => typeof timings[k] === "number")
      .concat(Object.keys(timings).filter((k) => !STAGES.includes(k) && typeof timings[k] === "number"));
    const list = el("dl", { class: "timings", "aria-label": "timings in milliseconds" },
      ...keys.map((k) => el("div", { class: `timing t-${k}` }, el("dt", null, k), el("dd", null, `${fmtMs(timings[k])} ms`))));
    const total = timings.total || 0;
    const parts = ["embed", "search", "rerank"].filter((k) => typeof timings[k] === "number" && total > 0);
    if (!parts.length) return list;
    const bar = el("div", { class: "timing-bar", "aria-hidden": "true" },
      ...parts.map((k) => {
        const span = el("span", { class: `seg t-${k}`, title: `${k} ${fmtMs(timings[k])} ms` });
        span.style.width = `${Math.max(0.5, (100 * timings[k]) / total)}%`;
        return span;
      }));
    return el("div", { class: "timing-wrap" }, list, bar);
  }

  function moveBadge(hit) {
    const change = hit.rank_change ?? (hit.retrieval_rank - hit.rank);
    if (change > 0) {
      return el("span", { class: "move up", title: `up ${change} from #${hit.retrieval_rank}`,
        "aria-label": `moved up ${change}, was #${hit.retrieval_rank}` }, `▲${change}`);
    }
    if (change < 0) {
      return el("span", { class: "move down", title: `down ${-change} from #${hit.retrieval_rank}`,
        "aria-label": `moved down ${-change}, was #${hit.retrieval_rank}` }, `▼${-change}`);
    }
    return el("span", { class: "move same", title: "same place as retrieved", "aria-label": "unchanged" }, "=");
  }

  /** Where in its document a hit is: " p. 12 › Installation › Linux", or " · chunk 3" (plain text). */
  function whereIn(hit) {
    let out = "";
    if (hit.page !== null && hit.page !== undefined) out += ` p. ${hit.page}`;
    for (const heading of hit.headings || []) out += ` › ${heading}`;
    const positions = hit.positions || [];
    if (positions.length > 1) out += ` · chunks ${positions[0]}–${positions[positions.length - 1]}`;
    else if (!out && hit.position) out += ` · chunk ${hit.position}`;
    return out;
  }

  // ---- "why?": the server's explanation of one candidate ------------------------------------------

  /** The run's explanation (asked once per run: the same request with "explain": true). */
  function explainFor(run) {
    if (!run.explainPromise) {
      run.explainPromise = fetchJson("v1/ask", { ...run.request, explain: true, answer: false }).then((data) => data.explain);
      run.explainPromise.catch(() => { run.explainPromise = null; }); // a failure may be retried
    }
    return run.explainPromise;
  }

  const REASONS = {
    top_n: "ranked below top_n",
    per_document_cap: "its document already had the most chunks allowed above it",
    merged: "merged into a neighbouring chunk's passage",
  };

  /** Why one candidate is where it is: first stage, reranker, mix, final place, reason. */
  function renderWhy(c, explain) {
    const fmt = (v) => (v === null || v === undefined ? "–" : Number(v).toFixed(4));
    const rows = [["first stage", `#${c.first_stage.rank} · ${fmt(c.first_stage.score)}`]];
    if (c.first_stage.retrievers) {
      rows.push(["retrievers", Object.entries(c.first_stage.retrievers)
        .map(([name, r]) => `${name} #${r.rank} (${fmt(r.score)})`).join(" · ")]);
    }
    if (c.reranker) {
      rows.push(["reranker", c.reranker.skipped ? "not scored (a language the model does not read)"
        : `raw ${fmt(c.reranker.raw)} → calibrated ${fmt(c.reranker.calibrated)}`]);
      rows.push(["mixed", `${fmt(c.mixed)} (weight ${explain.weight}, mix ${explain.mix}) → #${c.rerank_rank}`]);
    }
    rows.push(["final", c.final_rank ? `#${c.final_rank}` : "not in the final list"]);
    if (c.reason) rows.push(["why", REASONS[c.reason] || c.reason]);
    return el("dl", { class: "why", "aria-label": "why this candidate is here" },
      ...rows.map(([k, v]) => el("div", { class: `why-${k.replace(/ /g, "-")}` }, el("dt", null, k), el("dd", null, v))));
  }

  function whyButton(hit, opts, item) {
    if (!opts.run || !opts.run.request) return null;
    const button = el("button", { type: "button", class: "why-button link", "aria-expanded": "false" }, "why?");
    button.addEventListener("click", async () => {
      const shown = item.querySelector(".why");
      if (shown) {
        shown.remove();
        button.setAttribute("aria-expanded", "false");
        return;
      }
      try {
        const explain = await explainFor(opts.run);
        const candidate = (explain.candidates || []).find((c) => c.chunk_id === hit.chunk_id);
        if (!candidate) throw new Error(`no explanation for ${hit.chunk_id}`);
        item.append(renderWhy(candidate, explain));
        button.setAttribute("aria-expanded", "true");
      } catch (err) {
        showError(err, "why?");
      }
    });
    return button;
  }

  /** One hit: rank, score, move, title and source, and the passage with the query's terms marked. */
  function renderHit(hit, pattern, opts) {
    const kept = opts.keptRank ? opts.keptRank.get(hit.chunk_id) : undefined;
    const head = el("div", { class: "hit-head" },
      el("span", { class: "rank" }, `#${hit.rank}`),
      el("span", { class: "score", title: opts.scoreTitle }, fmtScore(hit.score)),
      opts.reranked ? moveBadge(hit) : null,
      opts.reranked && hit.retrieval_score !== undefined
        ? el("span", { class: "was muted", title: "first-stage rank and score" },
          `was #${hit.retrieval_rank} · ${fmtScore(hit.retrieval_score)}`)
        : null,
      opts.keptRank
        ? (kept ? el("span", { class: "kept", title: "place after reranking" }, `→ #${kept}`)
          : el("span", { class: "dropped muted", title: "not kept by the reranker" }, "not kept"))
        : null,
      opts.other ? opts.other(hit) : null);
    const source = el("div", { class: "source" },
      hit.title ? el("span", { class: "title" }, hit.title) : null,
      el("span", { class: "path" }, hit.source || hit.doc_id || "", whereIn(hit)));
    const passage = el("p", { class: "passage" });
    passage.append(highlighted(String(hit.text ?? ""), pattern));
    const more = el("button", { type: "button", class: "more link", "aria-expanded": "false" }, "more");
    more.addEventListener("click", () => {
      const open = passage.classList.toggle("open");
      more.textContent = open ? "less" : "more";
      more.setAttribute("aria-expanded", String(open));
    });
    const classes = ["hit"];
    if (opts.keptRank && !kept) classes.push("not-kept");
    if (kept || opts.reranked) classes.push("is-kept");
    const item = el("li", { class: classes.join(" "), value: hit.rank, dataset: { chunk: hit.chunk_id, doc: hit.doc_id } },
      head, source, passage, more);
    const why = whyButton(hit, opts, item);
    if (why) head.append(why);
    return item;
  }

  function renderList(hits, pattern, opts) {
    const shown = opts.limit ? hits.slice(0, opts.limit) : hits;
    const list = el("ol", { class: "hits", "aria-label": opts.label },
      ...shown.map((hit) => renderHit(hit, pattern, opts)));
    const wrap = el("div", { class: "list-wrap" }, list);
    if (shown.length < hits.length) {
      const button = el("button", { type: "button", class: "show-all link" }, `show all ${hits.length}`);
      button.addEventListener("click", () => {
        list.append(...hits.slice(shown.length).map((hit) => renderHit(hit, pattern, opts)));
        button.remove();
        hideUnneededMore(list);
      });
      wrap.append(button);
    }
    if (!hits.length) wrap.append(el("p", { class: "muted" }, "No hits."));
    return wrap;
  }

  function column(name, heading, note, body) {
    return el("section", { class: `column ${name}`, "aria-label": heading },
      el("h3", null, heading, note ? el("span", { class: "note muted" }, note) : null), body);
  }

  /** Single mode: the retrieved list beside the reranked one. */
  function renderRun(run, pattern) {
    const retrieved = run.retrieved || [];
    const reranked = run.reranked;
    const keptRank = reranked ? new Map(reranked.map((h) => [h.chunk_id, h.rank])) : null;
    const left = column("retrieved", "Retrieved", `first stage, top ${retrieved.length}`,
      renderList(retrieved, pattern, { label: "retrieved hits", keptRank, limit: RETRIEVED_SHOWN,
        scoreTitle: "first-stage score", run }));
    const right = reranked
      ? column("reranked", "Reranked", `top ${reranked.length}`,
        renderList(reranked, pattern, { label: "reranked hits", reranked: true, scoreTitle: "final score", run }))
      : column("reranked off", "Reranked", "",
        el("p", { class: "muted placeholder" }, "Reranker off: the retrieved list is the answer."));
    const section = el("section", { class: "run" }, runHeader(run, "Results"), renderAnswer(run),
      el("div", { class: "columns" }, left, right));
    linkSameChunks(section);
    return section;
  }

  /** The generator's answer: [n] cited by the model, [n*] attributed by similarity; each one jumps to its passage. */
  function renderAnswer(run) {
    if (run.answer_error) {
      return el("section", { class: "answer failed", "aria-label": "answer" },
        el("h3", null, "Answer"), el("p", { class: "error-text" }, run.answer_error));
    }
    const answer = run.answer;
    if (!answer) return null;
    const text = el("p", { class: "answer-text" });
    const parts = String(answer.annotated || answer.text || "").split(/(\[\d+\*?\])/);
    for (const part of parts) {
      const m = /^\[(\d+)(\*?)\]$/.exec(part);
      const passage = m ? answer.passages[Number(m[1]) - 1] : null;
      if (!passage) { text.append(part); continue; }
      const link = el("a", { href: "#", class: m[2] ? "cite attributed" : "cite",
        title: `${passage.source}${m[2] ? " (attributed by similarity)" : " (cited by the model)"}` }, part);
      link.addEventListener("click", (event) => {
        event.preventDefault();
        const target = results.querySelector(`.reranked li[data-chunk="${CSS.escape(passage.chunk_id)}"]`)
          || results.querySelector(`li[data-chunk="${CSS.escape(passage.chunk_id)}"]`);
        if (!target) return;
        target.scrollIntoView({ behavior: "smooth", block: "center" });
        target.classList.add("flash");
        setTimeout(() => target.classList.remove("flash"), 1500);
      });
      text.append(link);
    }
    const sources = el("ol", { class: "answer-sources" }, ...answer.cited.map((n) => {
      const p = answer.passages[n - 1];
      const how = answer.citations.filter((c) => c.number === n).some((c) => c.origin === "model")
        ? "cited by the model" : "attributed by similarity";
      return el("li", { value: n }, el("span", { class: "path" }, p.source), el("span", { class: "muted" }, ` · ${how}`));
    }));
    const ms = answer.timings_ms || {};
    return el("section", { class: "answer", "aria-label": "answer" },
      el("h3", null, "Answer", el("span", { class: "note muted" },
        `${answer.generator}: ${answer.model} · ${answer.completion_tokens} tokens in ${((ms.generate || 0) / 1000).toFixed(1)} s`)),
      text, answer.cited.length ? sources : el("p", { class: "muted" }, "No sentence cites or resembles a passage."),
      answer.dropped.length ? el("p", { class: "muted" }, `Dropped citations: ${answer.dropped.map((n) => `[${n}]`).join(" ")}`) : null);
  }

  /** Compare mode: one config's answer list, each hit marked with its place in the other config's answer. */
  function renderCompared(run, pattern, mine, theirs, otherRun) {
    const otherName = otherRun && otherRun.config ? otherRun.config : "other";
    const theirRank = theirs ? new Map(theirs.map((h) => [h.chunk_id, h.rank])) : null;
    const other = theirRank
      ? (hit) => {
        const r = theirRank.get(hit.chunk_id);
        return r ? el("span", { class: "other", title: `place in ${otherName}` }, `${otherName} #${r}`)
          : el("span", { class: "other only", title: `not in ${otherName}'s list` }, `only here`);
      }
      : null;
    const reranked = run.reranked;
    const finalList = reranked
      ? renderList(reranked, pattern, { label: `${run.config} reranked hits`, reranked: true, other, scoreTitle: "final score" })
      : renderList(run.retrieved || [], pattern, { label: `${run.config} retrieved hits`, other,
        limit: RETRIEVED_SHOWN, scoreTitle: "first-stage score" });
    const keptRank = reranked ? new Map(reranked.map((h) => [h.chunk_id, h.rank])) : null;
    const firstStage = reranked
      ? el("details", { class: "first-stage" },
        el("summary", null, `First stage: ${(run.retrieved || []).length} retrieved`),
        renderList(run.retrieved || [], pattern, { label: `${run.config} retrieved hits`, keptRank,
          limit: RETRIEVED_SHOWN, scoreTitle: "first-stage score" }))
      : null;
    const section = el("section", { class: "run compared", "aria-label": `config ${run.config}` },
      runHeader(run, "Config"),
      column(reranked ? "reranked" : "retrieved", reranked ? "Reranked" : "Retrieved (reranker off)",
        `top ${(reranked || run.retrieved || []).length}`, finalList),
      firstStage);
    linkSameChunks(section);
    return section;
  }

  function renderFailedRun(run) {
    return el("section", { class: "run compared failed", "aria-label": `config ${run.config}` },
      el("header", { class: "run-head" }, el("h2", null, "Config", el("span", { class: "config-name" }, run.config))),
      el("p", { class: "error-inline" }, run.error && run.error.message ? run.error.message : String(run.error)));
  }

  /** Hovering or focusing a hit outlines the same chunk in the other list. */
  function linkSameChunks(root) {
    const toggle = (event, on) => {
      const hit = event.target.closest && event.target.closest(".hit");
      if (!hit) return;
      for (const other of root.querySelectorAll(".hit")) {
        if (other.dataset.chunk === hit.dataset.chunk) other.classList.toggle("linked", on);
      }
    };
    root.addEventListener("mouseover", (e) => toggle(e, true));
    root.addEventListener("mouseout", (e) => toggle(e, false));
    root.addEventListener("focusin", (e) => toggle(e, true));
    root.addEventListener("focusout", (e) => toggle(e, false));
  }

  // ---- knowledge base: collections, uploads with a progress bar, documents -----------------------

  function collectionByName(name) {
    return collections.find((c) => c.name === name);
  }

  async function loadCollections(select) {
    let data;
    try {
      data = await fetchJson("v1/collections");
    } catch (err) {
      kbSummary.textContent = "unavailable";
      return;
    }
    collections = Array.isArray(data.collections) ? data.collections : [];
    defaultCollection = data.default || (collections[0] && collections[0].name) || "";
    const chosen = select || collectionSelect.value || defaultCollection;
    collectionSelect.replaceChildren(
      ...collections.map((c) => el("option", { value: c.name, selected: c.name === chosen },
        c.name + (c.managed ? "" : " (index of a config)"))),
    );
    await showCollection();
  }

  /** The chosen collection's summary and documents; uploads only where the server manages the collection. */
  let showSeq = 0;

  async function showCollection() {
    const col = collectionByName(collectionSelect.value);
    if (!col) return;
    const seq = ++showSeq;
    kbSummary.textContent = `${col.name}: ${col.documents} document${col.documents === 1 ? "" : "s"}, ` +
      `${col.chunks} chunks` + (col.managed ? "" : " (built by rag-build; create a collection to upload)");
    dropZone.classList.toggle("disabled", !col.managed);
    fileInput.disabled = !col.managed || uploading;
    let docs = [];
    try {
      docs = (await fetchJson(`v1/collections/${encodeURIComponent(col.name)}/documents`)).documents || [];
    } catch (err) {
      if (seq === showSeq) showError(err, col.name);
    }
    if (seq !== showSeq) return; // a newer call shows the collection now chosen
    documentsBody.replaceChildren(...docs.map((d) => {
      const remove = el("button", { type: "button", class: "link", title: `delete ${d.id}` }, "delete");
      remove.dataset.doc = d.id;
      remove.hidden = !col.managed;
      remove.addEventListener("click", () => deleteDocument(col.name, d.id));
      const row = el("tr", null, el("td", null, d.source || d.id), el("td", null, d.format || ""),
        el("td", null, d.pages == null ? "" : String(d.pages)), el("td", null, d.chunks == null ? "" : String(d.chunks)),
        el("td", null, d.state === "indexed" ? (d.indexed_at || "").replace("T", " ").replace("+00:00", " UTC") : d.state),
        el("td", null, remove));
      row.dataset.doc = d.id;
      return row;
    }));
    documentsBody.parentElement.dataset.loaded = String(Date.now()); // for tests: the list was refreshed
  }

  async function createCollection() {
    const input = $("new-collection");
    const name = input.value.trim();
    if (!name) return;
    hideError();
    try {
      await fetchJson("v1/collections", { name, config: configSelect.value });
    } catch (err) {
      showError(err, "new collection");
      return;
    }
    input.value = "";
    $("kb").open = true;
    await loadCollections(name);
  }

  function setUpload(state, text, fraction) {
    uploadStatus.dataset.state = state;
    uploadStatus.textContent = text;
    uploadProgress.hidden = false;
    if (fraction !== undefined) uploadProgress.value = Math.max(0, Math.min(1, fraction));
  }

  /** POST the files as multipart (XHR: its upload reports progress), then follow the job to its end. */
  function uploadFiles(fileList) {
    const files = Array.from(fileList || []);
    const col = collectionByName(collectionSelect.value);
    if (!files.length || uploading) return;
    if (!col || !col.managed) {
      showError(new Error("pick or create a collection to upload into"), "upload");
      return;
    }
    hideError();
    uploading = true;
    uploadFailures.replaceChildren();
    const form = new FormData();
    files.forEach((f) => form.append("files", f, f.name));
    const xhr = new XMLHttpRequest();
    xhr.open("POST", `v1/collections/${encodeURIComponent(col.name)}/documents`);
    xhr.setRequestHeader("Accept", "application/json");
    for (const [name, value] of Object.entries(authHeaders())) xhr.setRequestHeader(name, value);
    xhr.upload.onprogress = (e) => {
      if (e.lengthComputable) setUpload("uploading", `Uploading ${files.length} file(s)…`, 0.2 * e.loaded / e.total);
    };
    xhr.onerror = () => finishUpload("failed", "cannot reach the server");
    xhr.onload = () => {
      let data = null;
      try {
        data = JSON.parse(xhr.responseText);
      } catch {
        data = null;
      }
      if (xhr.status === 401 || xhr.status === 403) $("key-form").hidden = false;
      if (xhr.status >= 400 || !data) {
        finishUpload("failed", errorMessage(data, `upload failed (HTTP ${xhr.status})`));
        return;
      }
      const dups = (data.files || []).filter((f) => f.state === "duplicate");
      dups.forEach((f) => uploadFailures.append(el("li", null, `${f.name}: already here as ${f.duplicate_of}`)));
      if (!data.job) {
        finishUpload("done", "Nothing new: every file is already in the collection.");
        return;
      }
      followJob(col.name, data.job.id);
    };
    setUpload("uploading", `Uploading ${files.length} file(s)…`, 0);
    xhr.send(form);
  }

  async function followJob(name, id) {
    for (;;) {
      let job;
      try {
        job = await fetchJson(`v1/jobs/${encodeURIComponent(id)}`);
      } catch (err) {
        finishUpload("failed", err.message);
        return;
      }
      const p = job.progress || {};
      const files = p.files_total || 1;
      const read = (p.files_read + p.files_failed + p.duplicates) / files;
      const encoded = p.chunks_total ? p.chunks_encoded / p.chunks_total : 0;
      const fraction = job.state === "done" ? 1 : 0.2 + 0.3 * read + 0.45 * encoded;
      setUpload(job.state === "done" || job.state === "failed" ? "finishing" : "indexing",
        `${job.stage}: ${p.files_read}/${p.files_total} files read, ` +
        `${p.chunks_encoded}/${p.chunks_total} chunks encoded`, fraction);
      if (job.state === "done" || job.state === "failed") {
        (job.failures || []).forEach((f) => uploadFailures.append(el("li", null, `${f.file}: ${f.reason}`)));
        const text = job.state === "done"
          ? `Done: ${p.files_read} file(s) indexed` + (job.failures.length ? `, ${job.failures.length} failed` : "") +
            (job.version ? ` (version ${job.version})` : "")
          : `Failed: ${job.error || "see the files below"}`;
        await loadCollections(name);
        finishUpload(job.state, text);
        return;
      }
      await new Promise((resolve) => setTimeout(resolve, 250));
    }
  }

  function finishUpload(state, text) {
    uploading = false;
    fileInput.value = "";
    setUpload(state, text, state === "done" ? 1 : uploadProgress.value);
    if (state === "failed") showError(new Error(text), "upload");
    showCollection();
  }

  async function deleteDocument(name, id) {
    hideError();
    let data;
    try {
      const response = await fetch(`v1/collections/${encodeURIComponent(name)}/documents/${encodeURIComponent(id)}`,
        { method: "DELETE", headers: { Accept: "application/json", ...authHeaders() } });
      data = await response.json();
      if (!response.ok) throw new ApiError(response.status, errorMessage(data, "delete failed"));
    } catch (err) {
      showError(err, `delete ${id}`);
      return;
    }
    uploading = true;
    setUpload("indexing", `Removing ${id}…`, 0.5);
    await followJob(name, data.job.id);
  }

  // ---- URL state (a question can be linked and reloaded) ----------------------------------------

  function saveToUrl(query) {
    const params = new URLSearchParams();
    params.set("q", query);
    params.set("config", configSelect.value);
    if (collectionSelect.value && collectionSelect.value !== defaultCollection) {
      params.set("collection", collectionSelect.value);
    }
    if (compareBox.checked) params.set("compare", compareSelect.value);
    const config = configByName(configSelect.value) || {};
    if (topK.value && Number(topK.value) !== config.top_k) params.set("top_k", topK.value);
    if (topN.value && Number(topN.value) !== config.top_n) params.set("top_n", topN.value);
    if (Number(weight.value) !== (config.weight ?? 1)) params.set("weight", weight.value);
    if (config.reranker && !rerankerBox.checked) params.set("reranker", "off");
    if (filterClauses().length) params.set("filter", filterClauses().join(" "));
    history.replaceState(null, "", `${location.pathname}?${params}`);
  }

  function restoreFromUrl() {
    const params = new URLSearchParams(location.search);
    const pick = (select, name) => {
      if (name && configs.some((c) => c.name === name)) select.value = name;
    };
    pick(configSelect, params.get("config"));
    if (collections.some((c) => c.name === params.get("collection"))) {
      collectionSelect.value = params.get("collection");
      showCollection();
    }
    applyDefaults();
    if (params.has("compare") && configs.length > 1) {
      compareBox.checked = true;
      pick(compareSelect, params.get("compare"));
    }
    if (params.has("top_k")) topK.value = params.get("top_k");
    if (params.has("top_n")) topN.value = params.get("top_n");
    if (params.has("weight")) weight.value = params.get("weight");
    if (params.get("reranker") === "off") rerankerBox.checked = false;
    if (params.has("filter")) filterInput.value = params.get("filter");
    syncControls();
    if (params.get("q")) {
      queryInput.value = params.get("q");
      ask();
    }
  }

  // ---- wiring ------------------------------------------------------------------------------------

  form.addEventListener("submit", ask);
  $("key-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const key = $("api-key").value.trim();
    if (key) sessionStorage.setItem("rag-api-key", key);
    else sessionStorage.removeItem("rag-api-key");
    $("api-key").value = "";
    $("api-key").placeholder = key ? "a key is in use" : "";
    hideError();
    loadConfigs();
  });
  if (sessionStorage.getItem("rag-api-key")) {
    $("api-key").placeholder = "a key is in use";
    $("key-form").hidden = false;
  }
  configSelect.addEventListener("change", applyDefaults);
  for (const control of [rerankerBox, weight, compareBox]) {
    control.addEventListener("input", syncControls);
    control.addEventListener("change", syncControls);
  }
  $("reset").addEventListener("click", applyDefaults);
  collectionSelect.addEventListener("change", () => showCollection());
  $("create-collection").addEventListener("click", createCollection);
  $("new-collection").addEventListener("keydown", (e) => {
    if (e.key === "Enter") {
      e.preventDefault();
      createCollection();
    }
  });
  fileInput.addEventListener("change", () => uploadFiles(fileInput.files));
  dropZone.addEventListener("keydown", (e) => {
    if (e.key === "Enter" || e.key === " ") fileInput.click();
  });
  for (const type of ["dragenter", "dragover"]) {
    dropZone.addEventListener(type, (e) => {
      e.preventDefault();
      dropZone.classList.add("over");
    });
  }
  dropZone.addEventListener("dragleave", () => dropZone.classList.remove("over"));
  dropZone.addEventListener("drop", (e) => {
    e.preventDefault();
    dropZone.classList.remove("over");
    uploadFiles(e.dataTransfer && e.dataTransfer.files);
  });
  syncControls();
  queryInput.focus();
  loadConfigs();
})();
