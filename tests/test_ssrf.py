"""The SSRF guard on real sockets: what the daemon refuses to dial, and what it never follows.

Every test here runs under `loopback_only`, which makes any TCP connect to an address outside
127.0.0.0/8 and ::1 fail before it leaves the machine, so even a broken guard cannot reach a
public or internal address. Fake resolvers put a loopback answer first for the same reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult

from dispatcher.delivery import sender as sender_module
from dispatcher.delivery.netguard import (
    BlockedAddress,
    GuardedResolver,
    guarded_socket_factory,
    parse_networks,
)
from dispatcher.delivery.sender import Outcome, Sender, create_session
from dispatcher.manage import history
from dispatcher.settings import Settings
from tests.conftest import Cli, Receiver, add_webhook, deliver_all, fast_settings, publish

BODY = b'{"messageId":"m-1","type":"t.x","timestamp":"2024-01-02T03:04:05Z","data":{}}'
HEADERS = {"content-type": "application/json", "webhook-id": "m-1"}
REFUSED = (
    "is not a public address; to permit it, add its network to allowed_networks (for the daemon"
    " and the CLI alike), then resend the failed deliveries:"
    " dispatcher deliveries resend --status failed --since 24h"
)
WARNING = "which the daemon refuses to connect to (not a public address);"


def _is_loopback(host: str) -> bool:
    addr = ipaddress.ip_address(host.split("%", 1)[0])
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped.is_loopback
    return addr.is_loopback


@dataclass
class Dials:
    """Every TCP peer the tests tried to connect to, and those the safety net refused."""

    seen: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch: pytest.MonkeyPatch) -> Iterator[Dials]:
    """Refuse, and record, any TCP connect that would leave the machine."""
    dials = Dials()
    real_connect = socket.socket.connect

    def connect(sock: socket.socket, address: Any) -> None:
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            dials.seen.append(address[0])
            if not _is_loopback(address[0]):
                dials.refused.append(address[0])
                raise PermissionError(f"test safety net: refused to dial {address[0]}")
        real_connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    yield dials
    assert dials.refused == []


@pytest.fixture(autouse=True)
async def selector_loop() -> None:
    """The safety net patches socket.connect, which only asyncio's own loop goes through."""
    assert isinstance(asyncio.get_running_loop(), asyncio.SelectorEventLoop)


class FakeResolver(AbstractResolver):
    """Answer from a fixed table and record every name asked; never touches DNS."""

    def __init__(self, answers: dict[str, list[str]]) -> None:
        self.answers = answers
        self.calls: list[str] = []

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        self.calls.append(host)
        if host not in self.answers:
            raise OSError(f"no fake answer for {host}")
        return [
            ResolveResult(
                hostname=host,
                host=address,
                port=port,
                family=socket.AF_INET6 if ":" in address else socket.AF_INET,
                proto=0,
                flags=socket.AI_NUMERICHOST,
            )
            for address in self.answers[host]
        ]

    async def close(self) -> None:
        pass


@dataclass
class Listener:
    """A raw TCP server on 127.0.0.1 that counts accepted connections and answers 204."""

    port: int = 0
    accepted: int = 0
    request_lines: list[bytes] = field(default_factory=list)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            self.request_lines.append(head.split(b"\r\n", 1)[0])
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            await reader.readexactly(length)
            writer.write(
                b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            )
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@pytest.fixture
async def listener() -> AsyncIterator[Listener]:
    counter = Listener()
    server = await asyncio.start_server(counter.handle, "127.0.0.1", 0)
    counter.port = server.sockets[0].getsockname()[1]
    async with server:
        yield counter


@contextlib.asynccontextmanager
async def serve_receiver(host: str = "127.0.0.1") -> AsyncIterator[Receiver]:
    """Start another recording receiver (the conftest fixture gives one per test)."""
    rec = Receiver()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", rec._handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, 0)
        await site.start()
        rec.url = f"http://{host}:{runner.addresses[0][1]}"
        yield rec
    finally:
        await runner.cleanup()


