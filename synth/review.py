"""A local review page for the human check of Refine-Perception (Stage-1) samples.

    python -m synth.review MANIFEST [--port 8765] [--reviewer NAME]
    python -m synth.review MANIFEST --export-accepted OUT.jsonl

The page shows one distorted image at a time with its box, object name, distortion type
and severity word, the reference image beside it, and the question / expected answer of
each of its samples. Keys: A accept, R reject, arrows move, U undo, Z zoom to the box,
S summary, ? help. One decision covers the four samples of a distorted image (why:
synth.review_decisions); each is appended to `<manifest stem>.decisions.jsonl` beside the
manifest before the page counts it as saved, and a reload resumes at the first unreviewed
image. `synth.perception` never rebuilds a rejected id; `--export-accepted` writes a
manifest of the accepted samples to train on and prints the counts.

The server binds 127.0.0.1 unless told otherwise and serves only the page's own files and
the images the manifest names: an image is asked for by its manifest entry, never by a
file-system path, so no URL can reach a file outside that set.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from conf.prompts import severity_word
from synth.manifest import read_manifest, resolve_images
from synth.review_decisions import (
    DECISIONS,
    append_decision,
    decision_counts,
    decisions_path,
    export_accepted,
    group_items,
    read_decisions,
)

log = logging.getLogger(__name__)

PAGE_DIR = Path(__file__).resolve().parent / "review_page"
# The page's files, by name: nothing else under /static is served.
STATIC = {"review.js": "text/javascript", "review.css": "text/css"}
STATE = web.AppKey("state", dict)
LOOPBACK = ("127.0.0.1", "localhost", "::1")
MAX_BODY = 64 * 1024   # a decision is a few hundred bytes


def load_items(manifest: str | Path) -> tuple[list[dict[str, Any]], dict[str, Path]]:
    """The review items of a manifest (one per distorted image, in manifest order) and the
    images the page may fetch: {manifest entry: absolute path}. Raises ValueError or
    FileNotFoundError with read_manifest's message on a bad manifest."""
    samples = read_manifest(manifest)
    items, images = [], {}
    for key, group in group_items(samples).items():
        for s in group:
            images.update(zip(s["images"], resolve_images(s, manifest)))
        first, meta = group[0], group[0]["meta"]
        level = meta.get("level")
        reference = next((s["images"][0] for s in group if len(s["images"]) > 1), None)
        shown = [first["images"][-1]] + ([reference] if reference else [])
        items.append({
            "id": key, "sample_ids": [s["id"] for s in group], "split": first["split"],
            "distorted": first["images"][-1], "reference": reference,
            "missing": [p for p in shown if not images[p].is_file()],
            "bbox": first["bbox"], "image_size": first["image_size"],
            "object": meta.get("object"), "distortion": meta.get("distortion"),
            "class": meta.get("class"), "level": level,
            "severity": severity_word(level) if isinstance(level, int) else None,
            "samples": [{"id": s["id"], "task": s["task"], "reference": s["meta"].get("reference"),
                         "question": s["question"], "answer": s["answer"]} for s in group]})
    return items, images


def summarize(items: list[dict[str, Any]], decisions: dict[str, dict]) -> dict[str, Any]:
    """Acceptance by distortion type and by severity word: {key: {accept, reject,
    unreviewed}} each, plus the totals."""
    out: dict[str, Any] = {}
    for field in ("distortion", "severity"):
        table: dict[str, Counter] = {}
        for it in items:
            got = decisions.get(it["id"], {}).get("decision") or "unreviewed"
            table.setdefault(str(it[field]), Counter())[got] += 1
        out[f"by_{field}"] = {k: {d: c[d] for d in (*DECISIONS, "unreviewed")}
                              for k, c in sorted(table.items())}
    got = Counter(decisions.get(it["id"], {}).get("decision") or "unreviewed" for it in items)
    out["total"] = {d: got[d] for d in (*DECISIONS, "unreviewed")}
    return out


