"""The DNS interface (rust/dns/) through real DNS: dnspython's wire messages and Debian's
`dig`, over UDP and TCP, against real server processes on loopback. Made-up host names are
registered without checks and only ever come back as CNAME targets: the server never
resolves them (conftest's netspy fails any test whose server touched the network)."""

from __future__ import annotations

import contextlib
import random
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dns.flags
import dns.message
import dns.opcode
import dns.query
import dns.rcode
import dns.rdatatype
import dns.update
import pytest

from conftest import NO_CHECK, Server, free_dns_port, free_port, wait_for


class Dns:
    """Questions to one server's DNS port."""

    def __init__(self, server: Server, port: int, domain: str = "registry.") -> None:
        self.server, self.port, self.domain = server, port, domain

    def ask(
        self, name: str, rdtype: str = "A", *, tcp: bool = False, edns: bool = True, timeout: float = 3.0
    ) -> dns.message.Message:
        query = dns.message.make_query(self.fqdn(name), rdtype, use_edns=0 if edns else False)
        send = dns.query.tcp if tcp else dns.query.udp
        return send(query, "127.0.0.1", port=self.port, timeout=timeout)

    def fqdn(self, name: str) -> str:
        return name if name.endswith(".") else f"{name}.{self.domain}"

    def addresses(self, name: str, rdtype: str = "A", **kw: Any) -> list[str]:
        reply = self.ask(name, rdtype, **kw)
        assert reply.rcode() == dns.rcode.NOERROR, dns.rcode.to_text(reply.rcode())
        return [r.to_text() for rrset in reply.answer if rrset.rdtype == dns.rdatatype.from_text(rdtype) for r in rrset]


def register(server: Server, url: str, slug: str, **extra: Any) -> str:
    reply = server.register({"url": url, "slug": slug, "healthCheck": NO_CHECK, "status": "Healthy", **extra})
    assert reply.status == 201, reply.body
    return str(reply.json["instance"]["id"])


def set_status(server: Server, instance_id: str, status: str) -> None:
    reply = server.call("PUT", f"/registry-svc/instance/{instance_id}/heartbeat", {"status": status})
    assert reply.status == 200, reply.body


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dns]:
    """Two processes sharing the DNS port (SO_REUSEPORT), as the data port."""
    port = free_dns_port()
    server = Server(tmp_path_factory.mktemp("dns"), processes=2, args=["--dns-port", str(port)]).start()
    yield Dns(server, port)
    server.kill9()


def test_a_service_name_answers_its_routable_addresses_over_udp_and_tcp(served: Dns) -> None:
    v4 = free_port()
    register(served.server, f"http://127.0.0.1:{v4}", "web")
    register(served.server, f"http://[::1]:{free_port()}", "web")
    for tcp in (False, True):
        reply = served.ask("web.service", "A", tcp=tcp)
        assert reply.rcode() == dns.rcode.NOERROR
        assert reply.flags & dns.flags.AA and not reply.flags & dns.flags.RA
        assert [r.to_text() for r in reply.answer[0]] == ["127.0.0.1"]
        assert reply.answer[0].ttl == 0  # the default, as Consul's
        assert served.addresses("web.service", "AAAA", tcp=tcp) == ["::1"]
    # Names are compared without case, as DNS wants.
    assert served.addresses("WEB.Service.REGISTRY.") == ["127.0.0.1"]


def test_dig_asks_as_the_readme_shows(served: Dns) -> None:
    if shutil.which("dig") is None:
        pytest.skip("dig is not installed (make test installs bind9-dnsutils)")
    dug = free_port()
    register(served.server, f"http://127.0.0.1:{dug}", "dug")
    out = subprocess.run(
        ["dig", "@127.0.0.1", "-p", str(served.port), "+short", "dug.service.registry"],
        capture_output=True, text=True, timeout=10, check=True,
    ).stdout  # fmt: skip
    assert out.split() == ["127.0.0.1"]
    out = subprocess.run(
        ["dig", "@127.0.0.1", "-p", str(served.port), "+tcp", "+short", "_dug._tcp.service.registry", "SRV"],
        capture_output=True, text=True, timeout=10, check=True,
    ).stdout  # fmt: skip
    priority, weight, port, target = out.split()
    assert (priority, weight, port) == ("1", "100", str(dug)) and target.endswith(".instance.registry.")


