// labelloop pages: copy buttons, and the review task's keys and zoom. Everything works without it too
// (clicking a label sends the answer); this only adds the keyboard and the zoom.
"use strict";

document.addEventListener("DOMContentLoaded", () => {
  setUpCopyButtons();
  setUpTask();
});

function setUpCopyButtons() {
  for (const field of document.querySelectorAll("[data-select-on-focus]")) {
    field.addEventListener("focus", () => field.select());
  }
  for (const button of document.querySelectorAll("[data-copy]")) {
    button.addEventListener("click", async () => {
      const field = document.getElementById(button.dataset.copy);
      field.select();
      let copied = false;
      try {
        await navigator.clipboard.writeText(field.value);
        copied = true;
      } catch (_) {
        copied = document.execCommand && document.execCommand("copy");
      }
      button.textContent = copied ? "Copied" : "Press Ctrl+C";
      setTimeout(() => { button.textContent = "Copy"; }, 2000);
    });
  }
}

function setUpTask() {
  const form = document.getElementById("answer-form");
  if (!form) return;
  const choices = [...form.querySelectorAll("button.choice")];
  let selected = null;
  let sent = false;

  const select = (button) => {
    for (const other of choices) {
      other.classList.toggle("selected", other === button);
      other.setAttribute("aria-pressed", other === button ? "true" : "false");
    }
    selected = button;
    button.focus();
  };
  // One answer per page: a second key press or click while the first answer is on its way is ignored.
  form.addEventListener("submit", (event) => {
    if (sent) event.preventDefault();
    sent = true;
  });
  window.addEventListener("pageshow", () => { sent = false; });
  const send = (button) => form.requestSubmit(button);

  const zoom = setUpZoom();
  document.addEventListener("keydown", (event) => {
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    const target = event.target;
    if (target instanceof HTMLInputElement || target instanceof HTMLTextAreaElement ||
        target instanceof HTMLSelectElement) return;
    if (/^[0-9]$/.test(event.key)) {
      const button = form.querySelector(`button.choice[data-key="${event.key}"]`);
      if (button) {
        event.preventDefault();
        select(button);
      }
    } else if (event.key === "Enter") {
      const focused = choices.includes(document.activeElement) ? document.activeElement : null;
      const answer = selected || focused;
      if (answer) {
        event.preventDefault();
        send(answer);
      }
    } else if (event.key === "+" || event.key === "=") {
      event.preventDefault();
      zoom.step(1);
    } else if (event.key === "-") {
      event.preventDefault();
      zoom.step(-1);
    }
  });
}

function setUpZoom() {
  const stage = document.getElementById("stage");
  const image = document.getElementById("task-image");
  const level = document.getElementById("zoom-level");
  const levels = [1, 1.5, 2, 3, 4, 6, 8];
  let index = 0;

  const apply = () => {
    const factor = levels[index];
    if (factor === 1 || !image.naturalWidth) {
      image.classList.add("fit");
      image.classList.remove("zoomed");
      image.style.width = "";
      image.style.height = "";
      level.textContent = "";
      return;
    }
    // Zoom relative to the size the image has when it fits the stage.
    const fit = Math.min(stage.clientWidth / image.naturalWidth, stage.clientHeight / image.naturalHeight);
    image.classList.remove("fit");
    image.classList.add("zoomed");
    image.style.width = `${Math.round(image.naturalWidth * fit * factor)}px`;
    image.style.height = `${Math.round(image.naturalHeight * fit * factor)}px`;
    level.textContent = `${Math.round(factor * 100)}%`;
  };
  const step = (delta) => {
    index = Math.max(0, Math.min(levels.length - 1, index + delta));
    apply();
  };
  for (const button of document.querySelectorAll("[data-zoom]")) {
    button.addEventListener("click", () => {
      const how = button.dataset.zoom;
      if (how === "fit") { index = 0; apply(); } else step(how === "in" ? 1 : -1);
    });
  }
  image.addEventListener("click", () => { index = index === 0 ? 2 : 0; apply(); });
  window.addEventListener("resize", apply);
  return { step };
}

// ── operator console: confirmations, the storage uploader, the graph inspector ──────────────────────
document.addEventListener("DOMContentLoaded", () => {
  setUpConfirm();
  setUpUploader();
  setUpInspector();
});

function setUpConfirm() {
  for (const form of document.querySelectorAll("form[data-confirm]")) {
    form.addEventListener("submit", (event) => {
      if (!window.confirm(form.dataset.confirm)) event.preventDefault();
    });
  }
}

