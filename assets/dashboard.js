// The dashboard works without JavaScript; this only refreshes it every 10 seconds while the
// tab is visible.
(function () {
  "use strict";
  var every = 10000;
  setInterval(function () {
    if (document.visibilityState === "visible") {
      window.location.reload();
    }
  }, every);
})();
