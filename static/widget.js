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
    .catch(function (err) { console.error("Studyhall widget could not start:", err); });
})();