// Upload files and whole folders into the folder shown, from the pickers or by drag and drop. A folder keeps
// its name (under images_labeled_by_folder/ that name is the label). Each file is PUT to the page's upload
// endpoint with the session cookie and the CSRF token in a header; four at a time, with progress.
function setUpUploader() {
  const box = document.getElementById("uploader");
  if (!box) return;
  const prefix = box.dataset.prefix;
  const labeledRoot = box.dataset.labeledRoot === "true";
  const maxBytes = Number(box.dataset.maxBytes);
  const csrf = box.dataset.csrf;
  const zone = document.getElementById("drop-zone");
  const status = document.getElementById("upload-status");
  const summary = document.getElementById("upload-summary");
  const bar = document.getElementById("upload-progress");
  const list = document.getElementById("upload-list");
  let busy = false;

  const encodeKey = (key) => key.split("/").map(encodeURIComponent).join("/");
  const hidden = (path) => path.split("/").some((part) => part.startsWith("."));

  const readAll = (reader) => new Promise((resolve, reject) => {
    const all = [];
    const next = () => reader.readEntries((batch) => {
      if (!batch.length) { resolve(all); return; }
      all.push(...batch);
      next();
    }, reject);
    next();
  });
  const walk = async (entry, path) => {
    if (entry.isFile) {
      const file = await new Promise((resolve, reject) => entry.file(resolve, reject));
      return [{ file, path: path + entry.name }];
    }
    if (entry.isDirectory) {
      const found = [];
      for (const child of await readAll(entry.createReader())) {
        found.push(...await walk(child, `${path}${entry.name}/`));
      }
      return found;
    }
    return [];
  };

  const row = (path) => {
    const item = document.createElement("li");
    const name = document.createElement("span");
    name.className = "path";
    name.textContent = path;
    const state = document.createElement("span");
    state.className = "state";
    state.textContent = "waiting";
    item.append(name, state);
    list.append(item);
    return { item, state };
  };

  // Resolves with {info} for a stored (or unchanged) object, or {problem} saying why it was not stored.
  const upload = (entry, onProgress) => new Promise((resolve) => {
    const request = new XMLHttpRequest();
    request.open("PUT", `/storage/objects/${encodeKey(prefix + entry.path)}`);
    request.setRequestHeader("X-CSRF-Token", csrf);
    request.setRequestHeader("Content-Type", "application/octet-stream");
    request.upload.addEventListener("progress", (event) => onProgress(event.loaded));
    request.addEventListener("load", () => {
      if (request.status === 201 || request.status === 200) {
        let info = {};
        try { info = JSON.parse(request.responseText); } catch (_) { /* not JSON */ }
        resolve({ info });
        return;
      }
      let reason = `error ${request.status}`;
      try { reason = JSON.parse(request.responseText).detail || reason; } catch (_) { /* not JSON */ }
      resolve({ problem: typeof reason === "string" ? reason : JSON.stringify(reason) });
    });
    request.addEventListener("error", () => resolve({ problem: "the connection failed" }));
    request.send(entry.file);
  });

  const start = async (entries) => {
    if (busy || !entries.length) return;
    busy = true;
    status.hidden = false;
    list.replaceChildren();
    const accepted = [];
    const refused = [];
    for (const entry of entries) {
      if (hidden(entry.path)) continue;
      if (labeledRoot && !entry.path.includes("/")) {
        refused.push([entry.path, "needs a label folder: drop the folder, not the files"]);
      } else if (entry.file.size > maxBytes) {
        refused.push([entry.path, "too large"]);
      } else {
        accepted.push(entry);
      }
    }
    for (const [path, reason] of refused) {
      const { item, state } = row(path);
      item.classList.add("failed");
      state.textContent = reason;
    }
    const total = accepted.reduce((sum, entry) => sum + entry.file.size, 0) || 1;
    const loaded = new Map();
    let done = 0;
    let failed = refused.length;
    const show = () => {
      const bytes = [...loaded.values()].reduce((a, b) => a + b, 0);
      bar.value = Math.min(1, bytes / total);
      summary.textContent = `Uploaded ${done} of ${accepted.length} ${accepted.length === 1 ? "file" : "files"}` +
        ` (${Math.round(bar.value * 100)}%)` + (failed ? `, ${failed} failed` : "") + ".";
    };
    show();
    const rows = accepted.map((entry) => row(entry.path));
    const outcomes = [];
    let nextIndex = 0;
    const worker = async () => {
      while (nextIndex < accepted.length) {
        const index = nextIndex++;
        const entry = accepted[index];
        const { item, state } = rows[index];
        state.textContent = "0%";
        const outcome = await upload(entry, (bytes) => {
          loaded.set(index, bytes);
          state.textContent = `${Math.round((100 * bytes) / (entry.file.size || 1))}%`;
          show();
        });
        loaded.set(index, entry.file.size);
        if (outcome.problem) {
          failed += 1;
          item.classList.add("failed");
          state.textContent = outcome.problem;
        } else {
          done += 1;
          item.classList.add("done");
          state.textContent = outcomeText(outcome.info);
          outcomes.push({ path: entry.path, key: outcome.info.key, unchanged: !!outcome.info.unchanged,
                          run: outcome.info.run_id || null });
          if (outcome.info.run_id && outcome.info.key.startsWith("images_for_detection/")) {
            followDetection(outcome.info.run_id, outcome.info.key, state);
          }
        }
        show();
      }
    };
    await Promise.all([worker(), worker(), worker(), worker()]);
    busy = false;
    if (!failed && done) {
      // The listing reloads with the new objects; it shows each file's outcome again from here.
      try {
        sessionStorage.setItem(OUTCOMES_KEY, JSON.stringify({ prefix, outcomes }));
      } catch (_) { /* storage full or off: the listing still shows the objects */ }
      window.location.assign(`/storage?prefix=${encodeURIComponent(prefix)}&uploaded=${done}`);
    } else {
      summary.textContent = `${done} uploaded, ${failed} not uploaded. See the reasons below.`;
    }
  };

  // After the reload that follows an upload: the per-file outcomes again, detections filled in as they come.
  const shown = (() => {
    try { return JSON.parse(sessionStorage.getItem(OUTCOMES_KEY) || "null"); } catch (_) { return null; }
  })();
  sessionStorage.removeItem(OUTCOMES_KEY);
  if (shown && shown.prefix === prefix && new URLSearchParams(window.location.search).has("uploaded")) {
    status.hidden = false;
    summary.textContent = `${shown.outcomes.length} ${shown.outcomes.length === 1 ? "file" : "files"}: each one's outcome.`;
    bar.hidden = true;
    for (const outcome of shown.outcomes) {
      const { item, state } = row(outcome.path);
      item.classList.add("done");
      state.textContent = outcomeText(outcome);
      if (outcome.run && outcome.key.startsWith("images_for_detection/")) followDetection(outcome.run, outcome.key, state);
    }
  }

  const fromInput = (input) => {
    input.addEventListener("change", () => {
      const entries = [...input.files].map((file) => ({ file, path: file.webkitRelativePath || file.name }));
      input.value = "";
      start(entries);
    });
  };
  for (const id of ["pick-folder", "pick-files"]) {
    const input = document.getElementById(id);
    if (input) fromInput(input);
  }

  // Drops anywhere on the page go to the uploader (the browser would otherwise open the file).
  let depth = 0;
  document.addEventListener("dragenter", (event) => {
    event.preventDefault();
    depth += 1;
    zone.classList.add("dragover");
  });
  document.addEventListener("dragleave", () => {
    depth = Math.max(0, depth - 1);
    if (!depth) zone.classList.remove("dragover");
  });
  document.addEventListener("dragover", (event) => event.preventDefault());
  document.addEventListener("drop", async (event) => {
    event.preventDefault();
    depth = 0;
    zone.classList.remove("dragover");
    const transfer = event.dataTransfer;
    if (!transfer) return;
    const entries = [...(transfer.items || [])]
      .map((item) => (item.kind === "file" && item.webkitGetAsEntry ? item.webkitGetAsEntry() : null))
      .filter(Boolean);
    let files;
    if (entries.length) {
      files = [];
      for (const entry of entries) files.push(...await walk(entry, ""));
    } else {
      files = [...transfer.files].map((file) => ({ file, path: file.webkitRelativePath || file.name }));
    }
    start(files);
  });
}

