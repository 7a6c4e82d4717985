// Cube's UI: the only script. Pages are whole without it; with it they stay current.
//
// - A page whose <body> has data-live opens one EventSource on /ui/live for its own URL. The
//   manager sends the page's live part, rendered again, whenever a committed change altered
//   it; the script swaps it in. An idle tab makes no request but that stream.
// - A <pre data-follow=URL> gets the task's log lines from an EventSource on URL once its
//   "Follow" button is pressed.
"use strict";
(function () {
  var body = document.body;
  var dot = document.getElementById("live-dot");
  var pending = null;

  function focusedInside(el) {
    var a = document.activeElement;
    return a && a !== body && el.contains(a) && (a.tagName === "INPUT" || a.tagName === "SELECT");
  }

  function swap(html) {
    var live = document.getElementById("live");
    if (!live) return;
    // Never replace a field someone is typing in: apply when they leave it.
    if (focusedInside(live)) { pending = html; return; }
    pending = null;
    live.innerHTML = html;
    body.dataset.updated = String(Date.now());
  }

  document.addEventListener("focusout", function () {
    if (pending !== null) setTimeout(function () { if (pending !== null) swap(pending); }, 0);
  });

  if (body.dataset.live !== undefined && window.EventSource) {
    var url = "/ui/live?page=" + encodeURIComponent(location.pathname + location.search);
    var source = new EventSource(url);
    source.addEventListener("open", function () { if (dot) dot.classList.add("on"); });
    source.addEventListener("error", function () { if (dot) dot.classList.remove("on"); });
    source.addEventListener("live", function (e) { swap(e.data); });
    source.addEventListener("signed-out", function () {
      source.close();
      location.assign("/ui/sign-in?next=" + encodeURIComponent(location.pathname + location.search));
    });
  }

  var logs = document.querySelector("pre[data-follow]");
  var follow = document.getElementById("follow-logs");
  if (logs && follow && window.EventSource) {
    follow.hidden = false;
    var stream = null;
    follow.addEventListener("click", function () {
      if (stream) {
        stream.close(); stream = null;
        follow.textContent = "Follow"; follow.setAttribute("aria-pressed", "false");
        return;
      }
      logs.textContent = "";
      stream = new EventSource(logs.dataset.follow);
      follow.textContent = "Stop following"; follow.setAttribute("aria-pressed", "true");
      stream.addEventListener("line", function (e) {
        var atEnd = logs.scrollTop + logs.clientHeight >= logs.scrollHeight - 4;
        logs.appendChild(document.createTextNode(e.data + "\n"));
        if (atEnd) logs.scrollTop = logs.scrollHeight;
      });
      // The stream ends with the task's output ("end"), or breaks: either way it stops
      // (reconnecting would send the log again from its start).
      function stop() {
        if (!stream) return;
        stream.close(); stream = null;
        follow.textContent = "Follow"; follow.setAttribute("aria-pressed", "false");
      }
      stream.addEventListener("end", stop);
      stream.addEventListener("error", stop);
    });
  }
})();
