"""The ``cipherfeed`` command. Errors are one line on stderr and a non-zero exit."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import resource
import shutil
import sys
import tempfile
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy.exc import SQLAlchemyError

from feed import db
from feed.audit.report import PLACES as AUDIT_PLACES
from feed.errors import DomainError
from feed.logs import configure as configure_logs
from feed.settings import ConfigError, Settings, load_settings

T = TypeVar("T")


class CommandError(Exception):
    pass


def _prepare(settings: Settings) -> None:
    """Embedded mode's first run: the data dir, then the keys (created 0600)."""
    from feed.keyfile import load_ring, load_secret

    if settings.is_sqlite:
        settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    load_ring(settings, create=settings.is_sqlite)
    load_secret(settings, create=settings.is_sqlite)


async def _migrate(settings: Settings) -> None:
    engine = db.make_engine(settings.database_url)
    try:
        await db.upgrade(engine)
    finally:
        await engine.dispose()


async def _with_services(settings: Settings, work: Callable[[Any], Awaitable[T]]) -> T:
    """Run ``work(services)`` with the services the server opens (``feed.runtime``), one setup path for both."""
    from feed.runtime import open_runtime

    _prepare(settings)
    if settings.is_sqlite:
        await _migrate(settings)
    async with open_runtime(settings, "cli") as runtime:
        return await work(runtime.services)


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    if args.workers > 1 and settings.redis_url is None:
        # Each process has its own L1; without Redis they would not hear of each other's writes.
        raise CommandError("--workers above 1 needs CIPHERFEED_REDIS_URL (the processes share invalidations there)")
    _prepare(settings)
    asyncio.run(_migrate(settings))
    where = "SQLite at " + settings.database_url.split("///", 1)[-1] if settings.is_sqlite else "PostgreSQL"
    print(f"cipherfeed: serving on http://{args.host}:{args.port} ({where})", flush=True)
    from feed.metrics import use_directory

    # Several processes behind one port: /metrics, answered by any of them, shows them all (feed.metrics).
    shared = Path(tempfile.mkdtemp(prefix="cipherfeed-metrics-")) if args.workers > 1 else None
    use_directory(shared)
    try:
        _serve(args, settings)
    finally:
        if shared is not None:
            shutil.rmtree(shared, ignore_errors=True)
    return 0


def no_core_dumps() -> None:
    """A crashing server or worker writes no core file: one would hold the keys and texts in its memory."""
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def _serve(args: argparse.Namespace, settings: Settings) -> None:
    import uvicorn

    no_core_dumps()  # inherited by the worker processes of --workers

    uvicorn.run(
        "feed.app:asgi_factory",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        proxy_headers=True,
        forwarded_allow_ips=settings.forwarded_allow_ips,
        log_level=settings.log_level,
        access_log=not args.no_access_log,
        server_header=False,
        # Limits uvicorn lacks (head size and count, slow heads and bodies): feed.web.protocol.
        http="feed.web.protocol:GuardedHttpTools",
        limit_concurrency=settings.max_connections,
        timeout_keep_alive=settings.keepalive_seconds,
    )


def cmd_db_upgrade(args: argparse.Namespace, settings: Settings) -> int:
    _prepare(settings)
    asyncio.run(_migrate(settings))
    print("cipherfeed: database is up to date")
    return 0


def _read_password(args: argparse.Namespace) -> str:
    if args.password_stdin or not sys.stdin.isatty():
        line = sys.stdin.readline()
        return line.rstrip("\r\n")
    first = getpass.getpass("Password: ")
    if first != getpass.getpass("Password again: "):
        raise CommandError("the passwords differ")
    return first


def cmd_users_create(args: argparse.Namespace, settings: Settings) -> int:
    from feed.services import accounts

    password = _read_password(args)
    user = asyncio.run(
        _with_services(settings, lambda svc: accounts.register(svc, args.name, password, args.email or ""))
    )
    print(f"cipherfeed: created @{user.username} (id {user.id})")
    return 0


def cmd_users_token(args: argparse.Namespace, settings: Settings) -> int:
    from feed.services import accounts

    token = asyncio.run(_with_services(settings, lambda svc: accounts.create_token(svc, args.name, args.label)))
    print(token)
    return 0