// ── upload outcomes (first hour): what happened to each file ──────────────────────────────────────────
const OUTCOMES_KEY = "labelloop-upload-outcomes";

function outcomeText(info) {
  if (info.unchanged) {
    return info.key && info.key.startsWith("images_for_detection/")
      ? "unchanged: these bytes were already stored, no new detection (use Re-detect to detect it again)"
      : "unchanged: these bytes were already stored";
  }
  return info.key && info.key.startsWith("images_for_detection/") ? "stored · detecting…" : "stored";
}

// Ask what the detection of an upload found until it is known (about a minute at most), and say it.
function followDetection(runId, key, state) {
  const prefixText = state.textContent.startsWith("unchanged") ? `${state.textContent} · ` : "stored · ";
  let tries = 0;
  const ask = async () => {
    tries += 1;
    try {
      const response = await fetch(`/storage/outcome/${encodeURIComponent(runId)}?key=${encodeURIComponent(key)}`, { credentials: "same-origin" });
      const found = response.ok ? await response.json() : { known: false };
      if (found.known) {
        state.textContent = prefixText + detectionText(found);
        state.parentElement.dataset.detected = found.status;
        return;
      }
    } catch (_) { /* try again */ }
    if (tries < 60) setTimeout(ask, 1000);
    else state.textContent = `${prefixText}still detecting: see the Detections page`;
  };
  ask();
}