def test_tag_and_zone_names_narrow_the_answer(served: Dns) -> None:
    register(served.server, "http://127.0.0.2:8001", "narrow", tags=["gpu", "v2"], zone="eu-1")
    register(served.server, "http://127.0.0.3:8001", "narrow", tags=["v2"], zone="us-1")
    register(served.server, "http://127.0.0.4:8001", "narrow")
    assert sorted(served.addresses("narrow.service")) == ["127.0.0.2", "127.0.0.3", "127.0.0.4"]
    assert served.addresses("gpu.narrow.service") == ["127.0.0.2"]
    assert sorted(served.addresses("v2.narrow.service")) == ["127.0.0.2", "127.0.0.3"]
    assert served.addresses("narrow.service.us-1") == ["127.0.0.3"]
    assert served.addresses("v2.narrow.service.EU-1") == ["127.0.0.2"]
    # The slug exists, so a filter nothing matches is NODATA, not NXDOMAIN.
    empty = served.ask("gpu.narrow.service.us-1")
    assert empty.rcode() == dns.rcode.NOERROR and not empty.answer
    assert empty.authority[0].rdtype == dns.rdatatype.SOA


def test_srv_names_give_ports_weights_and_targets_with_their_addresses(served: Dns) -> None:
    heavy = register(served.server, "http://127.0.0.5:7001", "srv", weight=300, tags=["gpu"])
    register(served.server, "http://[::1]:7002", "srv")
    register(served.server, "http://user-service:8080", "srv")
    reply = served.ask("_srv._tcp.service", "SRV")
    records = {(r.port, r.weight, r.target.to_text()) for r in reply.answer[0]}
    assert records == {
        (7001, 300, f"{heavy}.instance.registry."),
        (7002, 100, next(t for p, _, t in records if p == 7002)),
        (8080, 100, "user-service."),  # a host name is its own target: never resolved here
    }
    extra = {(rrset.name.to_text(), r.to_text()) for rrset in reply.additional for r in rrset}
    assert (f"{heavy}.instance.registry.", "127.0.0.5") in extra
    assert any(address == "::1" for _, address in extra)
    assert not any("user-service" in name for name, _ in extra)
    # The plain service name answers SRV too; `_<slug>._<tag>` narrows by tag.
    assert len(served.ask("srv.service", "SRV").answer[0]) == 3
    tagged = served.ask("_srv._gpu.service", "SRV")
    assert [r.port for r in tagged.answer[0]] == [7001]
    # An instance's own name answers its address.
    assert served.addresses(f"{heavy}.instance") == ["127.0.0.5"]


def test_an_instance_registered_by_host_name_is_a_cname_and_its_node_an_address(served: Dns) -> None:
    register(served.server, "http://byname-host:8080", "byname")
    reply = served.ask("byname.service", "A")
    assert [(r.rdtype, r.to_text()) for rrset in reply.answer for r in rrset] == [(dns.rdatatype.CNAME, "byname-host.")]
    nodes = served.server.call("POST", "/registry-svc/nodes").json["nodes"]
    assert served.addresses(f"{nodes[0]['id']}.node") == ["127.0.0.1"]
    assert served.ask("node_nope.node").rcode() == dns.rcode.NXDOMAIN


def test_unknown_names_are_nxdomain_and_missing_types_nodata_with_the_soa(served: Dns) -> None:
    register(served.server, f"http://127.0.0.1:{free_port()}", "only-v4")
    for name in ("nope.service", "a.b.c.service", "web", "x.instance", "inst_nope.instance"):
        reply = served.ask(name)
        assert reply.rcode() == dns.rcode.NXDOMAIN, name
        assert reply.flags & dns.flags.AA
        assert [rrset.rdtype for rrset in reply.authority] == [dns.rdatatype.SOA], name
    for name, rdtype in (("only-v4.service", "AAAA"), ("only-v4.service", "TXT"), ("only-v4.service", "MX")):
        reply = served.ask(name, rdtype)
        assert reply.rcode() == dns.rcode.NOERROR and not reply.answer, (name, rdtype)
        assert reply.authority[0].rdtype == dns.rdatatype.SOA
    apex = served.ask("registry.", "SOA")
    assert apex.answer[0][0].mname.to_text() == "ns.registry."


