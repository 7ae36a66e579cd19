/*
 * cipherfeed — small progressive enhancements (ES2020, no framework).
 * Loaded with `defer` under a strict CSP (no inline code, no eval).
 * The site works without it; htmx may or may not be present.
 *
 *   <textarea data-counter="ID" data-max="500">  live remaining-characters counter
 *   <time datetime="ISO" data-relative>          compact relative timestamps
 *   <form data-confirm="Question?">              confirm() before submitting
 *   <div id="live" sse-connect="/events?...">   the live timeline (htmx's SSE extension connects)
 *   <body data-viewer="name">                    a session that ended in another tab (see e.)
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

  /* ---------- d. the live timeline ---------- */

  // htmx's SSE extension owns the connection (and reconnects); this applies what arrives:
  //   post    <li> for the top of #timeline: slides in at the top, else waits behind the "N new posts" bar
  //   edit    a post's new <article>          delete  a post's id        counts  {"id": [likes, replies]}
  //   unread  the number of unread notifications
  // The server rendered all of it for this viewer. Each event's id is the stream position, kept in the
  // sse-connect URL too, so that a new EventSource (after the extension gave up on one) resumes from it.
  const pending = []; // <li> elements behind the bar, oldest first
  const handled = new WeakSet();
  let source = null;
  let lastId = null;

  const liveBox = () => document.getElementById("live");
  const timelineList = () => document.getElementById("timeline");
  const atTop = () => window.scrollY < 120;

  const fragment = (html) => {
    const tpl = document.createElement("template");
    tpl.innerHTML = html.trim();
    return tpl.content;
  };

  const enhance = (el) => {
    if (window.htmx) window.htmx.process(el);
    refreshCounters(el);
    refreshTimes(el);
  };

  const liveUrl = (posts) => {
    const box = liveBox();
    if (!box) return null;
    const url = new URL(box.getAttribute("sse-connect"), window.location.href);
    if (lastId) url.searchParams.set("last", lastId);
    if (posts) url.searchParams.set("posts", posts.join(","));
    return url.pathname + url.search;
  };

  const remember = (evt) => {
    if (!evt.lastEventId || evt.lastEventId === lastId) return;
    lastId = evt.lastEventId;
    const box = liveBox();
    const url = liveUrl(null);
    if (box && url) box.setAttribute("sse-connect", url);
  };

  const showBar = () => {
    const bar = liveBox()?.querySelector(".new-posts");
    if (!bar) return;
    bar.hidden = pending.length === 0;
    bar.textContent = pending.length === 1 ? "1 new post" : `${pending.length} new posts`;
  };

  // Post ids are 64-bit (too large for a JS number) and of equal length for centuries: compare them as text.
  const idOf = (li) => li.querySelector("article[id^='post-']")?.id.slice(5) ?? "";
  const newer = (a, b) => (a.length !== b.length ? a.length > b.length : a > b);

  // Each new post goes above the first older one (two posts made a moment apart may arrive in either order).
  const insert = (items) => {
    const list = timelineList();
    if (!list) return null;
    document.getElementById("empty-home")?.remove();
    let top = null;
    for (const li of items) {
      li.classList.add("arrived");
      const id = idOf(li);
      const before = [...list.children].find((other) => newer(id, idOf(other)));
      list.insertBefore(li, before ?? null);
      enhance(li);
      if (!top || newer(id, idOf(top))) top = li;
    }
    return top;
  };

  const reveal = (scroll) => {
    const first = insert(pending.splice(0));
    showBar();
    if (scroll && first) first.scrollIntoView({ behavior: "smooth", block: "start" });
  };

  const onPost = (evt) => {
    remember(evt);
    const li = fragment(evt.data).firstElementChild;
    const article = li?.querySelector("article[id^='post-']");
    if (!article || document.getElementById(article.id)) return; // shown already (replayed, or the page had it)
    if (pending.some((p) => p.querySelector(`#${article.id}`))) return;
    if (atTop() && pending.length === 0) insert([li]);
    else {
      pending.push(li);
      showBar();
    }
  };

  const onEdit = (evt) => {
    remember(evt);
    const article = fragment(evt.data).querySelector("article[id^='post-']");
    const old = article && document.getElementById(article.id);
    if (!old) return;
    if (old.querySelector("details[open]")) article.querySelector("details")?.setAttribute("open", "");
    if (old.classList.contains("thread-focus")) article.classList.add("thread-focus");
    old.replaceWith(article);
    enhance(article);
  };

  const onDelete = (evt) => {
    remember(evt);
    const id = `post-${evt.data}`;
    const at = pending.findIndex((p) => p.querySelector(`#${id}`));
    if (at >= 0) {
      pending.splice(at, 1);
      showBar();
    }
    const old = document.getElementById(id);
    if (!old) return;
    const gone = document.createElement("article");
    gone.className = "post deleted";
    gone.id = id;
    const note = document.createElement("p");
    note.textContent = "This post was deleted.";
    gone.append(note);
    old.replaceWith(gone);
  };

  const onCounts = (evt) => {
    let counts;
    try {
      counts = JSON.parse(evt.data);
    } catch {
      return;
    }
    for (const [id, [likes, replies]] of Object.entries(counts)) {
      const article = document.getElementById(`post-${id}`);
      if (!article) continue;
      article.querySelectorAll(".like-button .count").forEach((c) => {
        c.textContent = String(likes);
      });
      const reply = article.querySelector(".reply-link");
      if (!reply) continue;
      let count = reply.querySelector(".count");
      if (replies && !count) {
        count = document.createElement("span");
        count.className = "count";
        reply.append(" ", count);
      }
      if (count && replies) count.textContent = String(replies);
      else if (count) count.remove();
    }
  };

  // The number of unread notifications in the navigation ("unread": the new number, 0 hides it).
  const onUnread = (evt) => {
    const badge = document.getElementById("unread-count");
    const count = parseInt(evt.data, 10);
    if (!badge || !Number.isFinite(count) || count < 0) return;
    const shown = badge.childNodes[1];
    if (shown) shown.textContent = count > 99 ? "99+" : String(count);
    badge.hidden = count === 0;
  };

  document.addEventListener("htmx:sseOpen", (evt) => {
    const opened = evt.detail?.source;
    if (!opened || handled.has(opened)) return;
    handled.add(opened);
    source = opened;
    opened.addEventListener("post", onPost);
    opened.addEventListener("edit", onEdit);
    opened.addEventListener("delete", onDelete);
    opened.addEventListener("counts", onCounts);
    opened.addEventListener("unread", onUnread);
    opened.addEventListener("resync", remember);
  });

  // The server follows the posts a page shows (for their counts, edits and deletions): when the timeline gains
  // posts another way (an older page scrolled in, a refetch after "resync"), connect again with the new list.
  let rewatch = null;
  const watchAgain = () => {
    const box = liveBox();
    const list = timelineList();
    if (!box || !list) return;
    const ids = [...list.querySelectorAll("article[id^='post-']")].map((a) => a.id.slice(5)).slice(0, 200);
    const url = liveUrl(ids);
    if (!url) return;
    source?.close();
    const fresh = box.cloneNode(true);
    fresh.setAttribute("sse-connect", url);
    box.replaceWith(fresh);
    if (window.htmx) window.htmx.process(fresh);
  };

  // The page's own new post comes twice: as the composer's answer and as a live event. Keep the first.
  const dedupe = (list) => {
    const seen = new Set();
    for (const li of [...list.children]) {
      const id = idOf(li);
      if (id && seen.has(id)) li.remove();
      else if (id) seen.add(id);
    }
  };

  document.addEventListener("htmx:afterSettle", (evt) => {
    const list = timelineList();
    const target = evt.detail?.target;
    if (!list || !target || !(target === list || list.contains(target))) return;
    dedupe(list);
    if (evt.detail?.requestConfig?.verb !== "get") return; // a post of one's own, which the stream knows already
    clearTimeout(rewatch);
    rewatch = setTimeout(watchAgain, 300);
  });

  document.addEventListener("click", (evt) => {
    if (evt.target instanceof Element && evt.target.closest("#live .new-posts")) reveal(true);
  });
  window.addEventListener("scroll", () => {
    if (pending.length && atTop()) reveal(false);
  }, { passive: true });

  /* ---------- e. a session that ended elsewhere ---------- */

  // Logged out in another tab, this page's next action is refused (the server marks that answer). The page stays
  // as it is, with what its reader wrote (kept nowhere else: not in browser storage), and offers to log in again in
  // a new tab; when the reader comes back here, the page takes the new session's token and says to press again.
  const SESSION_HEADER = "X-Session-Ended";
  let sessionBanner = null;

  const say = (banner, ...parts) => {
    const line = document.createElement("p");
    line.append(...parts);
    banner.replaceChildren(line);
  };

  const showSessionEnded = () => {
    const flash = document.getElementById("flash");
    if (!flash) return;
    if (!sessionBanner) {
      sessionBanner = document.createElement("div");
      sessionBanner.id = "session-ended";
      sessionBanner.className = "notice warning";
      sessionBanner.setAttribute("role", "alert");
    }
    const login = document.createElement("a");
    login.href = "/login?next=" + encodeURIComponent("/?notice=back");
    login.target = "_blank";
    login.rel = "noopener";
    login.textContent = "Log in again in a new tab";
    say(sessionBanner, "Your session has ended (perhaps you logged out in another tab). What you wrote is still here. ",
      login, ", then come back and press the button again.");
    flash.replaceChildren(sessionBanner);
  };

  const takeNewSession = async () => {
    if (!sessionBanner || !sessionBanner.isConnected) return;
    let state;
    try {
      const response = await fetch("/session", { credentials: "same-origin", headers: { Accept: "application/json" } });
      if (!response.ok) return;
      state = await response.json();
    } catch {
      return;
    }
    if (!state.username || !state.csrf) return;
    const mine = document.body.dataset.viewer;
    if (mine && mine !== state.username) {
      say(sessionBanner, `You are logged in as @${state.username} now, not @${mine}: reload this page to go on.`);
      return;
    }
    document.querySelectorAll('input[name="csrf_token"]').forEach((field) => { field.value = state.csrf; });
    document.body.setAttribute("hx-headers", JSON.stringify({ "X-CSRF-Token": state.csrf }));
    sessionBanner.className = "notice";
    sessionBanner.setAttribute("role", "status");
    say(sessionBanner, "You are logged in again: press the button again to send what you wrote.");
  };

  document.addEventListener("htmx:responseError", (evt) => {
    if (evt.detail?.xhr?.getResponseHeader(SESSION_HEADER) === "1") showSessionEnded();
  });
  window.addEventListener("focus", takeNewSession);
  document.addEventListener("visibilitychange", () => {
    if (document.visibilityState === "visible") takeNewSession();
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