def cmd_users_delete(args: argparse.Namespace, settings: Settings) -> int:
    """Crypto-shred an account (``feed.services.erasure``); asks to type the name again when run at a terminal."""
    from feed.services import erasure

    if not args.yes and sys.stdin.isatty():
        print(f"Erasing @{args.name} destroys their keys: none of their posts can be read again. It cannot be undone.")
        typed = input("Type the username again to confirm: ")
        if typed.strip().lstrip("@").lower() != args.name.strip().lstrip("@").lower():
            raise CommandError("the names differ; nothing was changed")
    receipt = asyncio.run(_with_services(settings, lambda svc: erasure.erase_user(svc, args.name)))
    print(
        f"cipherfeed: erased @{receipt.username}: {len(receipt.keys)} key(s) destroyed, {receipt.sessions} "
        f"session(s) and {receipt.tokens} token(s) ended, {receipt.jobs} pending job(s) dropped (receipt "
        f"{receipt.id}); their posts are unreadable now and go with the next purge_erased job "
        "(cipherfeed jobs run purge_erased)"
    )
    return 0


def cmd_keys_status(args: argparse.Namespace, settings: Settings) -> int:
    from feed.services import keystatus

    report = asyncio.run(_with_services(settings, keystatus.status))
    print(keystatus.format_report(report))
    return 0


def cmd_keys_generate(args: argparse.Namespace, settings: Settings) -> int:
    from crypto import RootKeyRing
    from feed.keyfile import write_new

    ring = RootKeyRing.generate()
    if args.out == "-":
        print(ring.to_json())
        return 0
    from pathlib import Path

    path = Path(args.out)
    if path.exists():
        raise CommandError(f"{path} exists; refusing to overwrite a root key")
    write_new(path, ring.to_json())
    print(f"cipherfeed: wrote a new root key to {path} (mode 0600); keep a copy somewhere safe")
    return 0


def _ring_out(settings: Settings) -> Callable[[str], None]:
    """Where the keys commands talk: stdout, unless stdout carries a new ring for CIPHERFEED_ROOT_KEY."""
    from feed.keyfile import ring_file

    stream = sys.stdout if ring_file(settings) is not None else sys.stderr
    return lambda text: print(text, file=stream, flush=True)


def _save_ring(settings: Settings, ring: Any, *, expected: Any) -> str:
    """Put ``ring`` where the ring came from: the key file, or (from the environment) standard output, for the
    operator to put in CIPHERFEED_ROOT_KEY. Says where it went."""
    from feed.keyfile import replace_ring, ring_file

    path = ring_file(settings)
    if path is None:
        print(ring.to_json(), flush=True)
        return "the new ring is on standard output: put it in CIPHERFEED_ROOT_KEY"
    replace_ring(path, ring, expected=expected)
    return f"saved in {path}"


def cmd_keys_rotate(args: argparse.Namespace, settings: Settings) -> int:
    from feed.keyfile import load_ring
    from feed.services import rotation
    from feed.services.jobs import run_maintenance
    from jobs.registry import maintenance

    _prepare(settings)
    ring = load_ring(settings, create=False)
    new, step = rotation.next_ring(ring, one_step=args.one_step)
    say = _ring_out(settings)
    if step == "add":
        version = max(new.versions)
        behind = asyncio.run(_with_services(settings, lambda svc: rotation.not_under(svc, ring.primary)))
        if behind:
            raise CommandError(
                f"{behind} user keys and email indexes are not under the primary root key version {ring.primary} "
                "yet; finish the last rotation first: `cipherfeed jobs run rewrap_user_keys`"
            )
        if args.dry_run:
            say(f"cipherfeed: would add root key version {version}, decrypt-only (nothing is rewrapped until then)")
            return 0
        where = _save_ring(settings, new, expected=ring)
        say(f"cipherfeed: added root key version {version}, decrypt-only ({where}).")
        say(
            "Next: restart every cipherfeed process (serve, worker) so that each one can read keys wrapped under it, "
            "then run `cipherfeed keys rotate` again to promote it and rewrap the user keys."
        )
        return 0
    if not args.dry_run:
        say(f"cipherfeed: root key version {new.primary} is the primary ({_save_ring(settings, new, expected=ring)})")
    job = maintenance("rewrap_user_keys")

    async def rewrap(svc: Any) -> Any:
        svc.keys.use_ring(new)
        return await run_maintenance(svc, job, dry_run=args.dry_run, on_progress=_bar(job.name))

    run = asyncio.run(_with_services(settings, rewrap))
    if sys.stderr.isatty():
        print(file=sys.stderr)
    if args.dry_run:
        say(
            f"cipherfeed: would promote root key version {new.primary}; {job.name} would change: "
            f"{run.summary() or 'nothing'}"
        )
        return 0
    say(f"cipherfeed: {job.name} changed: {run.summary() or 'nothing'}")
    older = ", ".join(str(v) for v in new.versions if v != new.primary)
    say(
        f"Next: restart every cipherfeed process so that new user keys are wrapped under version {new.primary}; "
        f"then `cipherfeed keys status` (and `cipherfeed jobs run {job.name}` for keys wrapped meanwhile) and "
        f"`cipherfeed keys retire VERSION` for the versions no key uses any more ({older})."
    )
    return 0