@dataclass
class ForwardProxy:
    """An HTTP forward proxy stand-in: answers every request 200 and records what it was asked."""

    url: str = ""
    requests: list[tuple[str, str, str, bytes]] = field(default_factory=list)

    async def handle(self, request: web.BaseRequest) -> web.Response:
        body = await request.read()
        self.requests.append((request.method, request.raw_path, request.host, body))
        return web.Response(text="proxied")


@pytest.fixture
async def forward_proxy() -> AsyncIterator[ForwardProxy]:
    proxy = ForwardProxy()
    server = web.Server(proxy.handle, access_log=None)
    runner = web.ServerRunner(server)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    proxy.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    yield proxy
    await runner.cleanup()


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


async def send_once(settings: Settings, url: str, resolver: AbstractResolver | None) -> Outcome:
    """Make one attempt through the daemon's own session and sender."""
    async with asyncio.timeout(15), create_session(settings, resolver=resolver) as session:
        return await Sender(settings, session).send(url, HEADERS, BODY)


async def attempts_of(db: asyncpg.Pool) -> list[tuple[Any, ...]]:
    rows = await db.fetch(
        "SELECT attempt, response_status, error_kind, error_message FROM dispatcher.attempts"
        " ORDER BY id"
    )
    return [tuple(r) for r in rows]


async def delivery_state(db: asyncpg.Pool) -> tuple[Any, ...]:
    row = await db.fetchrow(
        "SELECT status, attempts, last_response_status, last_error_kind FROM dispatcher.deliveries"
    )
    assert row is not None
    return tuple(row)


def printed(address: str) -> str:
    """Return `address` as this Python prints it: 3.13 writes mapped IPv4 dotted, 3.11 in hex."""
    return str(ipaddress.ip_address(address))


MAPPED_LOOPBACK = printed("::ffff:127.0.0.1")
MAPPED_METADATA = printed("::ffff:169.254.169.254")

# (URL template, host as aiohttp prints it, exception, what the refusal names): an IP literal,
# a mapped IP literal and a name.
LOOPBACK_TARGETS = [
    ("http://127.0.0.1:{port}/", "127.0.0.1", "ClientConnectorError", "127.0.0.1"),
    ("http://[::ffff:127.0.0.1]:{port}/", MAPPED_LOOPBACK, "ClientConnectorError", MAPPED_LOOPBACK),
    ("http://localhost:{port}/", "localhost", "ClientConnectorDNSError", "localhost (127.0.0.1)"),
]


@pytest.mark.parametrize("template", [t for t, *_ in LOOPBACK_TARGETS])
async def test_loopback_target_is_refused_once_and_never_retried(
    db: asyncpg.Pool, dsn: str, receiver: Receiver, template: str
) -> None:
    await add_webhook(db, template.format(port=port_of(receiver.url)), ["t.x"])
    await publish(db, "t.x")

    await deliver_all(fast_settings(allowed_networks=()), dsn)

    assert receiver.requests == []
    assert [a[:3] for a in await attempts_of(db)] == [(1, None, "blocked_address")]
    assert await delivery_state(db) == ("failed", 1, None, "blocked_address")


async def test_a_refused_delivery_is_delivered_by_a_resend_after_the_allow_list_changes(
    db: asyncpg.Pool, dsn: str, receiver: Receiver
) -> None:
    """The way to recover that a blocked_address attempt's message names works."""
    await add_webhook(db, receiver.url, ["t.x"])
    await publish(db, "t.x")
    await deliver_all(fast_settings(allowed_networks=()), dsn)
    assert await delivery_state(db) == ("failed", 1, None, "blocked_address")

    async with db.acquire() as conn:
        assert await history.bulk_resend(conn, "failed", timedelta(hours=24), None, False) == (1, 1)
    await deliver_all(fast_settings(allowed_networks=("127.0.0.0/8",)), dsn)

    assert len(receiver.requests) == 1
    assert (
        await db.fetchval("SELECT count(*) FROM dispatcher.deliveries WHERE status = 'succeeded'")
        == 1
    )


