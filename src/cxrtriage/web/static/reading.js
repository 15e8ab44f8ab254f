// The reading room from the keyboard (the list is in templates/_keys.html, shown with "?"):
// on a study page J/K (and the arrow keys) go to the next/previous case in the order of the
// worklist the reader came from (the page's data-next-url / data-previous-url, which carry its
// filters); A/D/U save agree/disagree/uncertain through the feedback API (with the comment) and
// then open the next case; H, I, R, Z and 1-9 act on the images (static/viewer.js). On the
// worklist J/K choose a row and Enter (or O) opens it; and the page asks every few seconds how
// many flagged studies came in since it loaded, and says so without reloading itself.
(function () {
  "use strict";

  var room = document.getElementById("reading-room");
  var help = document.getElementById("keys-help");
  var VERDICT_KEYS = {a: "agree", d: "disagree", u: "uncertain"};
  var saving = false;

  function say(text, isError) {
    var status = document.getElementById("reading-status");
    if (!status) { return; }
    status.textContent = text;
    status.className = isError ? "error" : "";
  }

  function toggleHelp(show) {
    if (!help) { return; }
    help.hidden = show === undefined ? !help.hidden : !show;
  }

  // Whether the key belongs to the focused control: text and menus take every key, a slider its
  // arrows; checkboxes, buttons and the page leave the letters to the reading room.
  function typing(target, key) {
    if (!target || !target.tagName) { return false; }
    if (target.isContentEditable || target.tagName === "TEXTAREA" || target.tagName === "SELECT") { return true; }
    if (target.tagName !== "INPUT") { return false; }
    if (target.type === "range") { return key.indexOf("Arrow") === 0; }
    return ["checkbox", "radio", "button", "submit"].indexOf(target.type) < 0;
  }

  function viewers() { return window.cxrViewers || []; }

  function go(url, none) {
    if (url) { window.location.assign(url); } else { say(none); }
  }

  // --- a study page ---------------------------------------------------------------------------

  function giveVerdict(verdict) {
    if (room.dataset.hasResult !== "true") { say("This study has no result to assess.", true); return; }
    if (saving) { return; }
    saving = true;
    say("Saving " + verdict + "…");
    var comment = document.getElementById("comment");
    fetch(room.dataset.feedbackUrl, {
      method: "POST", credentials: "same-origin",
      headers: {"Content-Type": "application/json", "Accept": "application/json",
                "X-CSRF-Token": room.dataset.csrf},
      body: JSON.stringify({verdict: verdict, comment: comment ? comment.value : ""})
    }).then(function (response) {
      if (!response.ok) { throw new Error("HTTP " + response.status); }
      var radio = document.getElementById("verdict-" + verdict);
      if (radio) { radio.checked = true; }
      room.dataset.saved = verdict;
      if (room.dataset.nextUrl) {
        say("Saved: " + verdict + ". Next case…");
        window.location.assign(room.dataset.nextUrl);
      } else {
        say("Saved: " + verdict + ". That was the last case in this list (W: the worklist).");
        room.dataset.finished = "true";
      }
    }).catch(function () {
      say("Not saved: the server did not take the verdict. Try again.", true);
    }).then(function () { saving = false; });
  }

  function studyKey(event) {
    var key = event.key;
    var lower = key.length === 1 ? key.toLowerCase() : key;
    if (lower === "j" || key === "ArrowRight" || key === "ArrowDown") {
      go(room.dataset.nextUrl, "That is the last case in this list.");
    } else if (lower === "k" || key === "ArrowLeft" || key === "ArrowUp") {
      go(room.dataset.previousUrl, "That is the first case in this list.");
    } else if (VERDICT_KEYS[lower]) {
      giveVerdict(VERDICT_KEYS[lower]);
    } else if (lower === "w") {
      window.location.assign(room.dataset.worklistUrl || "/");
    } else if (lower === "h") {
      var toggle = document.getElementById("heatmap-toggle");
      if (toggle) { toggle.click(); }
    } else if (lower === "i") {
      viewers().forEach(function (v) { v.invert(); });
    } else if (lower === "r") {
      viewers().forEach(function (v) { v.reset(); });
    } else if (lower === "z") {
      viewers().forEach(function (v) { v.oneToOne(); });
    } else if (/^[1-9]$/.test(key)) {
      viewers().forEach(function (v) { v.presetByNumber(Number(key)); });
    } else {
      return false;
    }
    return true;
  }

  // --- the worklist -----------------------------------------------------------------------------

  var chosen = -1;

  function rows() { return Array.prototype.slice.call(document.querySelectorAll("#worklist tbody tr[data-study-uid]")); }

  function choose(step) {
    var all = rows();
    if (!all.length) { return; }
    chosen = clamp(chosen + step, 0, all.length - 1);
    all.forEach(function (row, index) { row.classList.toggle("chosen", index === chosen); });
    all[chosen].scrollIntoView({block: "nearest"});
  }

  function clamp(v, low, high) { return v < low ? low : v > high ? high : v; }

  function worklistKey(event) {
    var key = event.key;
    var lower = key.length === 1 ? key.toLowerCase() : key;
    if (lower === "j" || key === "ArrowDown") {
      choose(1);
    } else if (lower === "k" || key === "ArrowUp") {
      choose(-1);
    } else if (key === "Enter" || lower === "o") {
      var all = rows();
      var row = all[chosen < 0 ? 0 : chosen];
      var link = row && row.querySelector("a");
      if (link) { window.location.assign(link.href); }
    } else {
      return false;
    }
    return true;
  }

  function watchUpdates() {
    var box = document.getElementById("worklist-updates");
    if (!box) { return; }
    var url = box.dataset.url + "?since=" + encodeURIComponent(box.dataset.since);
    var every = 1000 * Number(box.dataset.seconds || 5);
    var title = document.title;
    document.getElementById("show-new").href = window.location.href;
    function ask() {
      if (document.hidden) { setTimeout(ask, every); return; }
      fetch(url, {credentials: "same-origin", headers: {"Accept": "application/json"}})
        .then(function (response) { return response.ok ? response.json() : null; })
        .then(function (answer) {
          if (answer && answer.new_flagged > 0) {
            var n = answer.new_flagged;
            document.getElementById("new-flagged-count").textContent =
              n + " new flagged stud" + (n === 1 ? "y" : "ies") + " since this page loaded";
            box.dataset.count = String(n);
            box.hidden = false;
            document.title = "(" + n + ") " + title;
          }
        })
        .catch(function () { /* the next poll tries again */ })
        .then(function () { setTimeout(ask, every); });
    }
    setTimeout(ask, every);
  }

  // --- both -------------------------------------------------------------------------------------

  document.addEventListener("keydown", function (event) {
    if (!room || event.ctrlKey || event.metaKey || event.altKey || event.defaultPrevented) { return; }
    if (typing(event.target, event.key)) {
      if (event.key === "Escape") { event.target.blur(); }
      return;
    }
    if (event.key === "?") { toggleHelp(); event.preventDefault(); return; }
    if (event.key === "Escape") { toggleHelp(false); return; }
    var handled = room.dataset.page === "study" ? studyKey(event) : worklistKey(event);
    if (handled) { event.preventDefault(); }
  });

  var button = document.getElementById("keys-button");
  if (button) { button.addEventListener("click", function () { toggleHelp(); button.blur(); }); }
  if (room && room.dataset.page === "worklist") { watchUpdates(); }
})();
