/*
 * Studyhall chat widget loader. Embed it with one tag:
 *
 *   <script src="https://studyhall.example/static/widget.js"
 *           data-server="https://studyhall.example"   (optional: defaults to this file's origin)
 *           data-token="..."                           (optional: else a guest token is made)
 *           data-title="Physics tutor" data-course="physics-101" data-open="false"></script>
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
  };
  import(new URL("js/widget-app.js", options.assets).href)
    .then(function (m) { return m.mount(options); })
    .catch(function (err) {
      console.error("Studyhall widget could not start:", err);
      whatIsMissing([new URL("js/widget-app.js", options.assets).href, options.server + "/vendor/socket.io.esm.min.js"])
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
        "or restore the files (python3 server/vendor/update.py refreshes the socket.io-client bundle)."
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