@pytest.mark.parametrize(("template", "host", "error", "named"), LOOPBACK_TARGETS)
async def test_blocked_attempt_message_names_the_address_and_the_remedy(
    db: asyncpg.Pool, dsn: str, receiver: Receiver, template: str, host: str, error: str, named: str
) -> None:
    port = port_of(receiver.url)
    await add_webhook(db, template.format(port=port), ["t.x"])
    await publish(db, "t.x")

    await deliver_all(fast_settings(allowed_networks=()), dsn)

    [(_, _, _, message)] = await attempts_of(db)
    assert (
        message == f"{error}: Cannot connect to host {host}:{port} ssl:default [{named} {REFUSED}]"
    )


@pytest.mark.parametrize("template", [t for t, *_ in LOOPBACK_TARGETS])
async def test_allow_list_is_what_permits_loopback(
    db: asyncpg.Pool, dsn: str, receiver: Receiver, template: str
) -> None:
    await add_webhook(db, template.format(port=port_of(receiver.url)) + "hook", ["t.x"])
    await publish(db, "t.x")

    await deliver_all(fast_settings(allowed_networks=("127.0.0.0/8",)), dsn)

    assert [r.path for r in receiver.requests] == ["/hook"]
    assert await attempts_of(db) == [(1, 200, None, None)]
    assert await delivery_state(db) == ("succeeded", 1, 200, None)


# Metadata endpoints and CGNAT as IP literals: the resolver is never asked, so only the
# connect-time check stands between the URL and the network.
METADATA_URLS = [
    ("http://169.254.169.254/latest/meta-data/", "169.254.169.254"),
    ("http://[::ffff:169.254.169.254]/", MAPPED_METADATA),
    ("http://[::ffff:a9fe:a9fe]/", MAPPED_METADATA),
    ("http://[fd00:ec2::254]/", "fd00:ec2::254"),
    ("http://100.64.0.1/", "100.64.0.1"),
]


@pytest.mark.parametrize(("url", "dialed"), METADATA_URLS)
async def test_blocked_literal_is_refused_before_any_connect(
    monkeypatch: pytest.MonkeyPatch, url: str, dialed: str
) -> None:
    calls: list[tuple[str, bool]] = []

    def spying_factory(allowed: Any) -> Any:
        guard = guarded_socket_factory(allowed)

        def factory(addr_info: Any) -> socket.socket:
            host = addr_info[4][0]
            try:
                sock: socket.socket = guard(addr_info)
            except BlockedAddress:
                calls.append((host, True))
                raise
            calls.append((host, False))
            sock.close()  # the guard let it through: still never connect from a test
            raise OSError(f"test refused to connect to {host}")

        return factory

    monkeypatch.setattr(sender_module, "guarded_socket_factory", spying_factory)
    resolver = FakeResolver({})

    outcome = await send_once(fast_settings(allowed_networks=()), url, resolver)

    assert (outcome.ok, outcome.retryable, outcome.error_kind) == (False, False, "blocked_address")
    assert outcome.response_status is None
    assert calls == [(dialed, True)]
    assert resolver.calls == []


# (allowed networks, fake answers for mixed.test, the answer refused): each name has one answer
# the guard must refuse, and a loopback answer first, so a guard that judged only the first
# answer would reach the local receiver (and fail the test) instead of anything else.
MIXED_ANSWERS = [
    ((), ["127.0.0.1", "8.8.8.8"], "127.0.0.1"),
    (("127.0.0.0/8",), ["127.0.0.1", "8.8.8.8", "10.0.0.5"], "10.0.0.5"),
    (("127.0.0.0/8",), ["127.0.0.1", "169.254.169.254"], "169.254.169.254"),
    (("127.0.0.0/8",), ["127.0.0.1", "::ffff:a9fe:a9fe"], "::ffff:a9fe:a9fe"),
]


