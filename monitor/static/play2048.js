// MuFleet play page for 2048: the model plays, a person watches or takes over. The board and the
// score live here; every move (a person's, or the model's when the request has no move) goes to
// POST api/play, which plays it by the rules (the spawn is drawn there) and answers with the new
// board, the move's reward and, for a model move, the search's details.
"use strict";

const root = document.getElementById("play");
const info = JSON.parse(root.dataset.info);
const el = id => document.getElementById(id);
const ARROWS = ["↑", "→", "↓", "←"];
const KEYS = {ArrowUp: 0, ArrowRight: 1, ArrowDown: 2, ArrowLeft: 3};
// Auto-play keeps within the monitor's rate limit: at most rate_per_s requests a second.
const PACE_MS = info.rate_per_s > 0 ? 1000 / info.rate_per_s : 0;

const game = {
  board: [], legal: [false, false, false, false], score: 0, maxTile: 0, moves: 0, over: false,
  busy: false, autoplay: false, pending: null, generation: 0, history: [],
};
window.playState = game;  // tests read it

function tileText(exponent) {
  return exponent ? String(2 ** exponent) : "";
}

function render() {
  const cells = [];
  for (let r = 0; r < info.rows; r++) {
    for (let c = 0; c < info.cols; c++) {
      const e = (game.board[r] || [])[c] || 0;
      const text = tileText(e);
      const classes = ["tile", "t" + Math.min(e, 12), "digits-" + Math.max(1, text.length)];
      cells.push(`<div class="${classes.join(" ")}" data-row="${r}" data-col="${c}" data-exponent="${e}">${text}</div>`);
    }
  }
  const board = el("board");
  board.innerHTML = cells.join("");
  board.dataset.state = game.over ? "over" : game.busy ? "thinking" : game.autoplay ? "model" : "human";
  board.classList.toggle("thinking", game.busy && !game.autoplay);
  el("score").textContent = String(game.score);
  el("max-tile").textContent = game.maxTile ? String(game.maxTile) : "–";
  el("move-count").textContent = String(game.moves);
  for (const button of el("arrows").querySelectorAll("button")) {
    button.disabled = game.over || !game.legal[Number(button.dataset.move)];
  }
  const auto = el("autoplay");
  auto.textContent = game.autoplay ? "Stop the model" : "Model plays";
  auto.setAttribute("aria-pressed", String(game.autoplay));
  auto.disabled = game.over;
  el("model-move").disabled = game.over || game.autoplay;
  el("history").textContent = game.history.length ? "Moves: " + game.history.slice(-40).join(" · ") : "";
}

function showModel(model) {
  el("model-value").textContent = `≈ ${Math.round(model.value)} points to come`;
  el("model-version").textContent = "v" + model.version;
  el("model-seconds").textContent = `${(model.seconds * 1000).toFixed(0)} ms for ${model.simulations} simulations`;
  el("policy").innerHTML = model.policy.map((p, a) =>
    `<div class="${a === model.action ? "chosen" : ""}" style="height:${Math.max(2, p * 100)}%" title="${info.directions[a]}: ${(p * 100).toFixed(1)}%"></div>`).join("");
  el("policy-labels").innerHTML = model.policy.map((_, a) => `<span>${ARROWS[a]} ${info.directions[a]}</span>`).join("");
}

function setStatus(text, over) {
  el("play-status").textContent = text;
  el("play-status").classList.toggle("over", !!over);
}

function idleStatus() {
  if (game.over) return;
  setStatus(game.autoplay ? "The model plays…" : "Your move (arrow keys), or let the model play.");
}

function apply(body) {
  for (const m of body.moves) {
    game.history.push(`${m.player === "human" ? "you" : "model"} ${ARROWS[m.action]}${m.reward ? " +" + m.reward : ""}`);
    game.moves += 1;
  }
  game.score += body.reward;
  game.board = body.board;
  game.legal = body.legal;
  game.maxTile = body.max_tile;
  game.over = body.game_over;
  if (body.model) showModel(body.model);
  if (game.over) {
    game.autoplay = false;
    setStatus(body.message, true);
  } else {
    idleStatus();
  }
}

