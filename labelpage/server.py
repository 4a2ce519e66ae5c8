"""The labelling page's server: people rank the K responses of each prompt of a file to label.

Every ranking is appended to <file>.labels.jsonl and flushed to disk before the page hears "saved",
so a closed tab or a killed server loses nothing; the comparisons file (the project's ranked format,
ready for `instructrl rm`) is rewritten from all rankings after each one. Binds to loopback unless a
token guards it. Reads and writes records through rlhf's loaders; nothing below this package imports it.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import os
import re
import socket
import time
from collections import defaultdict
from pathlib import Path

from aiohttp import web

from models.errors import InputError
from rlhf.data import write_jsonl
from rlhf.labelling import LabelItem, check_ranking, pair_agreement, ranked_record

STATIC = Path(__file__).parent / "static"
NAME = re.compile(r"^[\w .@-]{1,64}$")
PAGE_VERSION = "labelpage-1"


class LabelStore:
    """The rankings of one file to label, by labeller and item, on disk as they are made."""

    def __init__(self, file: Path, items: list[LabelItem], out: Path):
        self.items = {item.id: item for item in items}
        self.order = [item.id for item in items]
        self.out, self.log_path = out, file.with_suffix(".labels.jsonl")
        self.rankings: dict[str, dict[str, list[int]]] = defaultdict(dict)  # labeller → item id → order
        if self.log_path.exists():
            for n, line in enumerate(self.log_path.read_text().splitlines(), 1):
                try:
                    row = json.loads(line)
                    item_id, name, order = str(row["id"]), row["labeller"], row["order"]
                except (ValueError, KeyError, TypeError):
                    raise InputError(f"{self.log_path}:{n}: not a saved ranking ({line[:80]!r}); the file is "
                                     f"damaged: mend or remove that line") from None
                item = self.items.get(item_id)
                if item is None or check_ranking(order, len(item.responses)) is None:
                    raise InputError(f"{self.log_path}:{n}: a ranking of prompt {item_id!r}, which {file} "
                                     f"{'lacks' if item is None else 'gives another number of responses'}: the file "
                                     f"to label changed after it was ranked; rank the new file under another name")
                self.rankings[name][item_id] = order

    def save(self, labeller: str, item_id: str, order: list[int]) -> None:
        row = {"id": item_id, "labeller": labeller, "order": order, "at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        with open(self.log_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.rankings[labeller][item_id] = order
        self.write_comparisons()

    def write_comparisons(self) -> None:
        """Every ranking as a comparison, each naming its labeller; replaced whole, never half written."""
        records = [r for item_id in self.order for name in sorted(self.rankings)
                   if (order := self.rankings[name].get(item_id)) is not None
                   and (r := ranked_record(self.items[item_id], order,
                                           {"name": f"human:{name}", "version": PAGE_VERSION})) is not None]
        write_jsonl(self.out, records)

    def agreement(self) -> list[dict]:
        """For each pair of labellers: the prompts both ranked, and the share of response pairs they order alike."""
        names, rows = sorted(self.rankings), []
        for i, a in enumerate(names):
            for b in names[i + 1:]:
                shared = [k for k in self.rankings[a] if k in self.rankings[b]]
                alike = total = 0
                for k in shared:
                    x, n = pair_agreement(self.rankings[a][k], self.rankings[b][k])
                    alike, total = alike + x, total + n
                rows.append({"labellers": [a, b], "prompts": len(shared),
                             "agreement": alike / total if total else None})
        return rows


def make_app(store: LabelStore, token: str | None) -> web.Application:
    @web.middleware
    async def guard(request: web.Request, handler):
        if token is not None:
            given = request.headers.get("X-Token") or request.query.get("token") or ""
            if not hmac.compare_digest(given.encode(), token.encode()):
                return web.json_response({"error": "a wrong or missing token"}, status=403)
        response = await handler(request)
        # model text is untrusted: no inline script runs, and nothing is sniffed into markup
        response.headers["Content-Security-Policy"] = "default-src 'self'; object-src 'none'; base-uri 'none'"
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response

    async def index(request: web.Request) -> web.FileResponse:
        return web.FileResponse(STATIC / "index.html")

    async def items(request: web.Request) -> web.Response:
        shown = [{"id": i.id, "prompt": i.prompt if isinstance(i.prompt, str) else [dict(m) for m in i.prompt],
                  "responses": list(i.responses)} for i in (store.items[k] for k in store.order)]
        return web.json_response({"items": shown, "out": str(store.out)})

    async def progress(request: web.Request) -> web.Response:
        name = request.query.get("labeller", "")
        return web.json_response({"done": sorted(store.rankings.get(name, {})), "agreement": store.agreement()})

    async def rank(request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except ValueError:
            return web.json_response({"error": "the body is not JSON"}, status=400)
        name, item_id = str(body.get("labeller", "")).strip(), str(body.get("id", ""))
        if not NAME.match(name):
            return web.json_response({"error": "a labeller's name: 1-64 letters, digits, spaces or . @ - _"},
                                     status=400)
        if item_id not in store.items:
            return web.json_response({"error": f"no prompt with id {item_id!r}"}, status=404)
        order = check_ranking(body.get("order"), len(store.items[item_id].responses))
        if order is None:
            return web.json_response({"error": "order: every response's index once, best first"}, status=400)
        store.save(name, item_id, order)
        return web.json_response({"saved": item_id, "agreement": store.agreement()})

    app = web.Application(middlewares=[guard])
    app.add_routes([web.get("/", index), web.get("/api/items", items), web.get("/api/progress", progress),
                    web.post("/api/rank", rank), web.static("/static", STATIC)])
    return app


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(socket.gethostbyname(host)).is_loopback
    except (OSError, ValueError):
        return False


def serve(file: str | Path, items: list[LabelItem], out: Path, host: str = "127.0.0.1", port: int = 8377,
          token: str | None = None) -> None:
    """Serve the page until interrupted; prints its address (with the token) once it listens."""
    if not is_loopback(host) and not token:
        raise InputError(f"--host {host}: beyond loopback the page is served only with --token (a secret every "
                         f"request must carry)")
    store = LabelStore(Path(file), items, Path(out))
    app = make_app(store, token)
    sock = socket.create_server((host, port))
    url = f"http://{host}:{sock.getsockname()[1]}/" + (f"?token={token}" if token else "")

    async def run() -> None:
        runner = web.AppRunner(app)
        await runner.setup()
        await web.SockSite(runner, sock).start()
        print(f"labelling page: {url}\nrankings: {store.log_path}\ncomparisons: {store.out}", flush=True)
        try:
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()

    try:
        asyncio.run(run())
    except KeyboardInterrupt:
        print(f"stopped; every ranking is in {store.log_path}", flush=True)