@pytest.mark.parametrize(("allowed", "answers", "refused"), MIXED_ANSWERS)
async def test_name_with_any_blocked_answer_is_refused(
    receiver: Receiver, allowed: tuple[str, ...], answers: list[str], refused: str
) -> None:
    resolver = FakeResolver({"mixed.test": answers})
    port = port_of(receiver.url)

    outcome = await send_once(
        fast_settings(allowed_networks=allowed), f"http://mixed.test:{port}/", resolver
    )

    assert (outcome.ok, outcome.retryable, outcome.error_kind) == (False, False, "blocked_address")
    assert outcome.response_status is None
    assert receiver.requests == []
    assert resolver.calls == ["mixed.test"]
    with pytest.raises(BlockedAddress) as info:
        await GuardedResolver(parse_networks(allowed), resolver).resolve("mixed.test", port)
    assert info.value.address == f"mixed.test ({refused})"


async def test_name_with_only_allowed_answers_is_delivered(
    receiver: Receiver, loopback_only: Dials
) -> None:
    """The control for the test above: the fake resolver route itself reaches the receiver."""
    resolver = FakeResolver({"mixed.test": ["127.0.0.1"]})
    url = f"http://mixed.test:{port_of(receiver.url)}/in"

    outcome = await send_once(fast_settings(allowed_networks=("127.0.0.0/8",)), url, resolver)

    assert (outcome.ok, outcome.response_status, outcome.error_kind) == (True, 200, None)
    assert [(r.path, r.body) for r in receiver.requests] == [("/in", BODY)]
    assert loopback_only.seen == ["127.0.0.1"]  # the safety net is on the sender's path


async def post(connector: aiohttp.TCPConnector, url: str) -> int:
    async with (
        asyncio.timeout(10),
        aiohttp.ClientSession(connector=connector, trust_env=False) as session,
        session.post(url, data=BODY) as resp,
    ):
        return resp.status


async def test_socket_factory_refuses_what_an_unguarded_resolver_returns(
    listener: Listener,
) -> None:
    """A name that resolves to loopback at connect time is refused by the peer check alone."""
    resolver = FakeResolver({"rebind.test": ["127.0.0.1"]})
    connector = aiohttp.TCPConnector(resolver=resolver, socket_factory=guarded_socket_factory(()))

    with pytest.raises(aiohttp.ClientConnectorError) as info:
        await post(connector, f"http://rebind.test:{listener.port}/")

    assert type(info.value) is aiohttp.ClientConnectorError
    assert isinstance(info.value.os_error, BlockedAddress)
    assert info.value.os_error.address == "127.0.0.1"
    assert resolver.calls == ["rebind.test"]
    assert listener.accepted == 0


async def test_resolver_guard_sees_names_only_and_socket_factory_covers_literals(
    listener: Listener,
) -> None:
    inner = FakeResolver({"rebind.test": ["127.0.0.1"]})
    connector = aiohttp.TCPConnector(
        resolver=GuardedResolver((), inner), socket_factory=guarded_socket_factory(())
    )
    literal = f"http://127.0.0.1:{listener.port}/"

    with pytest.raises(aiohttp.ClientConnectorDNSError) as by_name:
        await post(connector, f"http://rebind.test:{listener.port}/")
    connector = aiohttp.TCPConnector(
        resolver=GuardedResolver((), inner), socket_factory=guarded_socket_factory(())
    )
    with pytest.raises(aiohttp.ClientConnectorError) as by_literal:
        await post(connector, literal)

    assert isinstance(by_name.value.os_error, BlockedAddress)
    assert by_name.value.os_error.address == "rebind.test (127.0.0.1)"
    assert type(by_literal.value) is aiohttp.ClientConnectorError
    assert isinstance(by_literal.value.os_error, BlockedAddress)
    assert by_literal.value.os_error.address == "127.0.0.1"
    assert inner.calls == ["rebind.test"]
    assert listener.accepted == 0

    # Without the socket factory the literal goes straight past the resolver guard.
    connector = aiohttp.TCPConnector(resolver=GuardedResolver((), inner))
    assert await post(connector, literal) == 204
    assert inner.calls == ["rebind.test"]
    assert listener.accepted == 1


# (allowed networks, host of the redirect target): first with the target's address allowed
# too, then with only the redirecting receiver's address allowed.
REDIRECTS = [(("127.0.0.0/8",), "127.0.0.1"), (("127.0.0.1/32",), "127.0.0.2")]


