// The heatmap toggle: shows or hides every heat map overlay on the page.
document.addEventListener("DOMContentLoaded", function () {
  var toggle = document.getElementById("heatmap-toggle");
  if (!toggle) { return; }
  function apply() {
    document.querySelectorAll("img.heatmap").forEach(function (img) {
      img.style.visibility = toggle.checked ? "visible" : "hidden";
    });
  }
  toggle.addEventListener("change", apply);
  apply();
});
