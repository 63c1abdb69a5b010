// The home page's embed snippet, with this server's address. In a file, not inline: the
// pages' Content-Security-Policy runs scripts from this origin only (server/headers.py).
document.getElementById("snippet").textContent =
  '<script src="' + location.origin + '/static/widget.js"\n' +
  '        data-server="' + location.origin + '"\n' +
  '        data-title="Course tutor"></' + 'script>';