def _root_version(raw: str) -> int:
    if not raw.isdecimal() or not 1 <= int(raw) <= 2**32 - 1:
        raise CommandError(f"VERSION must be a root key version number (1, 2, ...), not {raw[:20]!r}")
    return int(raw)


def cmd_keys_retire(args: argparse.Namespace, settings: Settings) -> int:
    from feed.keyfile import load_ring, replace_ring, ring_file
    from feed.services import rotation

    version = _root_version(args.version)
    _prepare(settings)
    ring = load_ring(settings, create=False)
    listed = ", ".join(map(str, ring.versions))
    if version not in ring.versions:
        raise CommandError(f"root key version {version} is not in the key ring (versions: {listed})")
    if version == ring.primary:
        raise CommandError(f"root key version {version} is the primary; `cipherfeed keys rotate` promotes another")
    new = ring.retire(version)
    path = ring_file(settings)

    async def retire(svc: Any) -> str:
        used = await rotation.root_version_use(svc, version)
        if used:
            raise CommandError(
                f"root key version {version} still wraps or keys {used} user keys and email indexes; run "
                "`cipherfeed jobs run rewrap_user_keys` once every process runs with the promoted ring, then retire it"
            )
        where = _save_ring(settings, new, expected=ring)
        if path is not None and (late := await rotation.root_version_use(svc, version)):
            replace_ring(path, ring, expected=new)  # a process still wraps under it: put it back
            raise CommandError(
                f"a process wrote {late} new user keys or email indexes under version {version} meanwhile; the ring "
                "is unchanged: restart every process with the promoted ring first"
            )
        return where

    where = asyncio.run(_with_services(settings, retire))
    say = _ring_out(settings)
    say(f"cipherfeed: retired root key version {version} ({where}).")
    say("Next: restart every cipherfeed process so that none keeps it in memory.")
    return 0


def cmd_keys_rotate_user(args: argparse.Namespace, settings: Settings) -> int:
    from feed.errors import NotFound
    from feed.services import accounts, rotation
    from feed.services.jobs import run_maintenance

    if bool(args.name) == args.all:
        raise CommandError("name one user, or give --all")

    async def rotate(svc: Any) -> Any:
        if args.all:
            job = rotation.new_user_rotation()
        else:
            try:
                user = await accounts.find_user(svc, args.name)
            except NotFound:
                raise CommandError(f"no user named {args.name[:40]!r}") from None
            job = rotation.user_rotation(user.id, user.key_version)
        return job, await run_maintenance(svc, job, dry_run=args.dry_run, on_progress=_bar(job.name))

    job, run = asyncio.run(_with_services(settings, rotate))
    if sys.stderr.isatty():
        print(file=sys.stderr)
    verb = "would change" if args.dry_run else "changed"
    print(f"cipherfeed: {job.name} {verb}: {run.summary() or 'nothing'}")
    return 0


def cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    if settings.redis_url is None:
        raise CommandError(
            "the worker needs CIPHERFEED_REDIS_URL; in the embedded mode the server runs its jobs itself"
        )
    from feed.metrics import use_directory
    from feed.queue import arq_settings
    from jobs.worker import Worker, WorkerSettings

    use_directory(None)  # one process: its own metrics, on its own endpoint (CIPHERFEED_WORKER_METRICS)

    no_core_dumps()
    configure_logs(settings.log_level)
    _prepare(settings)
    asyncio.run(_migrate(settings))
    options = {k: v for k, v in vars(WorkerSettings).items() if not k.startswith("_")}
    options["job_timeout"] = settings.job_timeout
    # arq would try Redis a few times at start and give up; the worker waits for it instead (and says so once).
    assert settings.queue_redis_url is not None  # set whenever redis_url is (settings check it)
    redis = arq_settings(settings.queue_redis_url)
    redis.conn_retries = 0
    print("cipherfeed: worker started", flush=True)
    worker = Worker(**options, redis_settings=redis, ctx={"settings": settings})
    worker.run()
    return 0


