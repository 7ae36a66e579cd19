/*
 * cipherfeed — small progressive enhancements (ES2020, no framework).
 * Loaded with `defer` under a strict CSP (no inline code, no eval).
 * The site works without it; htmx may or may not be present.
 *
 *   <textarea data-counter="ID" data-max="500">  live remaining-characters counter
 *   <time datetime="ISO" data-relative>          compact relative timestamps
 *   <form data-confirm="Question?">              confirm() before submitting
 */
(() => {
  "use strict";

  /* ---------- a. character counters ---------- */

  // Count Unicode code points the same way the server does:
  // CRLF -> LF, NFC-normalise, trim, then count code points.
  const charCount = (value) =>
    [...value.replace(/\r\n?/g, "\n").normalize("NFC").trim()].length;

  const fieldMax = (field) => {
    const max = parseInt(field.dataset.max, 10);
    return Number.isFinite(max) && max > 0 ? max : 500;
  };

  // Update one field's <output>. Returns true when the field blocks submit:
  // over its limit, or empty when it is `required` (the post body is; an
  // optional textarea such as the profile bio may be left empty).
  const updateCounter = (field) => {
    const count = charCount(field.value);
    const remaining = fieldMax(field) - count;
    const out = document.getElementById(field.dataset.counter);
    if (out) {
      out.textContent = String(remaining);
      out.classList.toggle("over", remaining < 0);
    }
    return remaining < 0 || (field.required && count === 0);
  };

  // Recompute every counted field of a form (body + content warning), so the
  // submit button reflects all of them, whichever one just changed.
  const updateForm = (form) => {
    let blocked = false;
    form.querySelectorAll("[data-counter]").forEach((f) => {
      if (updateCounter(f)) blocked = true;
    });
    form.querySelectorAll('button[type="submit"]').forEach((b) => {
      b.disabled = blocked;
    });
  };

  const refreshField = (field) => {
    const form = field.closest("form");
    if (form) updateForm(form);
    else updateCounter(field);
  };

  const refreshCounters = (root = document) => {
    root.querySelectorAll("[data-counter]").forEach(refreshField);
  };

  document.addEventListener("input", (evt) => {
    const field = evt.target;
    if (field instanceof Element && field.matches("[data-counter]")) refreshField(field);
  });
  // A reset (e.g. after a successful post) changes values without `input`.
  document.addEventListener("reset", (evt) => {
    const form = evt.target;
    if (form instanceof HTMLFormElement) setTimeout(() => updateForm(form), 0);
  });

  /* ---------- b. relative times ---------- */

  const shortDate = new Intl.DateTimeFormat("en-GB", { day: "numeric", month: "short" });
  const shortDateYear = new Intl.DateTimeFormat("en-GB", {
    day: "numeric", month: "short", year: "numeric",
  });
  const fullDate = new Intl.DateTimeFormat(undefined, { dateStyle: "full", timeStyle: "short" });

  const relative = (date, now) => {
    const s = Math.round((now - date.getTime()) / 1000);
    if (s > -60 && s < 10) return "now"; // tolerate a little clock skew
    if (s >= 10 && s < 60) return `${s}s`;
    if (s >= 60 && s < 3600) return `${Math.floor(s / 60)}m`;
    if (s >= 3600 && s < 86400) return `${Math.floor(s / 3600)}h`;
    if (s >= 86400 && s < 7 * 86400) return `${Math.floor(s / 86400)}d`;
    const fmt = date.getFullYear() === new Date(now).getFullYear() ? shortDate : shortDateYear;
    return fmt.format(date);
  };

  const refreshTimes = (root = document) => {
    const now = Date.now();
    root.querySelectorAll("time[data-relative][datetime]").forEach((el) => {
      const date = new Date(el.getAttribute("datetime"));
      if (Number.isNaN(date.getTime())) return;
      const text = relative(date, now);
      if (el.textContent !== text) el.textContent = text;
      const title = fullDate.format(date);
      if (el.title !== title) el.title = title;
    });
  };

  setInterval(() => refreshTimes(), 30_000);

  /* ---------- c. confirmation for dangerous forms ---------- */

  // Submit events already confirmed here, so htmx:confirm won't ask again.
  const confirmedEvents = new WeakSet();

  // The element itself, or its form (or any ancestor), may carry data-confirm.
  const confirmMessage = (elt) => {
    const holder = elt instanceof Element ? elt.closest("[data-confirm]") : null;
    return holder ? holder.getAttribute("data-confirm") : null;
  };

  // Capture phase on document runs before htmx's own submit listener on the
  // form, so a declined confirm stops both plain and htmx/boosted submits.
  document.addEventListener("submit", (evt) => {
    const form = evt.target;
    const msg = evt.submitter?.getAttribute("data-confirm") ?? confirmMessage(form);
    if (msg == null) return;
    if (window.confirm(msg)) {
      confirmedEvents.add(evt);
    } else {
      evt.preventDefault();
      evt.stopPropagation();
    }
  }, true);

  // Requests htmx issues from other triggers (e.g. a button with hx-delete).
  document.addEventListener("htmx:confirm", (evt) => {
    const { elt, triggeringEvent, issueRequest } = evt.detail ?? {};
    if (triggeringEvent && confirmedEvents.has(triggeringEvent)) return; // already asked
    const msg = confirmMessage(elt);
    if (msg == null) return;
    evt.preventDefault();
    if (window.confirm(msg)) issueRequest(true);
  });

  /* ---------- wiring ---------- */

  const refreshAll = (root) => {
    refreshCounters(root);
    refreshTimes(root);
  };

  // htmx events bubble to body; harmless if htmx is not loaded.
  document.body.addEventListener("htmx:afterSettle", () => refreshAll(document));
  // hx-disabled-elt re-enables buttons after a request: re-apply our state.
  document.body.addEventListener("htmx:afterRequest", () => refreshCounters(document));

  refreshAll(document);
})();