def _load(app: web.Application) -> dict[str, Any]:
    """(Re)read the manifest and decisions: a fixed manifest shows up on a page reload."""
    state = app[STATE]
    try:
        state["items"], state["images"] = load_items(state["manifest"])
        state["error"] = None
        state["decisions"] = read_decisions(state["manifest"])
    except (ValueError, OSError) as e:
        state.update(items=[], images={}, decisions={}, error=str(e))
    return state


async def index(request: web.Request) -> web.FileResponse:
    """The page (review_page/index.html)."""
    return web.FileResponse(PAGE_DIR / "index.html", headers={"Cache-Control": "no-store"})


async def static(request: web.Request) -> web.StreamResponse:
    """One of the page's own files, by name (STATIC)."""
    name = request.match_info["name"]
    if name not in STATIC:
        raise web.HTTPNotFound(text=f"no page file {name!r}")
    return web.FileResponse(PAGE_DIR / name, headers={"Content-Type": STATIC[name],
                                                      "Cache-Control": "no-store"})


async def image(request: web.Request) -> web.StreamResponse:
    """An image by its manifest entry (?path=images/x.png); anything else is refused."""
    entry = request.query.get("path", "")
    path = request.app[STATE]["images"].get(entry)
    if path is None:
        raise web.HTTPNotFound(text=f"{entry!r} is not an image of this manifest")
    if not path.is_file():
        raise web.HTTPNotFound(text=f"image file missing: {path}")
    return web.FileResponse(path)


async def items(request: web.Request) -> web.Response:
    """The review items and the current decisions, or the manifest's error (422)."""
    state = _load(request.app)
    if state["error"]:
        return web.json_response({"error": state["error"], "manifest": str(state["manifest"])},
                                 status=422)
    return web.json_response({
        "manifest": str(state["manifest"]), "decisions_file": str(decisions_path(
            state["manifest"])), "reviewer": state["reviewer"], "items": state["items"],
        "decisions": {k: v["decision"] for k, v in state["decisions"].items()}})


async def decide(request: web.Request) -> web.Response:
    """POST {"id", "decision": "accept" | "reject" | null, "reviewer"}: append and answer
    only once the line is on disk."""
    state = request.app[STATE]
    try:
        body = await request.json()
        key, decision = body["id"], body.get("decision")
    except (ValueError, KeyError, TypeError, RecursionError):
        # RecursionError: JSON nested deeper than the parser's stack (a hostile body).
        return web.json_response({"error": 'expected JSON {"id": ..., "decision": ...}'},
                                 status=400)
    named = body.get("reviewer")
    if named is not None and not isinstance(named, str):
        return web.json_response({"error": "reviewer must be a name (a string) or null"},
                                 status=400)
    item = next((it for it in state["items"] if it["id"] == key), None)
    if item is None:
        return web.json_response({"error": f"unknown item {key!r}"}, status=404)
    if decision is not None and decision not in DECISIONS:
        return web.json_response({"error": f"decision must be one of {DECISIONS} or null"},
                                 status=400)
    reviewer = (named or state["reviewer"] or "").strip() or None
    record = append_decision(state["manifest"], key, item["sample_ids"], decision, reviewer)
    if decision is None:
        state["decisions"].pop(key, None)
    else:
        state["decisions"][key] = record
    return web.json_response({"ok": True, "record": record})


async def summary(request: web.Request) -> web.Response:
    """Acceptance by distortion type and severity (`summarize`)."""
    state = _load(request.app)
    if state["error"]:
        return web.json_response({"error": state["error"]}, status=422)
    return web.json_response(summarize(state["items"], state["decisions"]))


@web.middleware
async def same_machine(request: web.Request, handler) -> web.StreamResponse:
    """On a loopback binding, answer only requests addressed to a loopback name (a web site
    that rebinds its DNS name to 127.0.0.1 gets nothing), and take decisions only as JSON
    (a cross-site form cannot send that without a CORS preflight, which is never granted)."""
    if request.app[STATE]["host"] in LOOPBACK:
        if urlsplit("//" + request.host).hostname not in LOOPBACK:
            raise web.HTTPForbidden(text="this review server answers only 127.0.0.1/localhost")
        if request.method == "POST" and request.content_type != "application/json":
            raise web.HTTPUnsupportedMediaType(text="decisions are posted as application/json")
    return await handler(request)