def test_health_changes_draining_and_deregistration_show_in_the_next_answer(served: Dns) -> None:
    a = register(served.server, "http://127.0.0.6:9000", "flappy")
    b = register(served.server, "http://127.0.0.7:9000", "flappy")
    assert sorted(served.addresses("flappy.service")) == ["127.0.0.6", "127.0.0.7"]
    set_status(served.server, a, "Unhealthy")
    assert served.addresses("flappy.service") == ["127.0.0.7"]
    set_status(served.server, a, "Healthy")
    assert sorted(served.addresses("flappy.service")) == ["127.0.0.6", "127.0.0.7"]
    set_status(served.server, b, "Stopping")  # draining
    assert served.addresses("flappy.service") == ["127.0.0.6"]
    assert served.server.call("DELETE", f"/registry-svc/instance/{a}").status == 204
    # b is still registered (draining): the name exists, with nothing to route to.
    gone = served.ask("flappy.service")
    assert gone.rcode() == dns.rcode.NOERROR and not gone.answer
    assert served.server.call("DELETE", f"/registry-svc/instance/{b}").status == 204
    assert served.ask("flappy.service").rcode() == dns.rcode.NXDOMAIN


def test_a_udp_answer_past_512_bytes_is_truncated_and_tcp_gives_all(served: Dns) -> None:
    for i in range(10, 70):
        register(served.server, f"http://127.0.1.{i}:80", "many", healthCheck={"type": "none"})
    plain = served.ask("many.service", edns=False, timeout=5)
    assert plain.flags & dns.flags.TC
    assert len(plain.to_wire()) <= 512
    assert len(served.addresses("many.service", tcp=True)) == 60
    # With EDNS, up to 1,232 bytes whatever size the client offers: 60 A records fit.
    big = dns.message.make_query(served.fqdn("many.service"), "A", use_edns=0, payload=65000)
    wire = dns.query.udp(big, "127.0.0.1", port=served.port, timeout=3)
    assert not wire.flags & dns.flags.TC and len(wire.answer[0]) == 60
    assert wire.edns >= 0 and wire.payload == 1232


def test_weights_decide_how_often_an_instance_comes_first(served: Dns) -> None:
    register(served.server, "http://127.0.0.8:80", "weighted", weight=300)
    register(served.server, "http://127.0.0.9:80", "weighted", weight=100)
    firsts = [served.addresses("weighted.service")[0] for _ in range(400)]
    share = firsts.count("127.0.0.8") / len(firsts)
    # Expected 0.75; the bound is about five standard deviations (0.022) wide.
    assert 0.64 <= share <= 0.86, share


def test_only_reads_are_served_and_malformed_questions_get_formerr(served: Dns) -> None:
    register(served.server, f"http://127.0.0.1:{free_port()}", "ro")
    outside = served.ask("example.com.")
    assert outside.rcode() == dns.rcode.REFUSED and not outside.flags & dns.flags.RA
    axfr = dns.message.make_query("registry.", "AXFR")
    assert dns.query.tcp(axfr, "127.0.0.1", port=served.port, timeout=3).rcode() == dns.rcode.REFUSED
    update = dns.update.UpdateMessage("registry.")
    update.add("evil.service", 30, "A", "127.0.0.66")
    assert dns.query.udp(update, "127.0.0.1", port=served.port, timeout=3).rcode() == dns.rcode.REFUSED
    chaos = dns.message.make_query("version.bind.", "TXT", rdclass="CH")
    assert dns.query.udp(chaos, "127.0.0.1", port=served.port, timeout=3).rcode() == dns.rcode.REFUSED
    # Two questions in one message, and bytes that are no message past the header.
    two = dns.message.make_query(served.fqdn("ro.service"), "A")
    two.question.append(dns.message.make_query(served.fqdn("ro.service"), "AAAA").question[0])
    assert dns.query.udp(two, "127.0.0.1", port=served.port, timeout=3).rcode() == dns.rcode.FORMERR
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as raw:
        raw.settimeout(3)
        raw.sendto(b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x05ab", ("127.0.0.1", served.port))
        answer = raw.recv(512)
    assert answer[:2] == b"\x12\x34" and answer[3] & 0x0F == dns.rcode.FORMERR
    # A question over the 4 KiB limit (a real one, padded) is refused as malformed.
    padded = dns.message.make_query(served.fqdn("ro.service"), "A").to_wire() + bytes(5000)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as raw:
        raw.settimeout(3)
        raw.sendto(padded, ("127.0.0.1", served.port))
        assert raw.recv(512)[3] & 0x0F == dns.rcode.FORMERR
    # A DNS response sent to us is not answered (answering could start a loop between servers).
    response = dns.message.make_response(dns.message.make_query("ro.service.registry.", "A"))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as raw:
        raw.settimeout(0.5)
        raw.sendto(response.to_wire(), ("127.0.0.1", served.port))
        with pytest.raises(TimeoutError):
            raw.recv(512)
    assert served.addresses("ro.service") == ["127.0.0.1"]  # and it still answers
    # The workers fold their counts into /metrics every half second.
    wait_for(
        lambda: 'registry_dns_queries_total{outcome="refused"} 4.0' in served.server.call("GET", "/metrics").body.decode(),
        5, "the four refusals in /metrics",
    )  # fmt: skip


def test_random_and_mangled_messages_never_stop_the_server(served: Dns) -> None:
    """3,000 messages: random bytes, and real questions with bytes flipped, cut short or
    padded past 4 KiB. Whatever comes back is a well-formed message; the server answers a
    real question afterwards, from both processes."""
    register(served.server, "http://127.0.0.10:80", "mangled")
    rng = random.Random(20261204)
    good = dns.message.make_query("mangled.service.registry.", "SRV", use_edns=0).to_wire()
    answers = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        udp.settimeout(0.05)
        for i in range(3000):
            kind = i % 3
            if kind == 0:
                data = rng.randbytes(rng.randrange(1, 600))
            elif kind == 1:
                data = bytearray(good)
                for _ in range(rng.randrange(1, 6)):
                    data[rng.randrange(len(data))] = rng.randrange(256)
                data = bytes(data[: rng.randrange(2, len(data) + 1)])
            else:
                data = good + rng.randbytes(rng.randrange(1, 5000))
            udp.sendto(data, ("127.0.0.1", served.port))
            if i % 100 == 99:  # read what came back for these 100
                with contextlib.suppress(TimeoutError):
                    while True:
                        dns.message.from_wire(udp.recv(65535), ignore_trailing=False)
                        answers += 1
    assert answers > 1000  # most get an answer (FORMERR or a real one); none is malformed
    for _ in range(20):  # new sockets: SO_REUSEPORT spreads them over both processes
        assert served.addresses("mangled.service") == ["127.0.0.10"]
    assert all(p.is_running() for p in served.server.worker_processes())


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dns]:
    """A server that limits loopback clients too, 20 answers a second, under its own domain
    and TTL."""
    port = free_dns_port()
    args = ["--dns-port", str(port), "--dns-rate-limit", "20", "--dns-rate-exempt", "", "--dns-domain", "Consul"]
    server = Server(tmp_path_factory.mktemp("dnslimited"), args=[*args, "--dns-ttl", "30"]).start()
    yield Dns(server, port, domain="consul.")
    server.kill9()


