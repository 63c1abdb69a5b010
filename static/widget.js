/*
 * Studyhall chat widget loader. Embed it with one tag:
 *
 *   <script src="https://studyhall.example/static/widget.js"
 *           data-server="https://studyhall.example"   (optional: defaults to this file's origin)
 *           data-token="..."                           (optional: else a guest token is made)
 *           data-title="Physics tutor" data-course="physics-101" data-open="false"
 *           data-identity="<jwt>"                      (optional: a platform's signed identity token)
 *           data-app-id="<app id>"                     (optional: the platform's app on this server)
 *           data-identity-refresh="fnName"></script>   (optional: a global async function → a fresh jwt)
 *
 * The page can also talk to it (docs/integration.md):
 *   Studyhall.identify(jwt)                  sign in (or switch) as the platform's user; null signs out
 *   Studyhall.onIdentityExpired(async () => jwt)   asked for a fresh token when the session ends
 *   Studyhall.guestToken()                   the guest session to name in a `guest_token` claim
 *
 * It stays a classic script so the one tag works on any page, then loads the widget's
 * ES modules (and the official socket.io-client) from the Studyhall server.
 */
(function () {
  "use strict";
  var script = document.currentScript;
  if (!script || window.__studyhallWidget) return;
  window.__studyhallWidget = true;
  var src = new URL(script.src, location.href);
  var options = {
    server: (script.dataset.server || src.origin).replace(/\/$/, ""),
    token: script.dataset.token || null,
    title: script.dataset.title || "Studyhall tutor",
    course: script.dataset.course || null,
    lesson: script.dataset.lesson || null,
    open: script.dataset.open === "true",
    assets: new URL(".", src).href, // where widget.js lives: the static folder
    identity: script.dataset.identity || null,
    appId: script.dataset.appId || null,
    identityRefresh: script.dataset.identityRefresh || null,
    onIdentityExpired: null,
  };

  // The page's handle on the widget. Calls made before the widget's modules have loaded
  // only set options; afterwards they reach the widget itself.
  var widget = null;
  window.Studyhall = {
    identify: function (jwt) {
      options.identity = jwt || null;
      options.signedIn = false; // null: signed out, back to a guest
      return widget ? widget.identify(jwt) : Promise.resolve();
    },
    onIdentityExpired: function (fn) { options.onIdentityExpired = fn; },
    guestToken: function () {
      try {
        var saved = JSON.parse(localStorage.getItem("studyhall-widget:" + options.server) || "{}");
        return saved.token || null; // the widget keeps only guest sessions there
      } catch (e) { return null; }
    },
  };

  import(new URL("js/widget-app.js", options.assets).href)
    .then(function (m) { return m.mount(options); })
    .then(function (w) { widget = w; })
    .catch(function (err) {
      console.error("Studyhall widget could not start:", err);
      whatIsMissing([new URL("js/widget-app.js", options.assets).href, new URL("js/markdown.js", options.assets).href,
        options.server + "/vendor/socket.io.esm.min.js", options.server + "/vendor/markdown-it.esm.js",
        options.server + "/vendor/purify.es.mjs"])
        .then(showFailure);
    });

  // A file the widget needs could not be loaded: say so on the page, naming it (otherwise
  // the tutor just never appears and the reason is only in the network tab).
  function whatIsMissing(urls) {
    return Promise.all(urls.map(function (url) {
      return fetch(url, { cache: "no-store" }).then(
        function (res) { return res.ok ? null : url + " (HTTP " + res.status + ")"; },
        function () { return url + " (no answer)"; });
    })).then(function (list) { return list.filter(Boolean); });
  }

  function showFailure(missing) {
    var host = document.createElement("div");
    host.id = "studyhall-widget-error";
    var box = document.createElement("div");
    box.setAttribute("role", "alert");
    box.textContent = "The Studyhall tutor could not start: " + (missing.length
      ? "missing " + missing.join(", ") + ". Reinstall Studyhall on the server (pip install -e .) " +
        "or restore the files (python3 server/vendor/update.py refreshes the vendored npm bundles)."
      : "a script failed to load (the browser console names it).");
    // Styled through the CSSOM (the Content-Security-Policy allows no inline styles), in a
    // shadow root so the host page's CSS does not reach it.
    var s = box.style;
    s.position = "fixed"; s.right = "16px"; s.bottom = "16px"; s.maxWidth = "360px"; s.zIndex = "2147483647";
    s.padding = "12px 14px"; s.border = "2px solid #b42318"; s.borderRadius = "8px"; s.background = "#fef3f2";
    s.color = "#7a271a"; s.font = "14px/1.4 system-ui, sans-serif";
    host.attachShadow({ mode: "open" }).append(box);
    document.body.append(host);
  }
})();
