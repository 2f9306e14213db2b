// Live pages: a page whose <body> names a stream (data-stream) shows its events as they come.
// Trust transitions update the state of the asset's row and head the "live" list.
"use strict";
(function () {
  const url = document.body.dataset.stream;
  if (!url || !window.EventSource) return;
  const source = new EventSource(url);
  const live = document.getElementById("live");
  source.addEventListener("trust.transition", function (message) {
    const event = JSON.parse(message.data);
    const move = event.data;
    const row = document.querySelector('tr[data-asset="' + move.asset_id + '"]');
    if (row) {
      const cell = row.querySelector(".state");
      cell.textContent = move.to_state;
      cell.className = "state " + move.to_state;
    }
    if (live) {
      const item = document.createElement("li");
      item.className = "transition";
      item.textContent = event.at.replace("T", " ").slice(0, 19) + "  " + move.tenant + "/" +
        move.asset + "  " + (move.from_state || "new") + " -> " + move.to_state + "  (" +
        move.cause + (move.detail ? ": " + move.detail : "") + ")";
      live.prepend(item);
      while (live.children.length > 50) live.lastElementChild.remove();
    }
  });
})();
