/* tenant-analytics snippet. Embed it with:
 *   <script src="https://API-HOST/static/ta.js" data-tenant="1" async></script>
 * It sets no cookie, uses no storage and makes up no identifier of the visitor: each
 * event is one request on its own (the server stores a keyed hash of its address, never
 * the address), with a random key of the event's own so that its resends count once.
 */
(function () {
  "use strict";

  function positiveInteger(text) {
    // Digits only: parseInt would take "12abc" for tenant 12.
    const value = /^\s*\d{1,15}\s*$/.test(text || "") ? Number(text) : 0;
    return value > 0 ? value : 0;
  }

  // Included twice: the first copy already counts this page. (Known by its mark: an
  // element with id="tenantAnalytics" is window.tenantAnalytics too, and a page's stub
  // that queues calls until the snippet runs has a track() of its own.)
  const before = window.tenantAnalytics;
  if (before && before.snippet === "tenant-analytics") {
    // One tenant per page (track() is one global): a tag for another is said, not sent.
    // A module copy does not know its tag (no currentScript): any tag on the page then.
    const tags = document.currentScript
      ? [document.currentScript]
      : document.querySelectorAll('script[data-tenant][src*="/ta.js"]');
    for (let i = 0; i < tags.length; i++) {
      const other = positiveInteger(tags[i].getAttribute("data-tenant"));
      if (other && other !== before.tenant && window.console) {
        console.warn(
          "tenant-analytics: this page counts for tenant " + before.tenant +
            "; the tag for tenant " + other + " is ignored (one tenant per page)"
        );
        break;
      }
    }
    return;
  }
  // The page's stub becomes the API itself: code that kept a reference to it still sends.
  const stub = before && Array.isArray(before.q) ? before : null;
  const queued = stub ? stub.q.slice(0, 100) : [];
  // currentScript is null in a module or a callback: then the tag that names a tenant.
  const script =
    document.currentScript || document.querySelector('script[data-tenant][src*="/ta.js"]');
  const tenantId = positiveInteger(script && script.getAttribute("data-tenant"));
  if (!tenantId) return;
  let url;
  try {
    // The API is where this file was loaded from: under the path before its static/ta.js
    // (an API served at /stats), else at the host's root (a copy served elsewhere).
    const src = new URL(script.src);
    const served = src.pathname.match(/^(.*)\/static\/ta\.js$/);
    url = src.origin + (served ? served[1] : "") + "/api/analytics/track";
  } catch (e) {
    return;
  }

  const CLICK_TYPES = ["click_whatsapp", "click_call", "click_toggle_currency", "product_click"];
  // Chat links in every form WhatsApp gives out (www. or not, http or https), and
  // wa.link, the short links many shops print.
  const WHATSAPP_HOSTS = [
    "wa.me",
    "wa.link",
    "api.whatsapp.com",
    "web.whatsapp.com",
    "chat.whatsapp.com",
  ];
  // Taps on one element this close together are one tap made impatiently (a chat link
  // that is slow to open), not a second lead.
  const REPEAT_MS = 1000;

  // An event's own fields (the store's), which track() takes as its third argument.
  const FIELDS = [
    "price",
    "currency",
    "product_slug",
    "product_name",
    "session_id",
    "user_id",
    "source",
    "error_message",
    "idempotency_key",
  ];

  // Half up on the digits JSON would send, as the server rounds a beacon's value: 1.005
  // is 1.01, where its binary value times 100 (100.49999...) would round down.
  function toCents(price) {
    const digits = /^(-?)(\d+)\.(\d\d)(\d)\d*$/.exec(String(price));
    if (!digits) return Math.round(price * 100) / 100; // two decimals at most, or 1e-7
    const cents = Number(digits[2] + digits[3]) + (digits[4] >= "5" ? 1 : 0);
    return Number(digits[1] + cents / 100);
  }

  function send(type, metadata, fields) {
    let body;
    try {
      const event = { tenant_id: tenantId, event_type: String(type) };
      if (metadata && typeof metadata === "object" && Object.keys(metadata).length) {
        event.metadata = metadata;
      }
      if (fields && typeof fields === "object") {
        FIELDS.forEach(function (name) {
          if (fields[name] !== undefined) event[name] = fields[name];
        });
        // A total computed in JavaScript carries float noise (35.400000000000006),
        // which the API refuses as more than two decimals: the cents are meant.
        if (typeof event.price === "number" && !isFinite(event.price)) {
          // A total the page could not compute (NaN): the sale counts, without a price
          // (JSON would send null, and a currency then with no price to go with).
          if (window.console) console.warn("tenant-analytics: price " + event.price + " not sent");
          delete event.price;
          delete event.currency;
        }
        if (typeof event.price === "number") event.price = toCents(event.price);
      }
      if (event.idempotency_key === undefined) event.idempotency_key = randomKey();
      body = JSON.stringify(event);
    } catch (e) {
      return; // metadata JSON cannot carry (a cycle, a BigInt)
    }
    deliver({ body: body, attempts: 0, since: Date.now(), mayBeStored: false, timer: null });
  }

  function randomKey() {
    const bytes = new Uint8Array(16);
    if (window.crypto && crypto.getRandomValues) crypto.getRandomValues(bytes);
    else for (let i = 0; i < 16; i++) bytes[i] = Math.floor(Math.random() * 256);
    let key = "ta-";
    for (let i = 0; i < 16; i++) key += (bytes[i] < 16 ? "0" : "") + bytes[i].toString(16);
    return key;
  }

  // keepalive: the request outlives the page, as a beacon does; text/plain keeps it a
  // simple request (no preflight). No credentials: nothing of the visitor to send.
  const POST = {
    method: "POST",
    keepalive: true,
    mode: "cors",
    credentials: "omit",
    headers: { "Content-Type": "text/plain" },
  };
  // A fetch that outlives the page, whose answer the page can read (a beacon's it
  // cannot): where a browser has none, beacons, unanswered as before.
  const answered = (function () {
    try {
      return typeof fetch === "function" && new Request(url, POST).keepalive === true;
    } catch (e) {
      return false;
    }
  })();

  // A send that failed is tried again, at most four times, when that cannot count it
  // twice: a 429 (nothing stored) after its Retry-After; one made offline (it never
  // left) once the browser is back online; one that may have been stored (a 502/503/504,
  // the server down, an answer lost as the signal went) only while the server still
  // knows the event's key (IDEMPOTENCY_WINDOW_SECONDS, 5 s by default), however it
  // fails after. Waits are spread at random, so a tenant's visitors do not all come
  // back in the same second.
  const RETRIES = 4;
  const KEY_KNOWN_MS = 4000;
  const failed = [];

  function deliver(send) {
    if (!answered || document.visibilityState === "hidden") {
      beacon(send.body);
      return;
    }
    const offline = navigator.onLine === false; // then the request never leaves
    try {
      fetch(url, Object.assign({ body: send.body }, POST)).then(
        function (response) {
          const status = response.status;
          if (status === 429) {
            retryLater(send, Number(response.headers.get("Retry-After")) || 1);
          } else if (status === 502 || status === 503 || status === 504) {
            send.mayBeStored = true;
            retryLater(send, 0);
          }
        },
        function () {
          if (!offline) send.mayBeStored = true;
          if (send.mayBeStored) retryLater(send, 0);
          else if (failed.length < 100) failed.push(send); // never left: sent back online
        }
      );
    } catch (e) {
      beacon(send.body);
    }
  }

  function beacon(body) {
    try {
      // A text/plain beacon needs no CORS preflight and outlives the page navigating away.
      if (navigator.sendBeacon && navigator.sendBeacon(url, body)) return;
    } catch (e) {
      // fall back to fetch
    }
    try {
      fetch(url, Object.assign({ body: body }, POST)).catch(function () {});
    } catch (e) {
      // no fetch either: analytics must never break the page
    }
  }

  function retryLater(send, seconds) {
    send.attempts += 1;
    if (send.attempts > RETRIES || failed.length >= 100) return; // given up on
    const backoff = Math.pow(2, send.attempts - 1) * (0.5 + Math.random()); // 0.5 to 12 s
    const wait = Math.min(Math.max(seconds * (1 + Math.random() / 2), backoff), 60) * 1000;
    if (send.mayBeStored && Date.now() + wait - send.since > KEY_KNOWN_MS) return;
    send.timer = setTimeout(function () {
      resend(send, deliver);
    }, wait);
    failed.push(send);
  }

  function resend(send, how) {
    const at = failed.indexOf(send);
    if (at < 0) return;
    failed.splice(at, 1);
    clearTimeout(send.timer);
    send.timer = null;
    how(send);
  }

  function resendAll(how) {
    failed.slice().forEach(function (send) {
      resend(send, how);
    });
  }

  // Only what waited for it: one on a timer (a Retry-After, a send that may have been
  // stored) keeps its time.
  window.addEventListener("online", function () {
    failed.slice().forEach(function (send) {
      if (send.timer) return;
      resend(send, function () {
        send.since = Date.now(); // it was never sent: the server's window starts now
        deliver(send);
      });
    });
  });

  // The tap's element and its ancestors, nearest first, through open shadow roots (a
  // chat widget's button).
  function pathOf(event) {
    if (event.composedPath) return event.composedPath();
    return ancestry(event.target);
  }

  // ``node`` and what holds it, out of open shadow roots too (to their host).
  function ancestry(node) {
    const path = [];
    for (; node; node = node.parentNode || node.host) path.push(node);
    return path;
  }

  function isElement(node) {
    return node && node.nodeType === 1;
  }

  // The attribute's value on path[from] or its nearest ancestor that has it.
  function nearest(path, from, attribute) {
    for (let i = from; i < path.length; i++) {
      if (isElement(path[i]) && path[i].hasAttribute(attribute)) {
        return path[i].getAttribute(attribute);
      }
    }
    return null;
  }

  // What a tap on path[at] says of itself, from the element or around it (a product
  // card, a section).
  function tapMetadata(type, path, at) {
    const metadata = {};
    const productId = positiveInteger(nearest(path, at, "data-ta-product-id"));
    if (type === "product_click" && productId) metadata.product_id = productId;
    // Cut by characters, not UTF-16 units: half an emoji is invalid Unicode, a 422.
    const label = (nearest(path, at, "data-ta-location") || "").trim();
    const location = Array.from(label).slice(0, 100).join("");
    if (location) metadata.button_location = location;
    return metadata;
  }

  // An SVG link may carry its address as SVG 1.1 wrote it, xlink:href.
  function hrefOf(node) {
    const href = node.getAttribute("href");
    return href !== null ? href : node.getAttributeNS("http://www.w3.org/1999/xlink", "href");
  }

  function typeOfLink(link) {
    const href = (hrefOf(link) || "").trim();
    if (/^whatsapp:/i.test(href)) return "click_whatsapp";
    if (/^tel:/i.test(href)) return "click_call";
    // Android's intent links name the app they open.
    if (/^intent:/i.test(href)) {
      const whatsapp = /;(scheme=whatsapp|package=com\.whatsapp(\.w4b)?);/i;
      return whatsapp.test(href) ? "click_whatsapp" : null;
    }
    let parsed;
    try {
      parsed = new URL(href, document.baseURI);
    } catch (e) {
      return null;
    }
    if (parsed.protocol !== "https:" && parsed.protocol !== "http:") return null;
    const host = parsed.hostname.toLowerCase().replace(/^www\./, "");
    if (WHATSAPP_HOSTS.indexOf(host) >= 0) return "click_whatsapp";
    if (host === "whatsapp.com" && /^\/send/i.test(parsed.pathname)) return "click_whatsapp";
    return null;
  }

  // A tap on a <label> is followed, in the same task, by the browser's click on its
  // control: one tap, counted once (whichever of the two is tagged).
  let justCounted = null;
  let followingClick = null;
  let lastCounted = { element: null, at: 0 };

  // Whether this tap on ``element`` comes less than REPEAT_MS after the last one counted,
  // on the same element (so a stream of taps counts one a second); remembers it if not.
  function isRepeat(element) {
    const now = performance.now();
    if (element === lastCounted.element && now - lastCounted.at < REPEAT_MS) return true;
    lastCounted = { element: element, at: now };
    return false;
  }

  // A choice in a tagged <select> (a currency picker) is counted when it changes, not
  // on the clicks that open the list and pick from it, nor on a tap on its label when
  // the choice will find the label (around the select, or by select.labels).
  let tappedLabel = null;

  function isChoosing(path, upTo) {
    for (let i = 0; i <= upTo && i < path.length; i++) {
      const node = path[i];
      if (!isElement(node)) continue;
      if (/^(SELECT|OPTION)$/.test(node.tagName)) return true;
      const control = node.tagName === "LABEL" && node.control;
      if (control && control.tagName === "SELECT") {
        if (node.contains(control)) return true;
        if (control.labels) {
          tappedLabel = node; // of several labels, the choice is this one's
          return true;
        }
      }
    }
    return false;
  }

  function onTap(event) {
    try {
      // The main button's click; a middle click only on a link (it opens a new tab).
      const middle = event.type === "auxclick";
      if (middle ? event.button !== 1 : event.button) return;
      let link = null;
      let tagged = null;
      let linkType = null;
      let taggedLinkType = null;
      const path = pathOf(event);
      for (let i = 0; i < path.length && !tagged; i++) {
        const node = path[i];
        if (!isElement(node)) continue;
        // A type not for taps (or none) leaves the element to what else it is.
        if (CLICK_TYPES.indexOf(node.getAttribute("data-ta-event")) >= 0) {
          tagged = node;
          // A tagged WhatsApp or phone link is that tap too (a product's "order" link).
          if (hrefOf(node) !== null) taggedLinkType = typeOfLink(node);
        } else if (!link && hrefOf(node) !== null) {
          linkType = typeOfLink(node);
          if (linkType) link = node;
        }
      }
      // The nearer wins: a WhatsApp link inside a tagged product card is the tap made.
      const element = link || tagged;
      if (!element || (middle && !link && !taggedLinkType)) return;
      if (element === justCounted || event.target === followingClick) return;
      if (!link && isChoosing(path, path.indexOf(tagged))) return;
      if (isRepeat(element)) return;
      const type = link ? linkType : tagged.getAttribute("data-ta-event");
      const metadata = tapMetadata(type, path, path.indexOf(element));
      const location = metadata.button_location;
      justCounted = element;
      followingClick = null;
      for (let i = 0; i < path.length; i++) {
        if (isElement(path[i]) && path[i].tagName === "LABEL") {
          followingClick = path[i].control || null;
          break;
        }
      }
      setTimeout(function () {
        justCounted = null;
        followingClick = null;
      }, 0);
      send(type, metadata);
      if (!link && taggedLinkType && taggedLinkType !== type) {
        send(taggedLinkType, location ? { button_location: location } : null);
      }
    } catch (e) {
      // never break the page's own click handling
    }
  }

  // Counts a choice for the nearest tagged element of ``path``; false if none is.
  function countChoice(path) {
    for (let i = 0; i < path.length; i++) {
      const type = isElement(path[i]) && path[i].getAttribute("data-ta-event");
      if (CLICK_TYPES.indexOf(type) < 0) continue;
      // Arrow keys on a closed list choose at each step: one choice a second.
      if (!isRepeat(path[i])) send(type, tapMetadata(type, path, i));
      return true;
    }
    return false;
  }

  function onChoice(event) {
    try {
      const path = pathOf(event);
      const select = path[0];
      if (!isElement(select) || select.tagName !== "SELECT") return;
      if (countChoice(path)) return;
      // Or a tagged label that names the select from elsewhere (<label for=…>): the one
      // tapped first, if it is one of them.
      const labels = Array.prototype.slice.call(select.labels || []);
      if (labels.indexOf(tappedLabel) > 0) labels.unshift(tappedLabel);
      for (let i = 0; i < labels.length; i++) {
        if (countChoice(ancestry(labels[i]))) return;
      }
    } catch (e) {
      // never break the page's own form handling
    }
  }

  // Capture phase on window, the first to see a tap: a page's handler that stops it
  // on the element or the document cannot hide it.
  window.addEventListener("click", onTap, true);
  window.addEventListener("auxclick", onTap, true); // a middle click opens a new tab
  // A choice fires input, then change: the one counted, the other a repeat. Only input
  // crosses shadow roots (it is composed); change alone comes from some scripts.
  window.addEventListener("input", onChoice, true);
  window.addEventListener("change", onChoice, true);

  // Time on page: only while the page is visible, a background tab is not a visit.
  let visibleMs = 0;
  let visibleSince = null;

  function resume() {
    if (document.visibilityState === "visible" && visibleSince === null) {
      visibleSince = performance.now();
    }
  }

  function flush() {
    if (visibleSince !== null) visibleMs += performance.now() - visibleSince;
    visibleSince = null;
    const seconds = Math.round(visibleMs / 100) / 10;
    visibleMs = 0; // shown again later, the page sends only the new time
    if (seconds > 0) send("time_on_page", { seconds: seconds });
  }

  // Hidden is the last moment a page is sure to see (mobile browsers may never fire
  // unload); pagehide covers navigations that do not report hidden first.
  function leaving() {
    // The last sure chance for the sends that failed; offline, they are lost either way.
    if (navigator.onLine !== false) {
      resendAll(function (send) {
        beacon(send.body);
      });
    }
    flush();
  }
  document.addEventListener("visibilitychange", function () {
    if (document.visibilityState === "visible") resume();
    else leaving();
  });
  window.addEventListener("pagehide", leaving);
  window.addEventListener("pageshow", function (event) {
    resume();
    if (event.persisted) send("pageview"); // back from the back/forward cache: seen again
  });

  // When the page on screen now was shown: this file may run seconds after (async, a
  // slow API host), and the visit began before. From its response (until then the page
  // before was on screen, and counts the wait), its activation if prerendered, or when
  // it was last brought forward. Only browsers that record that last (Chromium) can
  // tell a tab opened in the background; elsewhere, from now.
  function shownSince() {
    try {
      const observer = window.PerformanceObserver;
      const recorded = (observer && observer.supportedEntryTypes) || [];
      const navigation = performance.getEntriesByType("navigation")[0];
      if (recorded.indexOf("visibility-state") < 0 || !navigation) return performance.now();
      let since = Math.max(navigation.responseStart || 0, navigation.activationStart || 0);
      performance.getEntriesByType("visibility-state").forEach(function (entry) {
        if (entry.name === "visible") since = Math.max(since, entry.startTime);
      });
      return since;
    } catch (e) {
      return performance.now();
    }
  }
  if (document.visibilityState === "visible") visibleSince = shownSince();

  // data-spa on the tag: a single-page app's move to a new path is a page view, and the
  // time on the route it left is sent. A redirect (replaceState), a hash or a query
  // string changed on the same path are the same page.
  if (script.hasAttribute("data-spa") && window.history) {
    let path = location.pathname;
    const routed = function () {
      if (location.pathname === path) return;
      path = location.pathname;
      flush();
      resume();
      send("pageview");
    };
    const wrap = function (name, after) {
      const original = history[name];
      if (typeof original !== "function") return;
      history[name] = function () {
        const result = original.apply(this, arguments);
        try {
          after();
        } catch (e) {
          // the app's navigation goes on whatever happens here
        }
        return result;
      };
    };
    wrap("pushState", routed);
    wrap("replaceState", function () {
      path = location.pathname;
    });
    window.addEventListener("popstate", routed);
  }

  const api = stub || {};
  api.snippet = "tenant-analytics";
  api.tenant = tenantId;
  api.q = [];
  // Any event type; the server validates it. A prerendered page's calls wait, as its
  // stub's queued ones do, until it is shown: until then nobody has seen it.
  api.track = function (type, metadata, fields) {
    if (!document.prerendering) send(type, metadata, fields);
    else if (queued.length < 100) queued.push([type, metadata, fields]);
  };
  window.tenantAnalytics = api;
  function viewed() {
    send("pageview");
    // Then the calls the page's stub queued before the snippet ran, as they were made.
    queued.forEach(function (args) {
      if (args) send(args[0], args[1], args[2]);
    });
  }
  // A page prerendered in case the visitor comes is not seen until it is shown.
  if (document.prerendering) {
    document.addEventListener("prerenderingchange", viewed);
  } else {
    viewed();
  }
})();