def cmd_audit(args: argparse.Namespace, settings: Settings) -> int:
    from feed.audit.report import Progress
    from feed.audit.run import audit

    only = [p.strip() for p in (args.only or "").split(",") if p.strip()]
    if unknown := [p for p in only if p not in AUDIT_PLACES]:
        raise CommandError(f"unknown place {unknown[0]!r}; choose from {', '.join(AUDIT_PLACES)}")
    if any(len(c) < 8 for c in args.canary):
        raise CommandError("a canary must be at least 8 characters (shorter ones match by chance)")
    report = asyncio.run(audit(settings, args.canary, args.log_file, only, Progress()))
    if args.json:
        print(json.dumps(report.as_json(), indent=2))
    else:
        report.write(sys.stdout)
    return report.code


def cmd_jobs_list(args: argparse.Namespace, settings: Settings) -> int:
    from jobs.registry import MAINTENANCE, QUEUED

    print("maintenance jobs (cipherfeed jobs run NAME [--dry-run]):")
    for job in MAINTENANCE.values():
        print(f"  {job.name:<24} {job.description}  [{_schedule(job)}]")
    print("queued jobs (started by the server, ids only):")
    for name in QUEUED:
        print(f"  {name}")
    return 0


def _schedule(job: Any) -> str:
    if job.minute is None:
        return "by hand"
    minutes = ",".join(f":{m:02d}" for m in sorted(job.minute))
    if job.hour is None:
        return f"hourly at {minutes}"
    return "daily at " + ", ".join(f"{h:02d}{minutes}" for h in sorted(job.hour))