def test_a_client_past_its_rate_gets_truncated_answers_or_none_and_tcp_still_works(limited: Dns) -> None:
    register(limited.server, f"http://127.0.0.1:{free_port()}", "web")
    answered = truncated = 0
    started = time.monotonic()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        for i in range(200):
            udp.sendto(dns.message.make_query("web.service.consul.", "A", id=i).to_wire(), ("127.0.0.1", limited.port))
        sent = time.monotonic() - started
        udp.settimeout(1.0)
        with contextlib.suppress(TimeoutError):
            while True:
                reply = dns.message.from_wire(udp.recv(4096))
                if reply.flags & dns.flags.TC:
                    assert not reply.answer
                    truncated += 1
                else:
                    answered += 1
    # A burst of 20, then 20 a second while the questions were sent; of the rest, every
    # second one gets an empty truncated answer and the others none.
    assert 20 <= answered <= 20 + 20 * sent + 1, (answered, sent)
    assert abs(truncated - (200 - answered) / 2) <= 1, (answered, truncated)
    reply = limited.ask("web.service", tcp=True)
    assert [r.to_text() for r in reply.answer[0]] == ["127.0.0.1"]
    assert reply.answer[0].ttl == 30  # --dns-ttl, and the domain is --dns-domain's


def test_bad_dns_flags_are_refused_at_start_naming_the_flag(tmp_path: Path) -> None:
    taken = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    taken.bind(("127.0.0.1", 0))
    try:
        for args, expected, code in (
            (["--dns-domain", "a..b"], "--dns-domain", 2),
            (["--dns-rate-exempt", "10.0.0.0/99"], "--dns-rate-exempt", 2),
            (["--dns-ttl", "-1"], "--dns-ttl", 2),
            (["--dns-port", str(taken.getsockname()[1])], f"DNS port {taken.getsockname()[1]} (UDP)", 1),
        ):
            command = [
                sys.executable, "-m", "registry_svc", "serve", "--port", str(free_port()), "--data-port", "0",
                "--data-dir", str(tmp_path / "d"), *args,
            ]  # fmt: skip
            if "--dns-port" not in args:
                command += ["--dns-port", str(free_dns_port())]
            done = subprocess.run(command, capture_output=True, text=True, timeout=60)
            assert done.returncode == code, (args, done.stderr)
            assert expected in done.stderr, (args, done.stderr)
    finally:
        taken.close()
