/* jira-mirror status page: refresh the data in place, never what the operator is doing.
 *
 * Every `data-refresh` seconds the page is fetched again and each element marked `data-live` is
 * replaced by its fresh copy (found by id). Nothing is replaced while a text field has focus or
 * holds text (the "track a project" field), or while an error's full text is open: the next
 * round tries again. Without this script the page is complete, only static.
 */
(function () {
  "use strict";
  var root = document.getElementById("live-root");
  if (!root || !window.fetch || !window.DOMParser) { return; }
  var timer = null;

  function seconds() {
    var value = parseInt(root.getAttribute("data-refresh"), 10);
    return value > 0 ? value : 30;
  }

  function busy() {
    var active = document.activeElement;
    if (active && (active.tagName === "INPUT" || active.tagName === "TEXTAREA") && active.type !== "hidden") {
      return true;
    }
    var fields = document.querySelectorAll("input:not([type=hidden]), textarea");
    for (var i = 0; i < fields.length; i++) {
      if (fields[i].value) { return true; }
    }
    return document.querySelector("details.more[open]") !== null;
  }

  function replaceParts(html) {
    var fresh = new DOMParser().parseFromString(html, "text/html");
    var freshRoot = fresh.getElementById("live-root");
    if (!freshRoot) { return false; }  // the session ended: the login form came back
    root.setAttribute("data-refresh", freshRoot.getAttribute("data-refresh"));
    var parts = document.querySelectorAll("[data-live]");
    for (var i = 0; i < parts.length; i++) {
      var next = fresh.getElementById(parts[i].id);
      if (next) { parts[i].replaceWith(document.importNode(next, true)); }
    }
    return true;
  }

  function schedule() {
    clearTimeout(timer);
    timer = setTimeout(refresh, seconds() * 1000);
  }

  function refresh() {
    if (busy()) {
      root.setAttribute("data-paused", String((parseInt(root.getAttribute("data-paused"), 10) || 0) + 1));
      schedule();
      return Promise.resolve(false);
    }
    return fetch(window.location.pathname, { credentials: "same-origin", headers: { "Accept": "text/html" } })
      .then(function (response) { return response.ok ? response.text() : ""; })
      .then(function (html) { return html ? replaceParts(html) : false; })
      .catch(function () { return false; })
      .then(function (done) { root.setAttribute("data-refreshed", String(Date.now())); schedule(); return done; });
  }

  window.jiraMirrorRefresh = refresh;  // the tests call it rather than wait
  schedule();
})();