// One request: a person's move (0..3), the model's (null), or a new game (newGame). Returns
// "played", "refused" or "retry" (the rate limit said to wait; auto-play tries again).
async function post(payload) {
  const generation = game.generation;
  game.busy = true;
  el("play-error").textContent = "";
  render();
  let response, body;
  try {
    response = await fetch("api/play", {
      method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(payload),
    });
    body = await response.json();
  } catch (error) {
    body = {error: "the monitor is unreachable: " + error.message};
    response = {ok: false, status: 0, headers: new Headers()};
  }
  game.busy = false;
  if (generation !== game.generation) {  // a new game started meanwhile: this answer is stale
    render();
    return "refused";
  }
  if (!response.ok) {
    const wait = Number(response.headers.get("Retry-After"));
    if (response.status === 429 && game.autoplay && wait > 0) {
      setStatus(`The model waits ${wait} s for the monitor's rate limit…`);
      render();
      await new Promise(resolve => setTimeout(resolve, wait * 1000));
      return "retry";
    }
    game.autoplay = false;
    el("play-error").textContent = body.error || "the move was refused";
    idleStatus();
    render();
    return "refused";
  }
  apply(body);
  render();
  return "played";
}

async function move(action) {
  const result = await post({board: game.board, move: action});
  playPending();
  return result;
}

// A person's move pressed while the model's answer was on its way: played once it has landed.
function playPending() {
  if (game.pending === null || game.busy) return;
  const action = game.pending;
  game.pending = null;
  if (!game.over && game.legal[action]) move(action);
}

let autoplayRun = 0;  // the current auto-play loop: one that was stopped and restarted ends itself

async function autoplay() {
  const run = ++autoplayRun;
  game.autoplay = true;
  idleStatus();
  render();
  while (game.autoplay && run === autoplayRun && !game.over) {
    const started = performance.now();
    const result = await move(null);
    if (result === "refused") break;
    const wait = PACE_MS - (performance.now() - started);
    if (wait > 0 && game.autoplay && !game.over) await new Promise(resolve => setTimeout(resolve, wait));
  }
  if (run !== autoplayRun) return;
  game.autoplay = false;
  idleStatus();
  render();
}

function stopAutoplay() {
  game.autoplay = false;
  idleStatus();
  render();
}

function takeOver(action) {
  if (game.over) { el("play-error").textContent = "The game is over: start a new game."; return; }
  if (game.autoplay) stopAutoplay();
  if (game.busy) { game.pending = action; return; }  // after the model's move lands
  move(action);
}

async function newGame() {
  Object.assign(game, {board: [], legal: [false, false, false, false], score: 0, maxTile: 0, moves: 0,
                       over: false, autoplay: false, pending: null, history: []});
  game.generation += 1;
  el("model-value").textContent = "–";
  el("policy").innerHTML = "";
  el("policy-labels").innerHTML = "";
  setStatus("Dealing a new game…");
  await post({board: null, move: null});
}

document.addEventListener("keydown", event => {
  if (!(event.key in KEYS) || event.altKey || event.ctrlKey || event.metaKey) return;
  event.preventDefault();  // arrows move tiles, not the page
  takeOver(KEYS[event.key]);
});
el("arrows").addEventListener("click", event => {
  const button = event.target.closest("button[data-move]");
  if (button) takeOver(Number(button.dataset.move));
});
el("autoplay").addEventListener("click", () => {
  if (game.autoplay) stopAutoplay();
  else if (!game.over && !game.busy) autoplay();
});
el("model-move").addEventListener("click", () => {
  if (!game.busy && !game.autoplay && !game.over) move(null);
});
el("new-game").addEventListener("click", newGame);
newGame();
