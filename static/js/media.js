/*
 * cipherfeed — images (ES2020, no framework), loaded with `defer` under the strict CSP.
 *
 *   <a class="media-item" data-blurhash="…" data-focus="x,y" data-lightbox>   a post's image: its blurhash painted
 *        behind it until it loads, its focal point kept in view when cropped, a lightbox with its alt text on click
 *   <form id="composer"> with <div class="composer-media">                   attach up to 4 images: the picker,
 *        drag and drop, or paste; each uploads (progress shown), is processed, and asks for its alt text
 *
 * Without it, images still show (lazily, sized), and the link opens the largest variant.
 */
(() => {
  "use strict";

  /* ---------- a. blurhash placeholders (https://blurha.sh, the reference decoder's arithmetic) ---------- */

  const DIGITS = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz#$%*+,-.:;=?@[]^_{|}~";
  const decode83 = (text) => [...text].reduce((value, ch) => value * 83 + DIGITS.indexOf(ch), 0);
  const toLinear = (v) => {
    const c = v / 255;
    return c <= 0.04045 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4;
  };
  const toSrgb = (v) => {
    const c = Math.max(0, Math.min(1, v));
    return Math.round((c <= 0.0031308 ? c * 12.92 : 1.055 * c ** (1 / 2.4) - 0.055) * 255);
  };
  const signPow = (v, e) => Math.sign(v) * Math.abs(v) ** e;

  const blurhashPixels = (hash, width, height) => {
    if (!hash || hash.length < 6) return null;
    const size = decode83(hash[0]);
    const nx = (size % 9) + 1;
    const ny = Math.floor(size / 9) + 1;
    if (hash.length !== 4 + 2 * nx * ny) return null;
    const maximum = (decode83(hash[1]) + 1) / 166;
    const colors = [];
    const dc = decode83(hash.slice(2, 6));
    colors.push([toLinear(dc >> 16), toLinear((dc >> 8) & 255), toLinear(dc & 255)]);
    for (let i = 1; i < nx * ny; i++) {
      const ac = decode83(hash.slice(4 + i * 2, 6 + i * 2));
      const q = [Math.floor(ac / 361), Math.floor(ac / 19) % 19, ac % 19];
      colors.push(q.map((v) => signPow((v - 9) / 9, 2) * maximum));
    }
    const pixels = new Uint8ClampedArray(width * height * 4);
    for (let y = 0; y < height; y++) {
      for (let x = 0; x < width; x++) {
        let r = 0, g = 0, b = 0;
        for (let j = 0; j < ny; j++) {
          for (let i = 0; i < nx; i++) {
            const basis = Math.cos((Math.PI * x * i) / width) * Math.cos((Math.PI * y * j) / height);
            const c = colors[i + j * nx];
            r += c[0] * basis;
            g += c[1] * basis;
            b += c[2] * basis;
          }
        }
        const at = 4 * (x + y * width);
        pixels[at] = toSrgb(r);
        pixels[at + 1] = toSrgb(g);
        pixels[at + 2] = toSrgb(b);
        pixels[at + 3] = 255;
      }
    }
    return pixels;
  };

  // A 32-pixel canvas behind the image, stretched to its box by CSS; it goes once the image has loaded.
  const placeholder = (item) => {
    const img = item.querySelector("img");
    if (!img || item.querySelector("canvas")) return;
    const [x, y] = (item.dataset.focus || "0,0").split(",").map(Number);
    if (Number.isFinite(x) && Number.isFinite(y)) img.style.objectPosition = `${((x + 1) / 2) * 100}% ${((1 - y) / 2) * 100}%`;
    if (img.complete && img.naturalWidth) return;
    const pixels = blurhashPixels(item.dataset.blurhash, 32, 32);
    if (!pixels) return;
    const canvas = document.createElement("canvas");
    canvas.width = canvas.height = 32;
    canvas.className = "media-placeholder";
    canvas.setAttribute("aria-hidden", "true");
    canvas.getContext("2d")?.putImageData(new ImageData(pixels, 32, 32), 0, 0);
    item.prepend(canvas);
    item.classList.add("loading");
    const done = () => {
      item.classList.remove("loading");
      canvas.remove();
    };
    img.addEventListener("load", done, { once: true });
    img.addEventListener("error", () => item.classList.remove("loading"), { once: true });
  };

  const placeholders = (root) => root.querySelectorAll?.(".media-item").forEach(placeholder);

  /* ---------- b. the lightbox ---------- */

  let lightbox = null;
  const openLightbox = (item) => {
    const img = item.querySelector("img");
    if (!lightbox) {
      lightbox = document.createElement("dialog");
      lightbox.id = "lightbox";
      lightbox.className = "lightbox";
      lightbox.innerHTML = '<form method="dialog"><button class="lightbox-close" aria-label="Close">×</button></form><figure><img alt=""><figcaption></figcaption></figure>';
      lightbox.addEventListener("click", (evt) => {
        if (evt.target === lightbox) lightbox.close(); // a click beside the image
      });
      document.body.append(lightbox);
    }
    const big = lightbox.querySelector("img");
    big.src = item.href;
    big.alt = img?.alt ?? "";
    big.width = img?.width ?? 0;
    const caption = lightbox.querySelector("figcaption");
    caption.textContent = img?.alt ?? "";
    caption.hidden = !img?.alt;
    lightbox.showModal();
  };

  document.addEventListener("click", (evt) => {
    const item = evt.target instanceof Element ? evt.target.closest("a.media-item[data-lightbox]") : null;
    if (!item || evt.ctrlKey || evt.metaKey || evt.shiftKey || evt.button !== 0) return;
    evt.preventDefault();
    openLightbox(item);
  });

  /* ---------- c. the composer's images ---------- */

  const MAX_IMAGES = 4;
  const TYPES = ["image/jpeg", "image/png", "image/webp", "image/gif", "image/avif"];

  const composerBox = () => document.querySelector("#composer .composer-media");
  const csrfOf = (form) => form.querySelector('input[name="csrf_token"]')?.value ?? "";

  // The form's fields follow the order of the images: media_0…media_3 (ids) and alt_0…alt_3 (their text).
  const renumber = (box) => {
    const items = [...box.querySelectorAll(".attachment")];
    items.forEach((item, n) => {
      item.querySelector("input.media-id").name = `media_${n}`;
      const alt = item.querySelector("textarea.media-alt");
      alt.name = `alt_${n}`;
      alt.id = `composer-alt-${n}`;
      item.querySelector("label.media-alt-label").htmlFor = alt.id;
    });
    const form = box.closest("form");
    const status = form?.querySelector("textarea[name=status]");
    if (status) status.required = items.length === 0; // images alone may be a post
    form?.classList.toggle("uploading", items.some((item) => item.dataset.state !== "ready"));
    const picker = form?.querySelector(".attach-button");
    if (picker) picker.hidden = items.length >= MAX_IMAGES;
    status?.dispatchEvent(new Event("input", { bubbles: true })); // the counters' own check of the submit button
  };

  const say = (item, text) => {
    const note = item.querySelector(".attachment-state");
    note.textContent = text;
  };

  const makeItem = (file) => {
    const item = document.createElement("figure");
    item.className = "attachment";
    item.dataset.state = "uploading";
    item.innerHTML =
      '<img alt="" class="attachment-preview"><progress max="100" value="0"></progress>' +
      '<span class="attachment-state" role="status"></span>' +
      '<label class="media-alt-label">Describe this image for people who cannot see it</label>' +
      '<textarea class="media-alt" rows="2" maxlength="1500" required></textarea>' +
      '<input type="hidden" class="media-id" value="">' +
      '<button type="button" class="attachment-remove link">Remove</button>';
    const preview = item.querySelector("img");
    preview.src = URL.createObjectURL(file);
    preview.addEventListener("load", () => URL.revokeObjectURL(preview.src), { once: true });
    return item;
  };

  const waitReady = async (item, id) => {
    for (let delay = 100; ; delay = Math.min(delay * 1.5, 1000)) {
      const response = await fetch(`/media/${id}`, { credentials: "same-origin", headers: { Accept: "application/json" } });
      const state = response.ok ? await response.json() : { state: "failed" };
      if (state.state === "ready") return true;
      if (state.state === "failed") return false;
      await new Promise((resolve) => setTimeout(resolve, delay));
    }
  };

  const upload = (box, file) => {
    const form = box.closest("form");
    const item = makeItem(file);
    box.append(item);
    renumber(box);
    const bar = item.querySelector("progress");
    say(item, "Uploading…");
    const request = new XMLHttpRequest();
    request.open("POST", "/media");
    request.setRequestHeader("X-CSRF-Token", csrfOf(form));
    request.setRequestHeader("Accept", "application/json");
    request.upload.addEventListener("progress", (evt) => {
      if (evt.lengthComputable) bar.value = Math.round((100 * evt.loaded) / evt.total);
    });
    const failed = (why) => {
      item.dataset.state = "failed";
      item.classList.add("failed");
      bar.remove();
      say(item, why);
      renumber(box);
    };
    request.addEventListener("load", async () => {
      let answer = {};
      try {
        answer = JSON.parse(request.responseText);
      } catch {
        /* an error page */
      }
      if (request.status !== 202 || !answer.id) {
        failed(answer.error || (request.status === 413 ? "This image is too large." : "The upload failed."));
        return;
      }
      bar.value = 100;
      item.dataset.state = "processing";
      say(item, "Processing…");
      item.querySelector("input.media-id").value = answer.id;
      if (!(await waitReady(item, answer.id).catch(() => false))) {
        failed("This image could not be processed.");
        return;
      }
      item.dataset.state = "ready";
      bar.remove();
      say(item, "");
      renumber(box);
    });
    request.addEventListener("error", () => failed("The upload failed; check your connection."));
    const body = new FormData();
    body.append("file", file);
    request.send(body);
  };

  const take = (files) => {
    const box = composerBox();
    if (!box) return;
    for (const file of files) {
      if (box.querySelectorAll(".attachment").length >= MAX_IMAGES) break;
      if (!TYPES.includes(file.type)) continue;
      upload(box, file);
    }
  };

  document.addEventListener("change", (evt) => {
    const input = evt.target;
    if (!(input instanceof HTMLInputElement) || !input.matches("#composer .attach-file")) return;
    take([...(input.files ?? [])]);
    input.value = "";
  });

  document.addEventListener("click", (evt) => {
    const remove = evt.target instanceof Element ? evt.target.closest(".attachment-remove") : null;
    if (!remove) return;
    const box = remove.closest(".composer-media");
    remove.closest(".attachment")?.remove();
    if (box) renumber(box);
  });

  document.addEventListener("paste", (evt) => {
    if (!(evt.target instanceof Element) || !evt.target.closest("#composer")) return;
    const files = [...(evt.clipboardData?.files ?? [])].filter((f) => TYPES.includes(f.type));
    if (!files.length) return;
    evt.preventDefault();
    take(files);
  });

  document.addEventListener("dragover", (evt) => {
    const form = evt.target instanceof Element ? evt.target.closest("#composer") : null;
    if (!form || !composerBox()) return;
    evt.preventDefault();
    form.classList.add("dropping");
  });
  document.addEventListener("dragleave", (evt) => {
    if (evt.target instanceof Element) evt.target.closest("#composer")?.classList.remove("dropping");
  });
  document.addEventListener("drop", (evt) => {
    const form = evt.target instanceof Element ? evt.target.closest("#composer") : null;
    if (!form) return;
    evt.preventDefault();
    form.classList.remove("dropping");
    take([...(evt.dataTransfer?.files ?? [])]);
  });

  // Images being uploaded or processed hold the post back (the server would refuse it).
  // Captured at the document, before htmx's own listener on the form sees the submit.
  document.addEventListener("submit", (evt) => {
    const form = evt.target;
    if (!(form instanceof HTMLFormElement) || !form.classList.contains("uploading")) return;
    evt.preventDefault();
    evt.stopImmediatePropagation();
    const waiting = [...form.querySelectorAll(".attachment")].find((item) => item.dataset.state !== "ready");
    if (waiting) say(waiting, waiting.dataset.state === "failed" ? "Remove this image to post." : "Still working on this image…");
  }, true);

  /* ---------- wiring ---------- */

  const enhance = (root) => {
    placeholders(root);
    root.querySelectorAll?.("#composer .attach-button").forEach((b) => { b.hidden = false; });
    const box = root.querySelector?.("#composer .composer-media") ?? (root.matches?.("#composer") ? root.querySelector(".composer-media") : null);
    if (box) renumber(box);
  };
  document.addEventListener("htmx:load", (evt) => enhance(evt.detail?.elt ?? document));
  // Posts a live event brings are inserted by app.js, outside htmx's swaps.
  new MutationObserver((changes) => {
    for (const change of changes) {
      change.addedNodes.forEach((node) => {
        if (node instanceof Element) placeholders(node);
      });
    }
  }).observe(document.body, { childList: true, subtree: true });
  enhance(document);
})();