@web.middleware
async def bounded_body(request: web.Request, handler) -> web.StreamResponse:
    """Refuse a body the server would not read whole (client_max_size) by its declared
    length, before reading it: a client that announces more than it sends would otherwise
    hold the request open until it gives up."""
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise web.HTTPRequestEntityTooLarge(max_size=MAX_BODY,
                                            actual_size=request.content_length)
    return await handler(request)


@web.middleware
async def plain_errors(request: web.Request, handler) -> web.StreamResponse:
    """A bug shows as one line on the page (and a traceback in the terminal), never as a
    stack trace in the browser."""
    try:
        return await handler(request)
    except web.HTTPException:
        raise
    except Exception as e:  # noqa: BLE001 - reported, not swallowed
        log.exception("%s %s failed", request.method, request.path)
        return web.json_response({"error": f"server error: {type(e).__name__}: {e}"},
                                 status=500)


def make_app(manifest: str | Path, reviewer: str | None = None,
             host: str = "127.0.0.1") -> web.Application:
    """The review application for one manifest, to be served on `host`."""
    app = web.Application(middlewares=[same_machine, bounded_body, plain_errors],
                          client_max_size=MAX_BODY)
    app[STATE] = {"manifest": Path(manifest).resolve(), "reviewer": reviewer, "host": host}
    _load(app)
    app.add_routes([web.get("/", index), web.get("/static/{name}", static),
                    web.get("/image", image), web.get("/api/items", items),
                    web.post("/api/decision", decide), web.get("/api/summary", summary)])
    return app


async def serve(app: web.Application, host: str, port: int) -> None:
    """Serve until interrupted; prints the URL (with the real port when `port` is 0)."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    bound_host, bound_port = runner.addresses[0][:2]
    print(f"review page: http://{bound_host}:{bound_port}/  (Ctrl+C stops)", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def _print_counts(counts: dict[str, int]) -> None:
    items = {k: v for k, v in counts.items() if k in (*DECISIONS, "unreviewed", "total")}
    print("  ".join(f"{k}={v}" for k, v in items.items()), "(distorted images)", flush=True)


def main(argv: list[str] | None = None) -> int:
    """Command line: serve the page, or export the accepted samples."""
    p = argparse.ArgumentParser(prog="python -m synth.review", description=__doc__.split(
        "\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("manifest", type=Path, help="a Stage-1 manifest (JSONL)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8765, help="port (0: any free one)")
    p.add_argument("--reviewer", help="name written with each decision (the page can set it)")
    p.add_argument("--export-accepted", type=Path, metavar="OUT",
                   help="write the accepted samples to OUT (a manifest), print counts, exit")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    if args.export_accepted:
        try:
            counts = export_accepted(args.manifest, args.export_accepted)
        except (ValueError, OSError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        _print_counts(counts)
        print(f"wrote {counts['samples_written']} accepted samples to {args.export_accepted}")
        return 0
    app = make_app(args.manifest, args.reviewer, args.host)
    state = app[STATE]
    if state["error"]:  # still serve: the page shows the message, and a fix needs a reload
        print(f"error: {state['error']}", file=sys.stderr, flush=True)
    else:
        _print_counts(decision_counts(args.manifest))
        print(f"decisions go to {decisions_path(args.manifest)}", flush=True)
    if args.host not in LOOPBACK:
        print(f"warning: bound to {args.host}: anyone who reaches it can read the images "
              "and write decisions", file=sys.stderr)
    try:
        with contextlib.suppress(KeyboardInterrupt):  # Ctrl+C is the way to stop it
            asyncio.run(serve(app, args.host, args.port))
    except OSError as e:  # port taken, address not on this machine
        print(f"error: cannot listen on {args.host}:{args.port}: {e.strerror or e}; "
              "pick another --port (0: any free one)", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
