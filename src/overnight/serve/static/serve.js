// overnight serve: keeps a night's page current from the server's pushed events
// (EventSource, server-sent events). The page never polls: the server tails the ledger
// and sends each changed section or row, drawn by the same templates as the page.
"use strict";
(function () {
  const main = document.getElementById("main");
  const url = main && main.dataset.events;
  const status = document.getElementById("stream-status");
  const log = document.getElementById("live-log");
  if (!url || !status || !window.EventSource) {
    return;
  }
  const LOG_LIMIT = 200;

  function setStatus(state, text) {
    status.dataset.state = state;
    status.textContent = text;
  }

  function clock() {
    return new Date().toLocaleTimeString([], { hour12: false });
  }

  function announce(note) {
    if (!note || !log) {
      return;
    }
    const li = document.createElement("li");
    li.textContent = clock() + " " + note;
    log.appendChild(li);
    while (log.children.length > LOG_LIMIT) {
      log.removeChild(log.firstElementChild);
    }
  }

  function parse(html) {
    const template = document.createElement("template");
    template.innerHTML = html.trim();
    return template.content.firstElementChild;
  }

  function place(message) {
    const fresh = parse(message.html);
    if (!fresh) {
      return;
    }
    const old = document.getElementById(message.id);
    if (old) {
      old.replaceWith(fresh);
      return;
    }
    const list = message.list && document.getElementById(message.list);
    if (!list) {
      return;
    }
    // Rows keep the ledger's order (their numeric data-*-id), whatever order they come in.
    const key = Number(message.order);
    let before = null;
    for (const row of list.children) {
      if (Number(row.dataset.order || row.id.split("-").pop()) > key) {
        before = row;
        break;
      }
    }
    list.insertBefore(fresh, before);
    const empty = document.getElementById(message.list + "-empty");
    const wrap = document.getElementById(message.list + "-wrap");
    if (empty) {
      empty.hidden = true;
    }
    if (wrap) {
      wrap.hidden = false;
    }
  }

  const source = new EventSource(url);
  source.addEventListener("open", function () {
    setStatus("live", "Live: this page shows what the ledger records as it happens.");
  });
  source.addEventListener("error", function () {
    if (status.dataset.state !== "ended") {
      setStatus("reconnecting", "The live connection was lost; reconnecting…");
    }
  });
  source.addEventListener("section", function (event) {
    place(JSON.parse(event.data));
  });
  source.addEventListener("item", function (event) {
    const message = JSON.parse(event.data);
    place(message);
    announce(message.note);
  });
  source.addEventListener("trouble", function (event) {
    setStatus("trouble", JSON.parse(event.data).note);
  });
  source.addEventListener("recovered", function (event) {
    setStatus("live", JSON.parse(event.data).note);
  });
  source.addEventListener("ended", function (event) {
    const message = JSON.parse(event.data);
    source.close();
    announce(message.note);
    setStatus("ended", message.note);
  });
})();
