(function () {
  function show(message) {
    var box = document.getElementById("script-errors");
    if (box) { box.hidden = false; box.textContent += message + "\n"; }
  }
  window.addEventListener("error", function (e) { show("error: " + e.message); });
  window.addEventListener("unhandledrejection", function (e) { show("rejection: " + e.reason); });
})();
