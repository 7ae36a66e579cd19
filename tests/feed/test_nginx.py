"""The scaled mode's nginx recipe, ``scripts/nginx/cipherfeed.conf``, run as it is written (only its ports, names and
paths rendered for the test) in front of two real ``cipherfeed serve`` processes on one database, one Redis and one
data directory: it spreads requests over both, tells them the request came over HTTPS, streams live events and
WebSockets as they happen, stores static files and public images once per burst of readers (never a private
image), and refuses bodies over its limits before reading them."""

from __future__ import annotations

import asyncio
import io
import json
import os
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.conftest import BACKEND, PASSWORD, REPO, Browser
from tests.feed.processes import LIMITS, Cluster, free_port, metric
from tests.feed.sse import open_stream, post_id_of
from tests.feed.test_live import api_token
from tests.feed.web.test_api_media import encoded
from tests.feed.web.test_media_pages import attach

NGINX = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")
CURL = shutil.which("curl")
RECIPE = REPO / "scripts" / "nginx" / "cipherfeed.conf"
REQUESTS = "cipherfeed_http_requests_total"
SEVERE = ("crit", "alert", "emerg")
MEDIA_ROUTE = "/media/{media_id}/{variant}"

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.skipif(BACKEND != "postgresql", reason="real processes, once, in the PostgreSQL pass"),
    pytest.mark.skipif(NGINX is None, reason="nginx is not installed (apt-get install nginx)"),
]

# The test's own http {} around the recipe, as the distro's nginx.conf wraps conf.d/*.conf. gzip and the ssl_*
# lines are what Debian's sets at this level: a recipe that set them there too would fail `nginx -t` here as there.
MAIN = """\
{user}
worker_processes 2;
pid {root}/nginx.pid;
error_log {root}/error.log warn;
events {{
    worker_connections 1024;
}}
http {{
    include /etc/nginx/mime.types;
    default_type application/octet-stream;
    gzip on;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_prefer_server_ciphers on;
    log_format upstreams '$request_method $request_uri $status $upstream_addr $upstream_cache_status';
    access_log {root}/access.log upstreams;
    client_body_temp_path {root}/body;
    proxy_temp_path {root}/proxy;
    fastcgi_temp_path {root}/fastcgi;
    uwsgi_temp_path {root}/uwsgi;
    scgi_temp_path {root}/scgi;

{recipe}
}}
"""


def render(recipe: str, substitutions: dict[str, str]) -> str:
    """The recipe with each placeholder replaced; each must be there (a test of another file is no test)."""
    for old, new in substitutions.items():
        assert old in recipe, f"{RECIPE} no longer has {old!r}: update the test's substitutions"
        recipe = recipe.replace(old, new)
    return recipe


def location(recipe: str, prefix: str) -> str:
    start = recipe.index(f"location {prefix} {{")
    return recipe[start : recipe.index("}", start)]


def self_signed(root: Path) -> tuple[Path, Path]:
    cert, key = root / "fullchain.pem", root / "privkey.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost", "-days", "1",
         "-addext", "subjectAltName=DNS:localhost", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


@dataclass
class Nginx:
    """nginx running the recipe in front of the cluster's processes a and b."""

    https: str  # https://localhost:PORT
    http: str
    tls: ssl.SSLContext  # trusts the test's certificate (and only it)
    root: Path

    async def logged(self, uri: str, count: int) -> list[list[str]]:
        """The access log's ``count`` lines for ``uri``: method, uri, status, upstream address, cache status.
        (nginx writes a line just after the response, so it is waited for.)"""
        deadline = time.monotonic() + 5
        while True:
            lines = [line.split() for line in (self.root / "access.log").read_text().splitlines()]
            found = [line for line in lines if line[1] == uri]
            if len(found) >= count or time.monotonic() > deadline:
                assert len(found) == count, found
                return found
            await asyncio.sleep(0.02)


