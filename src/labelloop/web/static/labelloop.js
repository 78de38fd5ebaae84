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