def _bar(name: str) -> Callable[[int, int | None], None]:
    tty = sys.stderr.isatty()

    def show(done: int, total: int | None) -> None:
        if total:
            filled = min(30, 30 * done // max(total, 1))
            line = f"{name} [{'#' * filled}{'.' * (30 - filled)}] {done}/{total}"
        else:
            line = f"{name}: {done} done"
        print(("\r" + line) if tty else line, end="" if tty else "\n", file=sys.stderr, flush=True)

    return show


def cmd_jobs_run(args: argparse.Namespace, settings: Settings) -> int:
    from feed.services.jobs import run_maintenance
    from jobs.registry import maintenance

    try:
        job = maintenance(args.name)
    except LookupError as exc:
        raise CommandError(str(exc)) from None
    run = asyncio.run(
        _with_services(
            settings, lambda svc: run_maintenance(svc, job, dry_run=args.dry_run, on_progress=_bar(job.name))
        )
    )
    if sys.stderr.isatty():
        print(file=sys.stderr)
    verb = "would change" if args.dry_run else "changed"
    print(f"cipherfeed: {job.name} {verb}: {run.summary() or 'nothing'}")
    return 0


def cmd_jobs_status(args: argparse.Namespace, settings: Settings) -> int:
    from feed.services import jobs as job_service
    from jobs.registry import MAINTENANCE

    scheduled = [job.name for job in MAINTENANCE.values()]
    report = asyncio.run(_with_services(settings, lambda svc: job_service.status(svc, scheduled)))
    if settings.redis_url is None:
        print("queue: embedded mode (the server runs queued jobs itself)")
    else:
        print(f"queue: {report.waiting if report.waiting is not None else 'unknown (Redis unavailable)'} waiting")
    print(f"running: {len(report.running)}")
    for run in report.running:
        print(f"  {run.name} {run.args} since {run.started_at:%Y-%m-%d %H:%M:%S} ({run.done}/{run.total or '?'})")
    print(f"failed (latest {len(report.failed)}):")
    for run in report.failed:
        print(f"  {run.name} {run.args} at {run.started_at:%Y-%m-%d %H:%M:%S}: {run.error}")
    print("maintenance jobs, last run:")
    for job in MAINTENANCE.values():
        last = report.last.get(job.name)
        when = f"{last.started_at:%Y-%m-%d %H:%M:%S} {last.state} ({last.changed or 'nothing'})" if last else "never"
        print(f"  {job.name:<24} [{_schedule(job)}] {when}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cipherfeed", description="A social timeline that stores only encrypted posts."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the web server (applies migrations first)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=int, default=1, help="web processes (default 1)")
    serve.add_argument("--no-access-log", action="store_true", help="do not log each request")
    serve.set_defaults(func=cmd_serve)

    dbp = sub.add_parser("db", help="database schema").add_subparsers(
        dest="db_command", required=True, metavar="ACTION"
    )
    dbp.add_parser("upgrade", help="apply Alembic migrations").set_defaults(func=cmd_db_upgrade)

    users = sub.add_parser("users", help="manage accounts").add_subparsers(
        dest="users_command", required=True, metavar="ACTION"
    )
    create = users.add_parser("create", help="create an account (password from the prompt or stdin)")
    create.add_argument("name")
    create.add_argument("--email", default="")
    create.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    create.set_defaults(func=cmd_users_create)
    token = users.add_parser("token", help="print a new personal access token for the API")
    token.add_argument("name")
    token.add_argument("--label", default="personal access token")
    token.set_defaults(func=cmd_users_token)
    delete = users.add_parser("delete", help="erase an account: destroy its keys (its posts become unreadable)")
    delete.add_argument("name")
    delete.add_argument("--yes", action="store_true", help="do not ask to confirm at a terminal")
    delete.set_defaults(func=cmd_users_delete)

    keys = sub.add_parser("keys", help="encryption keys").add_subparsers(
        dest="keys_command", required=True, metavar="ACTION"
    )
    keys.add_parser("status", help="root key versions and how many keys use each").set_defaults(func=cmd_keys_status)
    gen = keys.add_parser("generate", help="write a new root key file (for the scaled mode)")
    gen.add_argument("--out", required=True, help="file to create, or - for standard output")
    gen.set_defaults(func=cmd_keys_generate)
    rotate = keys.add_parser("rotate", help="root key rotation: add a version, then promote it and rewrap user keys")
    rotate.add_argument("--one-step", action="store_true", help="add and promote at once (no other process running)")
    rotate.add_argument("--dry-run", action="store_true", help="say what it would do, change nothing")
    rotate.set_defaults(func=cmd_keys_rotate)
    retire = keys.add_parser("retire", help="remove a root key version that no user key uses any more")
    retire.add_argument("version", metavar="VERSION")
    retire.set_defaults(func=cmd_keys_retire)
    rotate_user = keys.add_parser("rotate-user", help="a new key for a user (or --all), their posts rewrapped")
    rotate_user.add_argument("name", nargs="?", default="")
    rotate_user.add_argument("--all", action="store_true", help="every user")
    rotate_user.add_argument("--dry-run", action="store_true", help="count what it would change, change nothing")
    rotate_user.set_defaults(func=cmd_keys_rotate_user)

    sub.add_parser("worker", help="run background jobs and their cron schedule (scaled mode)").set_defaults(
        func=cmd_worker
    )
    audit = sub.add_parser(
        "audit",
        help="look for plaintext in the database, Redis, logs and settings (exit 0 clean, 1 findings, 2 not checked)",
    )
    audit.add_argument(
        "--canary",
        action="append",
        default=[],
        metavar="TEXT",
        help="a text you posted: searched for in every encoding (repeat for more)",
    )
    audit.add_argument("--json", action="store_true", help="the report as JSON on standard output")
    audit.add_argument(
        "--log-file",
        action="append",
        default=[],
        type=Path,
        metavar="PATH",
        help="a log file to search (repeat for more)",
    )
    audit.add_argument("--only", metavar="PLACES", help="a comma-separated list of: " + ", ".join(AUDIT_PLACES))
    audit.set_defaults(func=cmd_audit)
    jobs = sub.add_parser("jobs", help="background and maintenance jobs").add_subparsers(
        dest="jobs_command", required=True, metavar="ACTION"
    )
    jobs.add_parser("list", help="every job, what it does and when it runs").set_defaults(func=cmd_jobs_list)
    run = jobs.add_parser("run", help="run a maintenance job now, with progress")
    run.add_argument("name")
    run.add_argument("--dry-run", action="store_true", help="count what it would change, change nothing")
    run.set_defaults(func=cmd_jobs_run)
    jobs.add_parser("status", help="queue depth, running and failed jobs, last runs").set_defaults(func=cmd_jobs_status)
    return parser


def main(argv: list[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    """The command: ``argv`` (default ``sys.argv[1:]``), settings from ``env`` (default the environment)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = load_settings(env)
        result: int = args.func(args, settings)
        return result
    except (ConfigError, CommandError, DomainError) as exc:
        print(f"cipherfeed: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except OSError as exc:
        print(
            f"cipherfeed: error: {exc.strerror or exc} ({getattr(exc, 'filename', '') or ''})",
            file=sys.stderr,
        )
        return 1
    except SQLAlchemyError as exc:
        # The driver's own first line names the problem (refused connection, missing role); the statement's
        # parameters are hidden by the engine.
        reason = str(getattr(exc, "orig", None) or exc).splitlines()[0][:300]
        print(f"cipherfeed: error: database: {reason}", file=sys.stderr)
        return 1
    except Exception as exc:
        print(f"cipherfeed: error: unexpected {type(exc).__name__}", file=sys.stderr)
        return 1
