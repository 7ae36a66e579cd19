"""The timeline-with-images benchmark: a home page of 20 posts with an image each, against the same page of the
same 20 posts without images, on one server in the same run (issue 14's target: at least 0.8 of its throughput).

``python -m bench.media_pages [--seconds 5] [--rounds 3] [--connections 8] [--out DIR]`` prints a markdown table
and writes ``media_pages.json`` and ``media_pages.md`` (to ``bench/results`` by default).

- One ``python -m feed serve`` on the embedded default (SQLite, its in-process cache and job queue), fresh data
  directory, pinned to one core when there are two; ``wrk`` on the others.
- Two authors post the same 20 texts; one attaches a photo (1600x1200 JPEG, processed by the job into its variants)
  to each. Two readers follow one author each, and ``wrk`` asks for each reader's home page (``/``) with their
  session cookie, alternately, ``--rounds`` times; the medians are compared.
- What is compared is the page (the HTML: frames with the images' markup, alt text, srcset and blurhash), not the
  images themselves, which the browser fetches lazily and caches.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
from PIL import Image

from bench.http import HOST
from bench.load import run_wrk, taskset, wrk_path
from bench.servers import Cores, free_port

RESULTS = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parents[1]
TARGET = 0.8
POSTS = 20
PASSWORD = "correct horse battery staple"  # noqa: S105 - throwaway accounts on a throwaway server
_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


@contextlib.contextmanager
def server(cores: Cores) -> Iterator[int]:
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="cipherfeed-bench-") as data:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CIPHERFEED_")}
        env["CIPHERFEED_DATA_DIR"] = data
        argv = [sys.executable, "-m", "feed", "serve", "--port", str(port), "--no-access-log"]
        log = Path(data) / "server.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(  # noqa: S603 - argv built here, no shell
                taskset(argv, cores.server if cores.pinned else None), cwd=REPO, env=env, stdout=out,
                stderr=subprocess.STDOUT,
            )  # fmt: skip
        try:
            deadline = time.monotonic() + 60
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"the server exited:\n{log.read_text()}")
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(f"http://{HOST}:{port}/healthz", timeout=1).status_code == 200:
                        break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the server did not start:\n{log.read_text()}")
                time.sleep(0.1)
            yield port
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


class Person:
    def __init__(self, base: str, name: str) -> None:
        self.http = httpx.AsyncClient(base_url=base, timeout=30, headers={"Origin": base})
        self.name = name
        self.csrf = ""

    async def get(self, path: str) -> httpx.Response:
        answer = await self.http.get(path)
        if found := _CSRF.search(answer.text):
            self.csrf = found.group(1)
        return answer

    async def post(self, path: str, fields: dict[str, str]) -> httpx.Response:
        return await self.http.post(path, data={"csrf_token": self.csrf, **fields})

    async def register(self) -> None:
        await self.get("/register")
        fields = {"username": self.name, "password": PASSWORD, "password_confirm": PASSWORD, "email": ""}
        answer = await self.post("/register", fields)
        assert answer.status_code == 303, answer.text
        await self.get("/")

    def cookie(self) -> str:
        return "; ".join(f"{name}={value}" for name, value in self.http.cookies.items())

    async def attach(self, data: bytes) -> str:
        answer = await self.http.post("/media", files={"file": ("photo.jpg", data, "image/jpeg")},
                                      headers={"X-CSRF-Token": self.csrf, "Accept": "application/json"})  # fmt: skip
        assert answer.status_code == 202, answer.text
        media_id = str(answer.json()["id"])
        for _ in range(1200):  # its job runs in the server: polled, as the composer does
            if (await self.http.get(f"/media/{media_id}")).json()["state"] != "processing":
                return media_id
            await asyncio.sleep(0.05)
        raise RuntimeError(f"media {media_id} was not processed within a minute")


def photo(n: int) -> bytes:
    image = Image.linear_gradient("L").resize((1600, 1200)).convert("RGB")
    image.paste(((n * 37) % 256, 90, 160), (0, 0, 800, 600))
    out = io.BytesIO()
    image.save(out, "JPEG", quality=85)
    return out.getvalue()


async def setup(base: str) -> dict[str, str]:
    """Two authors, one with an image on each post; two readers, one following each. Their cookies, by page."""
    pics, plain, sees_pics, sees_plain = (Person(base, n) for n in ("pics", "plain", "seespics", "seesplain"))
    for person in (pics, plain, sees_pics, sees_plain):
        await person.register()
    for reader, author in ((sees_pics, pics), (sees_plain, plain)):
        assert (await reader.post(f"/@{author.name}/follow", {})).status_code == 303
    for n in range(POSTS):
        text = f"Post number {n}: a few words about the day, the weather, and what comes next."
        media_id = await pics.attach(photo(n))
        made = await pics.post("/posts", {"status": text, "media_0": media_id, "alt_0": f"a gradient, number {n}"})
        assert made.status_code == 303, made.text
        assert (await plain.post("/posts", {"status": text})).status_code == 303
    await asyncio.sleep(1)  # the fan-out jobs put the posts in the readers' home timelines
    pages = {"with images": sees_pics, "without images": sees_plain}
    for label, reader in pages.items():
        body = (await reader.get("/")).text
        assert body.count('<article class="post') == POSTS, (label, body.count('<article class="post'))
        assert body.count('class="media-item"') == (POSTS if label == "with images" else 0), label
    cookies = {label: reader.cookie() for label, reader in pages.items()}
    for person in (pics, plain, sees_pics, sees_plain):
        await person.http.aclose()
    return cookies


async def measure(seconds: int, rounds: int, connections: int) -> dict[str, object]:
    cores = Cores.split()
    with server(cores) as port:
        base = f"http://{HOST}:{port}"
        cookies = await setup(base)
        sizes = {}
        async with httpx.AsyncClient(base_url=base) as http:
            for label, cookie in cookies.items():
                sizes[label] = len((await http.get("/", headers={"Cookie": cookie})).content)
        client = cores.client if cores.pinned else None
        for cookie in cookies.values():  # warm: frames drawn and cached, code paths hot
            await run_wrk(port, "/", {"Cookie": cookie}, seconds=1, connections=connections, cpus=client)
        rps: dict[str, list[float]] = {label: [] for label in cookies}
        for _ in range(rounds):
            for label, cookie in cookies.items():
                found = await run_wrk(port, "/", {"Cookie": cookie}, seconds=seconds, connections=connections,
                                      cpus=client)  # fmt: skip
                if found.errors:
                    raise RuntimeError(f"{label}: {found.errors} errors under load")
                rps[label].append(found.rps)
    medians = {label: statistics.median(values) for label, values in rps.items()}
    ratio = medians["with images"] / medians["without images"]
    return {
        "posts": POSTS,
        "seconds": seconds,
        "rounds": rounds,
        "connections": connections,
        "pinned": cores.pinned,
        "page_bytes": sizes,
        "pages_per_second": {label: round(value, 1) for label, value in medians.items()},
        "ratio": round(ratio, 3),
        "target": TARGET,
        "met": ratio >= TARGET,
        "samples": {label: [round(v, 1) for v in values] for label, values in rps.items()},
    }


def table(result: dict[str, object]) -> str:
    per_second: dict[str, float] = result["pages_per_second"]  # type: ignore[assignment]
    sizes: dict[str, int] = result["page_bytes"]  # type: ignore[assignment]
    return "\n".join([
        "| metric | with images | without images (peer) | ratio | target | met |",
        "| --- | --- | --- | --- | --- | --- |",
        f"| home page of {result['posts']} posts, pages per second | {per_second['with images']} | "
        f"{per_second['without images']} | {result['ratio']} | >= {TARGET} | {'yes' if result['met'] else '**no**'} |",
        f"| page size, bytes | {sizes['with images']} | {sizes['without images']} | | | |",
    ])  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.media_pages", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.seconds < 1 or args.rounds < 1 or args.connections < 1:
        parser.error("--seconds, --rounds and --connections must be at least 1")
    if wrk_path() is None:
        parser.exit(2, "python -m bench.media_pages: wrk is not installed (apt-get install wrk)\n")
    result = asyncio.run(measure(args.seconds, args.rounds, args.connections))
    text = table(result)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "media_pages.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "media_pages.md").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
