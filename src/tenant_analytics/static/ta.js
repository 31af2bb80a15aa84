/* tenant-analytics snippet. Embed it with:
 *   <script src="https://API-HOST/static/ta.js" data-tenant="1" defer></script>
 * It sets no cookie, uses no storage and makes up no identifier: each event is one
 * request on its own (the server stores a keyed hash of its address, never the address).
 */
(function () {
  "use strict";

  function positiveInteger(text) {
    // Digits only: parseInt would take "12abc" for tenant 12.
    const value = /^\s*\d{1,15}\s*$/.test(text || "") ? Number(text) : 0;
    return value > 0 ? value : 0;
  }

  // Included twice: the first copy already counts this page. (Checked by its API, as an
  // element with id="tenantAnalytics" is window.tenantAnalytics too.)
  if (window.tenantAnalytics && typeof window.tenantAnalytics.track === "function") return;
  const script = document.currentScript;
  const tenantId = positiveInteger(script && script.getAttribute("data-tenant"));
  if (!tenantId) return;
  let url;
  try {
    // The API is wherever this file was loaded from.
    url = new URL("/api/analytics/track", script.src).href;
  } catch (e) {
    return;
  }

  const CLICK_TYPES = ["click_whatsapp", "click_call", "click_toggle_currency", "product_click"];
  const WHATSAPP = /^(https:\/\/(wa\.me|api\.whatsapp\.com)\/|whatsapp:\/\/)/i;

  function send(type, metadata) {
    let body;
    try {
      const event = { tenant_id: tenantId, event_type: String(type) };
      if (metadata && typeof metadata === "object" && Object.keys(metadata).length) {
        event.metadata = metadata;
      }
      body = JSON.stringify(event);
    } catch (e) {
      return; // metadata JSON cannot carry (a cycle, a BigInt)
    }
    try {
      // A text/plain beacon needs no CORS preflight and outlives the page navigating away.
      if (navigator.sendBeacon && navigator.sendBeacon(url, body)) return;
    } catch (e) {
      // fall back to fetch
    }
    try {
      // keepalive: the request outlives the page, as a beacon does; text/plain keeps it
      // a simple request (no preflight). No credentials: nothing of the visitor to send.
      fetch(url, {
        method: "POST",
        body: body,
        keepalive: true,
        mode: "cors",
        credentials: "omit",
        headers: { "Content-Type": "text/plain" },
      }).catch(function () {});
    } catch (e) {
      // no fetch either: analytics must never break the page
    }
  }

  // Capture phase: a page's own handler that stops propagation cannot hide the tap.
  document.addEventListener(
    "click",
    function (event) {
      try {
        const target = event.target;
        if (!target || !target.closest) return;
        const link = target.closest("a[href]");
        const tagged = target.closest("[data-ta-event]");
        const linkType = link && !link.hasAttribute("data-ta-event") && typeOfLink(link);
        const metadata = {};
        let type, element;
        // A WhatsApp or phone link inside a tagged element (an order button on a
        // product card) is the tap the visitor made: the nearer element wins.
        if (linkType && !(tagged && link.contains(tagged))) {
          type = linkType;
          element = link;
        } else if (tagged) {
          type = tagged.getAttribute("data-ta-event");
          element = tagged;
          if (CLICK_TYPES.indexOf(type) < 0) return;
          const productId = positiveInteger(tagged.getAttribute("data-ta-product-id"));
          if (type === "product_click" && productId) metadata.product_id = productId;
        } else {
          return;
        }
        // On the element or around it (a section): where on the page the tap was.
        const located = element.closest("[data-ta-location]");
        const location = located && located.getAttribute("data-ta-location").trim().slice(0, 100);
        if (location) metadata.button_location = location;
        send(type, metadata);
      } catch (e) {
        // never break the page's own click handling
      }
    },
    true
  );

  function typeOfLink(link) {
    const href = (link.getAttribute("href") || "").trim();
    if (WHATSAPP.test(href)) return "click_whatsapp";
    if (/^tel:/i.test(href)) return "click_call";
    return null;
  }

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
  document.addEventListener("visibilitychange", function () {
    if (document.visibilityState === "visible") resume();
    else flush();
  });
  window.addEventListener("pagehide", flush);
  window.addEventListener("pageshow", resume); // back from the back/forward cache
  resume();

  window.tenantAnalytics = {
    // Any event type; the server validates it.
    track: function (type, metadata) {
      send(type, metadata);
    },
  };
  send("pageview");
})();