@pytest.mark.parametrize(("allowed", "target_host"), REDIRECTS)
async def test_redirect_is_recorded_as_failure_and_not_followed(
    db: asyncpg.Pool, dsn: str, receiver: Receiver, allowed: tuple[str, ...], target_host: str
) -> None:
    async with serve_receiver(target_host) as secret:
        location = f"{secret.url}/secret"

        async def redirect(request: web.Request, rec: Receiver) -> web.Response:
            return web.Response(status=302, headers={"Location": location})

        receiver.handler = redirect
        await add_webhook(db, receiver.url + "/hook", ["t.x"])
        await publish(db, "t.x")

        await deliver_all(fast_settings(allowed_networks=allowed, retry_schedule=()), dsn)

        assert secret.requests == []
    assert [r.path for r in receiver.requests] == ["/hook"]
    assert await attempts_of(db) == [
        (1, 302, "status", f"HTTP 302 (redirects are not followed; Location: {location})")
    ]
    assert await delivery_state(db) == ("failed", 1, 302, "status")


PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy")


def point_proxy_variables_at(monkeypatch: pytest.MonkeyPatch, listener: Listener) -> None:
    for name in (*PROXY_VARIABLES, "all_proxy"):
        monkeypatch.setenv(name, f"http://127.0.0.1:{listener.port}")
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)


async def test_environment_proxy_variables_are_ignored(
    monkeypatch: pytest.MonkeyPatch,
    db: asyncpg.Pool,
    dsn: str,
    receiver: Receiver,
    listener: Listener,
) -> None:
    point_proxy_variables_at(monkeypatch, listener)
    await add_webhook(db, receiver.url + "/hook", ["t.x"])
    await publish(db, "t.x")

    await deliver_all(fast_settings(), dsn)

    assert [r.path for r in receiver.requests] == ["/hook"]
    assert listener.accepted == 0
    assert await delivery_state(db) == ("succeeded", 1, 200, None)


async def test_environment_proxy_listener_would_catch_a_session_that_trusts_env(
    monkeypatch: pytest.MonkeyPatch, receiver: Receiver, listener: Listener
) -> None:
    """The control for the test above: the variables do divert a session with trust_env."""
    point_proxy_variables_at(monkeypatch, listener)

    async with (
        asyncio.timeout(10),
        aiohttp.ClientSession(trust_env=True) as session,
        session.post(receiver.url + "/hook", data=BODY) as resp,
    ):
        status = resp.status

    assert status == 204
    assert listener.accepted == 1
    assert listener.request_lines == [f"POST {receiver.url}/hook HTTP/1.1".encode()]
    assert receiver.requests == []


async def test_egress_proxy_receives_the_request_in_absolute_form(
    forward_proxy: ForwardProxy,
) -> None:
    resolver = FakeResolver({})
    settings = fast_settings(allowed_networks=(), egress_proxy=forward_proxy.url)

    outcome = await send_once(settings, "http://hooks.example/x", resolver)

    assert (outcome.ok, outcome.response_status, outcome.response_body) == (True, 200, "proxied")
    assert forward_proxy.requests == [("POST", "http://hooks.example/x", "hooks.example", BODY)]
    assert resolver.calls == []


async def test_egress_proxy_forwards_public_literals_without_dialing_them(
    forward_proxy: ForwardProxy,
) -> None:
    resolver = FakeResolver({})
    settings = fast_settings(allowed_networks=(), egress_proxy=forward_proxy.url)

    outcome = await send_once(settings, "http://93.184.216.34/x", resolver)

    assert (outcome.ok, outcome.response_status) == (True, 200)
    assert forward_proxy.requests == [("POST", "http://93.184.216.34/x", "93.184.216.34", BODY)]
    assert resolver.calls == []


async def test_egress_proxy_is_not_sent_blocked_literals(forward_proxy: ForwardProxy) -> None:
    settings = fast_settings(allowed_networks=(), egress_proxy=forward_proxy.url)

    outcome = await send_once(settings, "http://169.254.169.254/latest", FakeResolver({}))

    assert (outcome.ok, outcome.retryable, outcome.error_kind) == (False, False, "blocked_address")
    assert outcome.error_message == f"BlockedAddress: 169.254.169.254 {REFUSED}"
    assert forward_proxy.requests == []