function detectionText(found) {
  if (found.status === "DETECTED") {
    const loop = found.human_loop ? " · sent to a reviewer" : "";
    return `${found.label} ${Number(found.confidence).toFixed(1)} (model ${found.model_version})${loop}`;
  }
  if (found.status === "WAITING_FOR_MODEL") return "waiting for a model version to serve";
  return `not detected: ${found.message}`;
}

// The run page: clicking a state shows its step's input, output, error and timing beside the graph, without
// scrolling away from it (without the script, the link's #state-… target shows it just the same).
function setUpInspector() {
  const inspector = document.querySelector(".inspector");
  if (!inspector) return;
  const panel = document.getElementById("details");
  inspector.classList.add("scripted");
  const show = (id) => {
    let found = false;
    for (const detail of panel.querySelectorAll(".state-detail")) {
      const match = detail.id === `state-${id}`;
      detail.classList.toggle("shown", match);
      found = found || match;
    }
    panel.classList.toggle("showing", found);
    for (const node of inspector.querySelectorAll("a.state")) {
      node.classList.toggle("selected", node.dataset.state === id);
    }
    return found;
  };
  const fromHash = () => show(window.location.hash.startsWith("#state-") ? decodeURIComponent(window.location.hash.slice(7)) : "");
  document.addEventListener("click", (event) => {
    const link = event.target.closest && event.target.closest("a[href^='#state-'], a[href='#details']");
    if (!link) return;
    const id = link.getAttribute("href") === "#details" ? "" : link.getAttribute("href").slice(7);
    if (id && !panel.querySelector(`#state-${CSS.escape(id)}`)) return;
    event.preventDefault();
    history.replaceState(null, "", id ? `#state-${id}` : "#details");
    show(id);
    panel.scrollTop = 0;
    const box = panel.getBoundingClientRect();
    if (box.top < 0 || box.top > window.innerHeight - 80) panel.scrollIntoView({ block: "start" });
  });
  window.addEventListener("hashchange", fromHash);
  fromHash();
}

// ── dashboard (first hour): the live progress of a training in progress ──────────────────────────────
document.addEventListener("DOMContentLoaded", setUpTrainingProgress);

function setUpTrainingProgress() {
  const box = document.getElementById("training-progress");
  if (!box) return;
  const field = (id) => document.getElementById(id);
  const seconds = (s) => (s < 90 ? `${Math.round(s)} s` : `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`);
  let training = !box.hidden;
  const poll = async () => {
    let found = null;
    try {
      const response = await fetch(box.dataset.url, { credentials: "same-origin" });
      if (response.ok && (response.headers.get("content-type") || "").includes("json")) found = await response.json();
    } catch (_) { /* the server may be restarting: ask again */ }
    if (found && found.training) {
      training = true;
      box.hidden = false;
      field("progress-version").textContent = found.version;
      field("progress-phase").textContent = found.phase;
      field("progress-count").textContent = `${found.done} of ${found.total} images embedded`;
      field("progress-elapsed").textContent = `${seconds(found.elapsed_s)} elapsed`;
      const bar = field("progress-bar");
      bar.max = found.total || 1;
      const before = found.phase === "starting" || found.phase === "writing the manifest";
      bar.value = before ? 0 : found.embedding ? found.done : found.total;
    } else if (found && found.finished && found.version !== box.dataset.newest) {
      // A training that ended between two polls (a few cached images train in under a second): say so, then
      // reload to show the new version.
      box.hidden = false;
      field("progress-version").textContent = found.version;
      field("progress-phase").textContent = `${found.status}`;
      field("progress-count").textContent = `${found.images} images`;
      field("progress-elapsed").textContent = `trained in ${seconds(found.training_seconds || 0)}`;
      field("progress-bar").value = field("progress-bar").max;
      setTimeout(() => window.location.reload(), 1500);
      return;
    } else if (found && training) {
      window.location.reload();  // it finished: the page shows the new version
      return;
    }
    setTimeout(poll, training ? 1500 : 2500);
  };
  setTimeout(poll, training ? 1500 : 2500);
}

// Review portal: "u" takes back the last answer while its undo window is open (the form is there only then).
document.addEventListener("keydown", (event) => {
  if (event.key !== "u" || event.ctrlKey || event.metaKey || event.altKey) return;
  const target = event.target;
  if (target instanceof HTMLInputElement || target instanceof HTMLTextAreaElement ||
      target instanceof HTMLSelectElement) return;
  const form = document.getElementById("undo-form");
  if (form) {
    event.preventDefault();
    form.requestSubmit();
  }
});
