// webhook-dispatcher console: progressive enhancement over plain HTML forms and links.
//
// Without this file every action still works: dialog links load the page with the dialog open,
// and forms post and redirect. With it, dialogs open modal in place, their forms submit with
// fetch (errors and results appear in the dialog), menus close on outside clicks, whole table
// rows are links, and the secret is revealed and copied without a round trip.
"use strict";

(() => {
  const csrfToken = document.body.dataset.csrfToken || "";
  const openers = new WeakMap(); // dialog -> the element that opened it, for focus on close
  const reloadOnClose = new WeakSet(); // result dialogs: the page under them is out of date

  // --- dialogs --------------------------------------------------------------------------

  function focusInside(dialog) {
    const target =
      dialog.querySelector("input[aria-invalid='true'], textarea[aria-invalid='true']") ||
      dialog.querySelector(
        "input:not([type='hidden']):not([type='checkbox']):not([type='radio']), select, textarea"
      ) ||
      dialog.querySelector("input[type='radio']:checked, input:not([type='hidden'])") ||
      dialog.querySelector(".modal-footer [data-close]") ||
      dialog.querySelector("button");
    if (target) target.focus();
  }

  function openDialog(dialog, opener) {
    if (!dialog) return;
    if (opener) openers.set(dialog, opener);
    if (dialog.open) dialog.close();
    dialog.showModal();
    focusInside(dialog);
  }

  function upgrade(root) {
    // Links that act as buttons say so, and answer the space bar like buttons do.
    for (const link of root.querySelectorAll("a[data-dialog], a[data-close]")) {
      link.setAttribute("role", "button");
    }
    for (const button of root.querySelectorAll("[data-copy]")) button.hidden = false;
  }

  document.addEventListener("click", (event) => {
    const opener = event.target.closest("[data-dialog]");
    if (opener) {
      const dialog = document.getElementById(opener.dataset.dialog);
      if (!dialog) return; // not on this page: follow the link
      event.preventDefault();
      const menu = opener.closest("details.menu");
      if (menu) menu.open = false;
      openDialog(dialog, menu ? menu.querySelector("summary") : opener);
      return;
    }
    const closer = event.target.closest("[data-close]");
    if (closer && closer.closest("dialog")) {
      event.preventDefault();
      closer.closest("dialog").close();
      return;
    }
    // A click on the backdrop (outside the dialog's box) closes it.
    if (event.target instanceof HTMLDialogElement && event.target.open) {
      const box = event.target.getBoundingClientRect();
      const inside =
        event.clientX >= box.left && event.clientX <= box.right &&
        event.clientY >= box.top && event.clientY <= box.bottom;
      if (!inside) event.target.close();
    }
  });

  document.addEventListener("keydown", (event) => {
    const link = event.target.closest && event.target.closest("a[role='button']");
    if (link && event.key === " ") {
      event.preventDefault();
      link.click();
    }
    if (event.key === "Escape") {
      const menu = document.querySelector("details.menu[open]");
      if (menu) {
        menu.open = false;
        menu.querySelector("summary").focus();
      }
    }
  });

  document.addEventListener(
    "close",
    (event) => {
      const dialog = event.target;
      if (!(dialog instanceof HTMLDialogElement)) return;
      if (reloadOnClose.has(dialog)) {
        window.location.reload();
        return;
      }
      const opener = openers.get(dialog);
      if (opener && document.contains(opener)) opener.focus();
    },
    true
  );

  // --- forms inside dialogs: submit with fetch, show the answer in place -------------------

  function showError(form, message) {
    let slot = form.querySelector("[data-form-error]");
    if (!slot) {
      slot = document.createElement("p");
      slot.className = "form-error";
      slot.setAttribute("role", "alert");
      slot.dataset.formError = "";
      form.prepend(slot);
    }
    slot.textContent = message;
    slot.hidden = false;
  }

  function swapDialog(current, fresh) {
    const node = document.importNode(fresh, true);
    node.removeAttribute("open");
    const existing = document.getElementById(node.id);
    const opener = current ? openers.get(current) : null;
    if (current && current.id !== node.id) reloadOnClose.add(node);
    if (current && current.open) {
      openers.delete(current); // the focus moves to the new dialog, not back to the page
      current.close();
    }
    if (existing) existing.replaceWith(node);
    else document.body.append(node);
    upgrade(node);
    openDialog(node, opener);
  }

  async function submitInPlace(form, submitter) {
    const method = (form.getAttribute("method") || "get").toUpperCase();
    const fields = new URLSearchParams(new FormData(form, submitter));
    const headers = { "X-Console-Fetch": "1" };
    let url = form.action;
    const init = { method, headers, credentials: "same-origin" };
    if (method === "GET") {
      url = `${url.split("?")[0]}?${fields}`;
    } else {
      init.body = fields;
      headers["X-CSRF-Token"] = csrfToken;
    }
    const label = submitter ? submitter.textContent : "";
    if (submitter) {
      submitter.disabled = true;
      if (submitter.dataset.busy) submitter.textContent = submitter.dataset.busy;
    }
    try {
      const response = await fetch(url, init);
      if (response.status === 401) {
        window.location.reload(); // the session ended: the sign-in page brings them back here
        return;
      }
      const next = response.headers.get("X-Console-Location");
      if (next) {
        window.location.assign(next);
        return;
      }
      const text = await response.text();
      if ((response.headers.get("Content-Type") || "").includes("text/html")) {
        const page = new DOMParser().parseFromString(text, "text/html");
        const fresh = page.querySelector("dialog[open][data-modal]");
        if (fresh) {
          swapDialog(form.closest("dialog"), fresh);
          return;
        }
        const detail = page.querySelector("[data-error]");
        showError(form, detail ? detail.textContent : `The server answered ${response.status}.`);
      } else {
        showError(form, text.replace(/^\d{3}: /, "").trim() || `The server answered ${response.status}.`);
      }
    } catch (error) {
      showError(form, "The console could not reach the server. Check the connection and try again.");
    } finally {
      if (submitter && document.contains(submitter)) {
        submitter.disabled = false;
        submitter.textContent = label;
      }
    }
  }

  document.addEventListener("submit", (event) => {
    const form = event.target;
    if (form.matches("form[data-reveal]")) {
      event.preventDefault();
      toggleSecret(form);
      return;
    }
    if (form.matches("form[data-enhance]")) {
      event.preventDefault();
      submitInPlace(form, event.submitter);
    }
  });

  // --- the secret ---------------------------------------------------------------------------

  function toggleSecret(form) {
    const value = document.querySelector("[data-secret]");
    const mask = document.querySelector("[data-secret-mask]");
    const button = form.querySelector("button");
    if (!value || !mask) return;
    const show = value.hidden;
    value.hidden = !show;
    mask.hidden = show;
    button.textContent = show ? "Hide" : "Reveal";
    button.setAttribute("aria-expanded", String(show));
  }

  document.addEventListener("click", async (event) => {
    const button = event.target.closest("button[data-copy]");
    if (!button) return;
    const source = document.getElementById(button.dataset.copy);
    if (!source) return;
    try {
      await navigator.clipboard.writeText(source.textContent.trim());
      button.textContent = "Copied";
    } catch (error) {
      // No clipboard access (a plain-HTTP page on another host): show the text selected instead.
      const form = document.querySelector("form[data-reveal]");
      if (source.hidden && form) toggleSecret(form);
      const range = document.createRange();
      range.selectNodeContents(source);
      window.getSelection().removeAllRanges();
      window.getSelection().addRange(range);
      button.textContent = "Press Ctrl+C";
    }
    setTimeout(() => { button.textContent = "Copy"; }, 1600);
  });

  // --- menus, table rows, filters -----------------------------------------------------------

  document.addEventListener("click", (event) => {
    for (const menu of document.querySelectorAll("details.menu[open]")) {
      if (!menu.contains(event.target)) menu.open = false;
    }
    const row = event.target.closest("tr[data-href]");
    if (!row || event.target.closest("a, button, input, select, label, summary, details")) return;
    if (String(window.getSelection())) return; // selecting text is not a click on the row
    if (event.ctrlKey || event.metaKey) window.open(row.dataset.href, "_blank", "noopener");
    else window.location.assign(row.dataset.href);
  });

  document.addEventListener("toggle", (event) => {
    const menu = event.target;
    if (!(menu instanceof HTMLDetailsElement) || !menu.matches(".menu") || !menu.open) return;
    for (const other of document.querySelectorAll("details.menu[open]")) {
      if (other !== menu) other.open = false;
    }
    const first = menu.querySelector(".menu-item");
    if (first) first.focus();
  }, true);

  document.addEventListener("change", (event) => {
    const form = event.target.closest("form[data-autosubmit]");
    if (form && event.target.matches("select")) form.requestSubmit();
  });

  // --- start ------------------------------------------------------------------------------

  upgrade(document);
  const opened = document.querySelector("dialog[open][data-modal]");
  if (opened) openDialog(opened, null);
  const url = new URL(window.location.href);
  if (url.searchParams.has("dialog")) {
    // Opened by a link without JS: drop the parameter so a reload shows the plain page.
    url.searchParams.delete("dialog");
    window.history.replaceState(null, "", url);
  }
})();
