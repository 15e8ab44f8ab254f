// The heatmap toggle and opacity: show or hide every heat map overlay on the page (the study
// page's viewer, static/viewer.js, draws its own with the same controls).
function applyToggle() {
  var toggle = document.getElementById("heatmap-toggle");
  if (!toggle) { return; }
  var opacity = document.getElementById("heatmap-opacity");
  document.querySelectorAll("img.heatmap").forEach(function (img) {
    img.style.visibility = toggle.checked ? "visible" : "hidden";
    img.style.opacity = opacity ? String(Number(opacity.value) / 100) : "";
  });
}

// "Try an image": ask for the worker's answer until it comes, or say that none came in time.
function showAnswer(box, answer) {
  var status = document.getElementById("try-status");
  if (answer.state === "failed") {
    status.textContent = "Not classified: " + answer.error;
    status.className = "error";
    return;
  }
  status.textContent = "";
  var model = document.getElementById("try-model");
  model.textContent = answer.model_name + " " + answer.model_version + " · threshold " +
    answer.threshold.toFixed(3) + " on " + answer.flag_label + " · ";
  if (answer.flagged) {
    var badge = document.createElement("span");
    badge.className = "badge flag";
    badge.textContent = "FLAGGED";
    model.appendChild(badge);
  } else {
    model.appendChild(document.createTextNode("not flagged"));
  }
  model.hidden = false;
  var table = document.getElementById("try-probabilities");
  Object.keys(answer.probabilities).forEach(function (label) {
    var p = answer.probabilities[label];
    var row = table.insertRow();
    row.insertCell().textContent = label;
    var value = row.insertCell();
    value.className = "num";
    value.textContent = p.toFixed(3);
    var bar = document.createElement("span");
    bar.className = "bar";
    bar.style.width = Math.round(p * 120) + "px";
    row.insertCell().appendChild(bar);
  });
  table.hidden = false;
  if (answer.note) {
    var note = document.getElementById("try-note");
    note.textContent = answer.note;
    note.hidden = false;
  }
  if (answer.heatmap_url) {
    var heat = document.getElementById("try-heatmap");
    heat.src = answer.heatmap_url;
    heat.classList.remove("pending");
  }
  box.dataset.state = answer.state;
}

function waitForAnswer(box) {
  var url = box.dataset.answerUrl;
  var deadline = Date.now() + 1000 * Number(box.dataset.waitSeconds || 120);
  function ask() {
    fetch(url, {credentials: "same-origin", headers: {"Accept": "application/json"}})
      .then(function (response) { return response.ok ? response.json() : null; })
      .then(function (answer) {
        if (answer && answer.state !== "pending") { showAnswer(box, answer); return; }
        if (Date.now() > deadline) {
          var status = document.getElementById("try-status");
          status.textContent = "No answer from the workers after " + box.dataset.waitSeconds +
            " seconds: they may be busy or stopped. The answer will be at " + url +
            " when it comes (kept for a day).";
          status.className = "error";
          box.dataset.state = "timeout";
          return;
        }
        setTimeout(ask, 500);
      })
      .catch(function () { setTimeout(ask, 1000); });
  }
  ask();
}

document.addEventListener("DOMContentLoaded", function () {
  var toggle = document.getElementById("heatmap-toggle");
  if (toggle) {
    toggle.addEventListener("change", applyToggle);
    applyToggle();
  }
  var opacity = document.getElementById("heatmap-opacity");
  if (opacity) { opacity.addEventListener("input", applyToggle); }
  var box = document.getElementById("try-answer");
  if (box) { waitForAnswer(box); }
});