async def test_daemon_delivers_through_egress_proxy(
    db: asyncpg.Pool, dsn: str, forward_proxy: ForwardProxy
) -> None:
    await add_webhook(db, "http://hooks.example/x", ["t.x"])
    await publish(db, "t.x")

    await deliver_all(fast_settings(allowed_networks=(), egress_proxy=forward_proxy.url), dsn)

    assert [(m, p, h) for m, p, h, _ in forward_proxy.requests] == [
        ("POST", "http://hooks.example/x", "hooks.example")
    ]
    assert await delivery_state(db) == ("succeeded", 1, 200, None)


def warning_line(host: str) -> str:
    return (
        f"warning: {host} resolves to {host}, {WARNING}"
        " add the network to allowed_networks to permit it\n"
    )


async def test_cli_add_warns_about_a_refused_target_and_still_creates_it(
    monkeypatch: pytest.MonkeyPatch, cli: Cli, db: asyncpg.Pool
) -> None:
    monkeypatch.delenv("DISPATCHER_ALLOWED_NETWORKS")

    result = await cli(
        "webhooks", "add", "--name", "n", "--url", "http://127.0.0.1:9/x", "--events", "a.b"
    )

    assert result.exit_code == 0, (result.output, result.exception)
    assert result.stderr == warning_line("127.0.0.1")
    assert result.stderr.startswith("warning: 127.0.0.1 resolves to 127.0.0.1")
    assert await db.fetch("SELECT url, status FROM dispatcher.webhooks") == [
        ("http://127.0.0.1:9/x", "active")
    ]


async def test_cli_add_does_not_warn_when_the_target_is_allowed(cli: Cli, db: asyncpg.Pool) -> None:
    result = await cli(
        "webhooks", "add", "--name", "n", "--url", "http://127.0.0.1:9/x", "--events", "a.b"
    )

    assert result.exit_code == 0, (result.output, result.exception)
    assert result.stderr == ""
    assert await db.fetchval("SELECT count(*) FROM dispatcher.webhooks") == 1


async def test_cli_edit_warns_about_a_refused_url_only(
    monkeypatch: pytest.MonkeyPatch, cli: Cli, db: asyncpg.Pool
) -> None:
    wid, _ = await add_webhook(db, "http://127.0.0.1:9/x", ["a"])
    monkeypatch.delenv("DISPATCHER_ALLOWED_NETWORKS")

    renamed = await cli("webhooks", "edit", str(wid), "--name", "renamed")
    edited = await cli("webhooks", "edit", str(wid), "--url", "http://[::1]:9/")

    assert (renamed.exit_code, renamed.stderr) == (0, "")
    assert edited.exit_code == 0, (edited.output, edited.exception)
    assert edited.stderr == warning_line("::1")
    assert await db.fetchval("SELECT url FROM dispatcher.webhooks") == "http://[::1]:9/"


async def test_cli_edit_does_not_warn_when_the_target_is_allowed(
    monkeypatch: pytest.MonkeyPatch, cli: Cli, db: asyncpg.Pool
) -> None:
    wid, _ = await add_webhook(db, "http://127.0.0.1:9/x", ["a"])
    monkeypatch.setenv("DISPATCHER_ALLOWED_NETWORKS", "127.0.0.0/8,::1/128")

    result = await cli("webhooks", "edit", str(wid), "--url", "http://[::1]:9/")

    assert (result.exit_code, result.stderr) == (0, "")


async def test_bind_address_sets_the_source_address() -> None:
    peers: list[str | None] = []

    async def handler(request: web.Request) -> web.Response:
        peers.append(request.remote)
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        for bind, expected in ((None, "127.0.0.1"), ("127.0.0.2", "127.0.0.2")):
            settings = fast_settings(bind_address=bind)
            async with create_session(settings) as session:
                outcome = await Sender(settings, session).send(
                    f"http://127.0.0.1:{port}/", {}, b"{}"
                )
            assert outcome.ok, outcome
            assert peers[-1] == expected
    finally:
        await runner.cleanup()
