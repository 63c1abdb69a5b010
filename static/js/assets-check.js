// Says ON the page when its scripts could not be loaded. Without it a missing file (the
// socket.io-client bundle, a module) leaves "Loading…" forever and the reason only shows
// in the browser's network tab. A classic script loaded before the page's module: when the
// module (or anything it imports) fails to load, the browser fires `error` at its <script>
// element; this follows the module's imports to find which file is missing and shows it
// with the fix.
// In a file, not inline: the pages' Content-Security-Policy (server/headers.py).
(function () {
  "use strict";
  var shown = false;

  // Fetch a module and, for the page's own modules, everything it imports (the socket.io-client
  // bundle is reached through client.js); collect what does not load.
  function crawl(url, seen, missing) {
    if (seen.has(url)) return Promise.resolve();
    seen.add(url);
    return fetch(url, { cache: "no-store" }).then(function (res) {
      if (!res.ok) {
        return res.json().then(
          function (body) { return body && body.error && body.error.message; },
          function () { return null; }
        ).then(function (hint) { missing.push({ url: url, status: res.status, hint: hint }); });
      }
      var u = new URL(url);
      if (u.origin !== location.origin || u.pathname.indexOf("/static/") !== 0) return null;
      return res.text().then(function (text) {
        var re = /(?:\bfrom\s*|\bimport\s*\(?\s*)["']([^"']+)["']/g;
        var next = [];
        var m;
        while ((m = re.exec(text))) next.push(new URL(m[1], url).href);
        return Promise.all(next.map(function (n) { return crawl(n, seen, missing); }));
      });
    }, function () { missing.push({ url: url, status: 0, hint: "the server did not answer" }); });
  }

  function show(missing) {
    var box = document.createElement("div");
    box.className = "asset-error";
    box.setAttribute("role", "alert");
    var title = document.createElement("strong");
    title.textContent = "This page cannot start: a file it needs could not be loaded.";
    box.append(title);
    var list = document.createElement("ul");
    missing.forEach(function (m) {
      var item = document.createElement("li");
      var path = new URL(m.url, location.href).pathname;
      item.textContent = "Missing: " + path + (m.status ? " (HTTP " + m.status + ")" : "") + (m.hint ? ". " + m.hint : "");
      list.append(item);
    });
    if (!missing.length) {
      var item = document.createElement("li");
      item.textContent = "A script this page imports failed to load; the browser console names it.";
      list.append(item);
    }
    box.append(list);
    var fix = document.createElement("p");
    var paths = missing.map(function (m) { return new URL(m.url, location.href).pathname; });
    var fixes = [];
    if (paths.some(function (p) { return p.indexOf("/vendor/") === 0; })) {
      fixes.push("The socket.io-client bundle ships with Studyhall in server/vendor/socket.io-client/: " +
        "reinstall Studyhall (pip install -e .) or run python3 server/vendor/update.py (fetches it from npm).");
    }
    if (!paths.length || paths.some(function (p) { return p.indexOf("/vendor/") !== 0; })) {
      fixes.push("The pages' files come from static/ in the Studyhall checkout (or STUDYHALL_STATIC_DIR): " +
        "restore what is missing (git checkout -- static/).");
    }
    fix.textContent = fixes.join(" ");
    box.append(fix);
    var main = document.getElementById("main");
    if (main) main.replaceChildren(box); else document.body.prepend(box);
  }

  window.addEventListener("error", function (event) {
    var el = event.target;
    if (shown || !el || el.tagName !== "SCRIPT") return;
    shown = true;
    var missing = [];
    crawl(el.src, new Set(), missing).then(function () {
      if (document.readyState === "loading") {
        document.addEventListener("DOMContentLoaded", function () { show(missing); });
      } else {
        show(missing);
      }
    });
  }, true);
})();
