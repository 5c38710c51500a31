// MuFleet play page: the position lives here; every move goes to POST api/play, which checks it
// against the rules and answers with the model's move.
"use strict";

const root = document.getElementById("play");
const info = JSON.parse(root.dataset.info);
const PIECES = {connect4: ["red", "yellow"], othello: ["black", "white"]}[info.game] || ["X", "O"];
const PASS = info.pass_action === undefined ? null : info.pass_action;  // Othello's pass
const el = id => document.getElementById(id);

const game = {
  board: [], toPlay: 0, legal: [], modelPlayer: 1, over: false, busy: false, lastAction: null, policy: null,
  history: [],
};
window.playState = game;  // tests read it

function startBoard() {
  return info.start.board.map(row => row.slice());
}

function moveName(action) {
  if (action === PASS) return "pass";
  if (info.moves_by === "column") return "column " + (action + 1);
  const r = Math.floor(action / info.cols), c = action % info.cols;
  return "abcdefgh"[c] + (r + 1);
}

function humanToPlay() {
  return !game.over && game.toPlay !== game.modelPlayer;
}

function render() {
  const board = el("board");
  const cells = [];
  for (let r = 0; r < info.rows; r++) {
    for (let c = 0; c < info.cols; c++) {
      const v = game.board[r][c];
      const action = info.moves_by === "column" ? c : r * info.cols + c;
      const classes = ["cell"];
      if (v) classes.push("p" + v);
      let text = "";
      if (info.game === "tictactoe" && v) text = PIECES[v - 1];
      let last = false;
      if (game.lastAction !== null && v) {
        if (info.moves_by === "column") {
          // the last piece dropped in that column is its topmost one
          last = c === game.lastAction && (r === 0 || game.board[r - 1][c] === 0);
        } else {
          last = action === game.lastAction;
        }
      }
      if (last) classes.push("last");
      if (PASS !== null && !v && humanToPlay() && !game.busy && game.legal[action]) classes.push("legal");
      let prior = "";
      if (info.moves_by === "cell" && !v && game.policy && !game.over) {
        const p = game.policy[action];
        if (p >= 0.005) prior = `<span class="prior">${Math.round(p * 100)}%</span>`;
      }
      const label = v ? `${PIECES[v - 1]} at ${moveName(action)}` : `play ${moveName(action)}`;
      cells.push(`<button class="${classes.join(" ")}" data-action="${action}" data-row="${r}" data-col="${c}" aria-label="${label}">${text}${prior}</button>`);
    }
  }
  board.innerHTML = cells.join("");
  board.dataset.state = game.over ? "over" : game.busy ? "thinking" : (humanToPlay() ? "human" : "model");
  board.classList.toggle("thinking", game.busy);
  const human = 1 - game.modelPlayer;
  el("human-piece").textContent = PIECES[human] + (human === 0 ? " (first)" : " (second)");
  el("model-piece").textContent = PIECES[game.modelPlayer];
  el("history").textContent = game.history.length ? "Moves: " + game.history.join(" · ") : "";
  if (PASS !== null) {
    let black = 0, white = 0;
    for (const row of game.board) for (const v of row) { if (v === 1) black++; else if (v === 2) white++; }
    el("discs-black").textContent = black;
    el("discs-white").textContent = white;
    el("pass").disabled = !(humanToPlay() && !game.busy && game.legal[PASS]);
  }
}

function showModel(model) {
  if (!model) return;
  const v = Math.abs(model.value) < 0.005 ? 0 : model.value;
  el("model-value").textContent = (v >= 0 ? "+" : "") + v.toFixed(2) +
    (v > 0.3 ? " · expects to win" : v < -0.3 ? " · expects to lose" : " · about even");
  el("value-needle").style.left = `${Math.max(0, Math.min(100, (v + 1) * 50))}%`;
  el("model-version").textContent = "v" + model.version;
  el("model-seconds").textContent = `${(model.seconds * 1000).toFixed(0)} ms for ${model.simulations} simulations`;
  el("policy").innerHTML = model.policy.map((p, a) =>
    `<div class="${a === model.action ? "chosen" : ""}" style="height:${Math.max(2, p * 100)}%" title="${moveName(a)}: ${(p * 100).toFixed(1)}%"></div>`).join("");
  // Othello's 65 moves are too many to label under the bars: the board shows them.
  el("policy-labels").innerHTML = PASS !== null ? "" : model.policy.map((_, a) =>
    `<span>${info.moves_by === "column" ? a + 1 : moveName(a)}</span>`).join("");
}

function setStatus(text, over) {
  el("play-status").textContent = text;
  el("play-status").classList.toggle("over", !!over);
}

async function send(move) {
  game.busy = true;
  el("play-error").textContent = "";
  setStatus(move === null ? "The model opens…" : "The model is thinking…");
  render();
  let response, body;
  try {
    response = await fetch("api/play", {
      method: "POST", headers: {"Content-Type": "application/json"},
      body: JSON.stringify({board: game.board, move, model_player: game.modelPlayer,
                            ...(PASS !== null ? {to_play: game.toPlay} : {})}),
    });
    body = await response.json();
  } catch (error) {
    body = {error: "the monitor is unreachable: " + error.message};
    response = {ok: false};
  }
  game.busy = false;
  if (!response.ok) {
    el("play-error").textContent = body.error || "the move was refused";
    setStatus(humanToPlay() ? yourMove() : "The model could not move.");
    render();
    return;
  }
  for (const m of body.moves) {
    game.history.push(`${m.player === "human" ? "you" : "model"} ${moveName(m.action)}`);
    game.lastAction = m.action;
  }
  game.board = body.board;
  game.toPlay = body.to_play;
  game.legal = body.legal;
  game.over = body.game_over;
  if (body.model) { game.policy = body.model.policy; showModel(body.model); }
  if (body.game_over) setStatus(body.message, true);
  else setStatus(yourMove());
  render();
}

function yourMove() {
  return PASS !== null && game.legal[PASS] ? "You have no move: pass." : "Your move.";
}

function onClick(event) {
  const cell = event.target.closest(".cell");
  if (!cell || game.busy) return;
  if (game.over) { el("play-error").textContent = "The game is over: start a new game."; return; }
  if (!humanToPlay()) { el("play-error").textContent = "Wait for the model's move."; return; }
  send(Number(cell.dataset.action));
}

function onHover(event) {
  if (info.moves_by !== "column") return;
  const cell = event.target.closest(".cell");
  for (const c of el("board").querySelectorAll(".cell")) {
    c.classList.toggle("column-hover", !!cell && c.dataset.col === cell.dataset.col);
  }
}

function newGame(modelFirst) {
  Object.assign(game, {board: startBoard(), toPlay: info.start.to_play, legal: info.start.legal.slice(),
                       modelPlayer: modelFirst ? 0 : 1, over: false, busy: false, lastAction: null, policy: null,
                       history: []});
  el("play-error").textContent = "";
  el("model-value").textContent = "–";
  el("value-needle").style.left = "50%";
  el("policy").innerHTML = "";
  el("policy-labels").innerHTML = "";
  setStatus("Your move.");
  render();
  if (modelFirst) send(null);
}

el("board").addEventListener("click", onClick);
el("board").addEventListener("mouseover", onHover);
el("board").addEventListener("mouseleave", onHover);
el("new-human-first").addEventListener("click", () => newGame(false));
el("new-model-first").addEventListener("click", () => newGame(true));
if (PASS !== null) el("pass").addEventListener("click", () => { if (humanToPlay() && !game.busy) send(PASS); });
newGame(false);
