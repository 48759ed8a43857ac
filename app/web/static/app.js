// Assay dashboard: live updates without reloading, and a confirmation before cancelling.
// The evaluation page listens to the service's server-sent events when it offers them (each
// event: fetch the page's live fragment again); when EventSource fails it polls the fragment.
(function () {
  "use strict";
  var POLL_MS = 1500;

  function swap(target, url, onDone) {
    fetch(url, { credentials: "same-origin", headers: { "Accept": "text/html" } })
      .then(function (r) {
        if (r.redirected || !r.ok) { throw new Error("status " + r.status); }
        return r.text();
      })
      .then(function (html) {
        // Keep focus where it was when the focused element survives the swap.
        var focused = document.activeElement && document.activeElement.id;
        target.innerHTML = html;
        if (focused) { var el = document.getElementById(focused); if (el) { el.focus(); } }
        onDone(true);
      })
      .catch(function () { onDone(false); });
  }

  function finished(target) {
    var inner = target.querySelector("[data-terminal]");
    return inner && inner.getAttribute("data-terminal") === "true";
  }

  function poll(target, url, isDone) {
    var failures = 0;
    function tick() {
      if (isDone()) { return; }
      swap(target, url, function (ok) {
        failures = ok ? 0 : failures + 1;
        if (failures < 10 && !isDone()) { setTimeout(tick, POLL_MS * (1 + failures)); }
      });
    }
    setTimeout(tick, POLL_MS);
  }

  function liveEvaluation(target) {
    var url = target.getAttribute("data-live");
    var stream = target.getAttribute("data-stream");
    var isDone = function () { return finished(target); };
    if (isDone()) { return; }
    if (!stream || !window.EventSource) { poll(target, url, isDone); return; }
    var source = new EventSource(stream, { withCredentials: true });
    var pending = false;
    // Every event of the stream is followed by an `evaluation` message (the evaluation as it
    // now is): one refresh per such message.
    source.addEventListener("evaluation", function () {
      if (pending) { return; }
      pending = true;
      swap(target, url, function () {
        pending = false;
        if (isDone()) { source.close(); }
      });
    });
    source.onerror = function () {
      // No stream here (or it broke): poll instead, once.
      source.close();
      if (!isDone()) { poll(target, url, isDone); }
    };
  }

  function liveRows(tbody) {
    var url = tbody.getAttribute("data-refresh");
    var isDone = function () {
      return !tbody.querySelector("tr[data-status='queued'],tr[data-status='running']");
    };
    poll(tbody, url, isDone);
  }

  document.addEventListener("submit", function (event) {
    var form = event.target;
    var question = form.getAttribute && form.getAttribute("data-confirm");
    if (question && !window.confirm(question)) { event.preventDefault(); }
  });

  document.addEventListener("DOMContentLoaded", function () {
    var live = document.getElementById("live");
    if (live) { liveEvaluation(live); }
    var rows = document.querySelector("tbody[data-refresh]");
    if (rows) { liveRows(rows); }
  });
})();