@dataclass
class Front:
    """Clients of the site through nginx."""

    nginx: Nginx
    clients: list[httpx.AsyncClient] = field(default_factory=list)

    def client(self) -> httpx.AsyncClient:
        http = httpx.AsyncClient(base_url=self.nginx.https, verify=self.nginx.tls, limits=LIMITS, timeout=30)
        self.clients.append(http)
        return http

    async def person(self, name: str) -> Browser:
        """Registered through nginx, as a browser would; the session cookie says the app saw HTTPS."""
        browser = Browser(self.client())
        await browser.get("/register")
        answer = await browser.post("/register", {"username": name, "password": PASSWORD, "password_confirm": PASSWORD})
        assert answer.status_code == 303, answer.text
        session = [c for c in answer.headers.get_list("set-cookie") if c.startswith("__Host-cf_session=")]
        assert session and "; secure" in session[0].lower(), answer.headers.get_list("set-cookie")
        browser.username = name
        await browser.get("/")
        return browser


@pytest.fixture
def nginx(cluster: Cluster, tmp_path: Path) -> Iterator[Nginx]:
    assert NGINX is not None
    root = tmp_path / "nginx"
    (root / "acme" / ".well-known" / "acme-challenge").mkdir(parents=True)
    (root / "acme" / ".well-known" / "acme-challenge" / "probe").write_text("acme-probe")
    cert, key = self_signed(root)
    https, http = free_port(), free_port()
    a, b = cluster.procs["a"], cluster.procs["b"]
    recipe = render(
        RECIPE.read_text(),
        {
            "server 127.0.0.1:8001;": f"server 127.0.0.1:{a.port};",
            "server 127.0.0.1:8002;": f"server 127.0.0.1:{b.port};",
            "listen 443 ": f"listen 127.0.0.1:{https} ",
            "listen [::]:443 ": f"listen [::1]:{https} ",
            "listen 80;": f"listen 127.0.0.1:{http};",
            "listen [::]:80;": f"listen [::1]:{http};",
            "cipherfeed.example.org": "localhost",
            "/etc/ssl/cipherfeed/fullchain.pem": str(cert),
            "/etc/ssl/cipherfeed/privkey.pem": str(key),
            "/var/cache/nginx/cipherfeed": str(root / "cache"),
            "/var/www/cipherfeed-acme": str(root / "acme"),
        },
    )
    user = "user root;" if os.geteuid() == 0 else ""  # workers as nobody could not read the test's directory
    conf = root / "nginx.conf"
    conf.write_text(MAIN.format(user=user, root=root, recipe=recipe))
    command = [NGINX, "-p", str(root), "-e", str(root / "error.log"), "-c", str(conf)]
    checked = subprocess.run([*command, "-t"], capture_output=True, text=True)
    assert checked.returncode == 0, f"nginx -t:\n{checked.stderr}"
    with (root / "nginx.out").open("wb") as out:
        proc = subprocess.Popen([*command, "-g", "daemon off;"], stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", https), timeout=0.5).close()
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, (root / "error.log").read_text()
                time.sleep(0.02)
        tls = ssl.create_default_context(cafile=str(cert))
        yield Nginx(f"https://localhost:{https}", f"http://localhost:{http}", tls, root)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
    # Refused bodies are logged as errors too; a request that failed on its way to a process, or worse, is not.
    logged = (root / "error.log").read_text().splitlines()
    errors = [line for line in logged if "upstream" in line or any(f"[{level}]" in line for level in SEVERE)]
    assert not errors, errors


@pytest.fixture
async def front(nginx: Nginx) -> AsyncIterator[Front]:
    made = Front(nginx)
    yield made
    for http in made.clients:
        await http.aclose()


async def served(cluster: Cluster, route: str, method: str = "GET") -> float:
    """How many requests for ``route`` the two processes answered, by their own metrics (read directly)."""
    return sum([metric(await cluster.metrics(where), REQUESTS, route=route, method=method) for where in ("a", "b")])


def noise_png(side: int) -> bytes:
    """A PNG that does not compress: about side * side * 3 bytes."""
    from PIL import Image

    out = io.BytesIO()
    Image.frombytes("RGB", (side, side), os.urandom(side * side * 3)).save(out, "PNG")
    return out.getvalue()


async def test_the_nginx_recipe_balances_streams_caches_and_limits(
    cluster: Cluster, nginx: Nginx, front: Front
) -> None:
    import websockets

    anonymous = front.client()

    # Requests go to both processes; the plain HTTP server only redirects (but for certbot's challenge files).
    before = {where: metric(await cluster.metrics(where), REQUESTS, route="/healthz") for where in ("a", "b")}
    for _ in range(8):
        assert (await anonymous.get("/healthz")).text == "ok"
    after = {where: metric(await cluster.metrics(where), REQUESTS, route="/healthz") for where in ("a", "b")}
    assert after["a"] > before["a"] and after["b"] > before["b"] and sum(after.values()) - sum(before.values()) == 8
    assert (await anonymous.get("/readyz")).text.splitlines()[0] == "ready"
    assert (await anonymous.get("/metrics")).status_code == 404, "each process is scraped on its own port"
    async with httpx.AsyncClient(base_url=nginx.http) as plain:
        moved = await plain.get("/public?page=2")
        assert moved.status_code == 301 and moved.headers["location"] == "https://localhost/public?page=2"
        assert (await plain.get("/.well-known/acme-challenge/probe")).text == "acme-probe"

    # X-Forwarded-Proto reached the app: the session cookie was Secure (Front.person), and the streaming address
    # is wss:// at the host and port the client used.
    alice, bob = await front.person("alice"), await front.person("bob")
    instance = (await anonymous.get("/api/v2/instance")).json()
    assert instance["configuration"]["urls"]["streaming"] == nginx.https.replace("https://", "wss://")
    if CURL is not None:  # browsers speak HTTP/2, where the Host nginx passes on comes from :authority
        command = [CURL, "-sS", "--http2", "--cacert", str(nginx.root / "fullchain.pem"), "-w", "\n%{http_version}"]
        done = await asyncio.to_thread(subprocess.run, [*command, f"{nginx.https}/api/v2/instance"],
                                       capture_output=True, text=True, check=True)  # fmt: skip
        body, _, version = done.stdout.rpartition("\n")
        assert version == "2" and json.loads(body)["configuration"]["urls"] == instance["configuration"]["urls"]

    # The page's live stream: its first bytes come at once, and a post made meanwhile arrives as an event.
    assert (await bob.post(f"/@{alice.username}/follow")).status_code == 303
    home = await bob.get("/")
    url = home.text.split('sse-connect="', 1)[1].split('"', 1)[0].replace("&amp;", "&")
    async with bob.http.stream("GET", url) as raw:
        assert raw.status_code == 200 and raw.headers["content-type"].startswith("text/event-stream")
        assert "content-encoding" not in raw.headers
        first = await asyncio.wait_for(anext(raw.aiter_raw()), 3)
        assert first.startswith(b"retry:"), first
    stream = await open_stream(bob.http, url)
    try:
        post = await alice.compose("through nginx")
        assert post_id_of(await stream.next("post", timeout=5)) == post
    finally:
        await stream.close()

    # Mastodon's streaming API: the WebSocket upgrade passes, and a public post arrives on it.
    token = await asyncio.to_thread(api_token, cluster.procs["a"], bob.username)
    assert (await anonymous.get("/api/v1/streaming/health")).text == "OK"
    ws_url = nginx.https.replace("https://", "wss://") + "/api/v1/streaming?stream=public"
    bearer = {"Authorization": f"Bearer {token}"}
    async with websockets.connect(ws_url, additional_headers=bearer, ssl=nginx.tls) as ws:
        await asyncio.sleep(0.5)  # the subscription is in
        post = await alice.compose("to the sockets")
        message = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert message["stream"] == ["public"] and message["event"] == "update", message
        assert json.loads(message["payload"])["id"] == str(post)

    # Static files: stored, and compressed on the way out; pages are never compressed (BREACH).
    css = [await anonymous.get("/static/css/app.css") for _ in range(2)]
    assert [r.status_code for r in css] == [200, 200] and css[1].headers["x-cache-status"] == "HIT"
    assert css[1].headers["content-encoding"] == "gzip" and css[1].text == css[0].text
    assert "content-encoding" not in (await alice.get("/")).headers

    # A public image: a burst of 20 readers without a cookie costs the app one request; a logged-in reader then
    # gets the same stored copy (Vary is ignored for /media/, see the recipe).
    public = await attach(alice, encoded("PNG"))
    await alice.compose("a picture for everyone", media_0=public, alt_0="a red half above a blue half")
    image = f"/media/{public}/small"
    await asyncio.gather(*(anonymous.get("/healthz") for _ in range(20)))  # 20 connections open: a real burst
    before_burst = await served(cluster, MEDIA_ROUTE)
    burst = await asyncio.gather(*(anonymous.get(image) for _ in range(20)))
    assert {r.status_code for r in burst} == {200} and len({r.content for r in burst}) == 1
    assert await served(cluster, MEDIA_ROUTE) - before_burst == 1
    statuses = sorted(line[4] for line in await nginx.logged(image, 20))
    assert statuses.count("MISS") == 1 and set(statuses) - {"MISS"} <= {"HIT", "UPDATING"}, statuses
    again = await alice.http.get(image)
    assert again.headers["x-cache-status"] == "HIT" and again.content == burst[0].content
    # A deleted post's image must leave the cache when its copy expires (the app's s-maxage, 60 s: too long to wait
    # for here). With use_stale updating, readers during each refresh would get the old copy for ever after.
    assert "proxy_cache_use_stale" not in location(RECIPE.read_text(), "/media/")

    # A followers-only image: passed through to its owner each time, never stored, so no one else gets it.
    private = await attach(alice, encoded("PNG", (300, 200)))
    await alice.compose("for followers", media_0=private, alt_0="a smaller picture", visibility="followers")
    image = f"/media/{private}/small"
    before_private = await served(cluster, MEDIA_ROUTE)
    for _ in range(2):
        own = await alice.http.get(image)
        assert own.status_code == 200 and own.headers["cache-control"].startswith("private")
        assert own.headers["x-cache-status"] == "MISS"
    stranger = await anonymous.get(image)
    assert stranger.status_code == 404 and stranger.headers["x-cache-status"] == "MISS"
    assert await served(cluster, MEDIA_ROUTE) - before_private == 3

    # Body limits: nginx refuses what the app would (its own 413 page: the app never sees the request), lets an
    # image upload through, and refuses one past the upload limit.
    posts_before = await served(cluster, "/posts", "POST")
    form = {"Content-Type": "application/x-www-form-urlencoded", "Origin": nginx.https}
    too_big = await alice.http.post("/posts", content=b"status=" + b"x" * 100_000, headers=form)
    assert too_big.status_code == 413 and "<center>nginx</center>" in too_big.text
    assert await served(cluster, "/posts", "POST") == posts_before
    picture = {"file": ("noise.png", noise_png(600), "image/png")}
    assert len(picture["file"][1]) > 1_000_000
    composer = {"X-CSRF-Token": alice.csrf, "Accept": "application/json"}
    for path, client, headers in (("/media", alice.http, composer), ("/api/v1/media", anonymous, bearer),
                                  ("/api/v2/media", anonymous, bearer)):  # fmt: skip
        uploaded = await client.post(path, files=picture, headers=headers)
        assert uploaded.status_code in (200, 202), (path, uploaded.text)
    uploads_before = await served(cluster, "/media", "POST")
    huge = await alice.http.post("/media", files={"file": ("huge.png", b"\0" * (18 << 20), "image/png")},
                                 headers=composer)  # fmt: skip
    assert huge.status_code == 413 and "<center>nginx</center>" in huge.text
    assert await served(cluster, "/media", "POST") == uploads_before
