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

  function typingIn(el) {
    var a = document.activeElement;
    return a && el.contains(a) && (a.tagName === "INPUT" || a.tagName === "SELECT");
  }

  // What the focused link or button is, so the same one can have the focus again once the
  // part around it was replaced (keyboard users keep their place).
  function focusKey(el) {
    var a = document.activeElement;
    if (!a || !el.contains(a)) return null;
    if (a.tagName === "A") return 'a[href="' + CSS.escape(a.getAttribute("href") || "") + '"]';
    if (a.tagName === "BUTTON" && a.form) {
      return 'form[action="' + CSS.escape(a.form.getAttribute("action") || "") + '"] button';
    }
    return null;
  }

  // Times come as UTC clock times (stable from one render to the next); shown as ages,
  // kept current here without asking the server anything.
  function age(seconds) {
    var a = Math.abs(seconds);
    var v = a < 60 ? a + "s" : a < 3600 ? Math.floor(a / 60) + "m"
      : a < 86400 ? Math.floor(a / 3600) + "h" : Math.floor(a / 86400) + "d";
    return seconds < 0 ? "in " + v : v + " ago";
  }
  function ages() {
    var now = Date.now();
    var times = document.querySelectorAll("time[data-ago]");
    for (var i = 0; i < times.length; i++) {
      var at = Date.parse(times[i].dateTime);
      if (!isNaN(at)) times[i].textContent = age(Math.round((now - at) / 1000));
    }
  }
  ages();
  setInterval(ages, 1000);

  function swap(html) {
    var live = document.getElementById("live");
    if (!live) return;
    // Never replace a field someone is typing in: apply when they leave it.
    if (typingIn(live)) { pending = html; return; }
    pending = null;
    var key = focusKey(live);
    live.innerHTML = html;
    ages();
    if (key) {
      var again = live.querySelector(key);
      if (again) again.focus();
    }
    body.dataset.updated = String(Date.now());
  }

  document.addEventListener("focusout", function () {
    if (pending !== null) setTimeout(function () { if (pending !== null) swap(pending); }, 0);
  });

  var source = null;
  function connect() {
    var url = "/ui/live?page=" + encodeURIComponent(location.pathname + location.search);
    source = new EventSource(url);
    source.addEventListener("open", function () { if (dot) dot.classList.add("on"); });
    source.addEventListener("error", function () { if (dot) dot.classList.remove("on"); });
    source.addEventListener("live", function (e) { swap(e.data); });
    source.addEventListener("signed-out", function () {
      source.close();
      location.assign("/ui/sign-in?next=" + encodeURIComponent(location.pathname + location.search));
    });
  }
  if (body.dataset.live !== undefined && window.EventSource) {
    connect();
    // A page left for another may be kept (the back/forward cache) with its stream open,
    // holding one of the few connections a browser opens to a host: close it on leaving,
    // open it again on coming back.
    window.addEventListener("pagehide", function () {
      if (source) { source.close(); source = null; }
      if (dot) dot.classList.remove("on");
    });
    window.addEventListener("pageshow", function (e) { if (e.persisted && !source) connect(); });
  }

  var logs = document.querySelector("pre[data-follow]");
  var follow = document.getElementById("follow-logs");
  if (logs && follow && window.EventSource) {
    follow.hidden = false;
    var stream = null;
    // The stream ends with the task's output ("end"), or breaks: either way it stops
    // (reconnecting would send the log again from its start).
    var stop = function () {
      if (!stream) return;
      stream.close(); stream = null;
      follow.textContent = "Follow"; follow.setAttribute("aria-pressed", "false");
    };
    window.addEventListener("pagehide", stop);
    follow.addEventListener("click", function () {
      if (stream) { stop(); return; }
      logs.textContent = "";
      stream = new EventSource(logs.dataset.follow);
      follow.textContent = "Stop following"; follow.setAttribute("aria-pressed", "true");
      stream.addEventListener("line", function (e) {
        var atEnd = logs.scrollTop + logs.clientHeight >= logs.scrollHeight - 4;
        logs.appendChild(document.createTextNode(e.data + "\n"));
        if (atEnd) logs.scrollTop = logs.scrollHeight;
      });
      stream.addEventListener("end", stop);
      stream.addEventListener("error", stop);
    });
  }
})();
