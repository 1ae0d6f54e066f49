// Say so when a live part could not be refreshed (the registry or the dashboard is down),
// instead of leaving numbers on the page that look current but are not.
(function () {
  function mark(text) {
    var note = document.getElementById("stale");
    if (note) {
      note.textContent = text;
      note.hidden = !text;
    }
  }
  document.addEventListener("htmx:responseError", function (event) {
    var status = event.detail.xhr ? event.detail.xhr.status : "?";
    mark("Could not refresh (HTTP " + status + "): what is shown may be out of date.");
  });
  document.addEventListener("htmx:sendError", function () {
    mark("The dashboard does not answer: what is shown may be out of date.");
  });
  document.addEventListener("htmx:afterSwap", function () {
    mark("");
  });
})();
