"""The real ``twistd rendezvous`` process on 127.0.0.1 with 127.0.0.2 as the alternate IP."""

import socket
import ssl
import subprocess
import sys

import pytest

from rendezvous.stun import Attr, Class, Message, Method
from rendezvous.stun.attributes import (
    decode_error_code,
    decode_text,
    encode_change_request,
    encode_uint16,
)
from rendezvous.stun.framing import StreamFramer
from tests.conftest import ROOT, free_port, start_node, stop_node, twistd

pytestmark = pytest.mark.integration


def udp_socket(ip="127.0.0.1"):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((ip, 0))
    s.settimeout(3)
    return s


def exchange(sock, msg, to, fingerprint=False):
    """Send over UDP and return (response, the address it came from)."""
    sock.sendto(msg.encode(fingerprint=fingerprint), to)
    data, sender = sock.recvfrom(4096)
    response = Message.decode(data)
    assert response.transaction_id == msg.transaction_id
    return response, sender


def binding(*attrs):
    msg = Message(Method.BINDING, Class.REQUEST)
    for attr_type, value in attrs:
        msg.add(attr_type, value)
    return msg


def stream_exchange(sock, msg):
    sock.sendall(msg.encode())
    framer = StreamFramer()
    while True:
        data = sock.recv(4096)
        assert data, "connection closed before a response"
        frames = framer.feed(data)
        if frames:
            return Message.decode(frames[0])


def endpoints(node):
    return [(ip, port) for ip in (node.ip, node.alt_ip) for port in (node.port, node.alt_port)]


def test_udp_binding_on_all_four_endpoints(node):
    """Each of the four UDP sockets answers with our mapping, its own origin and the opposite one."""
    with udp_socket() as s:
        for ip, port in endpoints(node):
            response, sender = exchange(s, binding(), (ip, port))
            assert sender == (ip, port)
            assert response.address(Attr.XOR_MAPPED_ADDRESS) == s.getsockname()
            assert response.address(Attr.RESPONSE_ORIGIN) == (ip, port)
            other_ip = node.alt_ip if ip == node.ip else node.ip
            other_port = node.alt_port if port == node.port else node.port
            assert response.address(Attr.OTHER_ADDRESS) == (other_ip, other_port)


@pytest.mark.parametrize("change_ip, change_port", [(True, False), (False, True), (True, True)])
def test_change_request_comes_from_the_changed_address(node, change_ip, change_port):
    """CHANGE-REQUEST responses really leave from the other IP and/or port."""
    expected = (node.alt_ip if change_ip else node.ip, node.alt_port if change_port else node.port)
    with udp_socket() as s:
        response, sender = exchange(s, binding((Attr.CHANGE_REQUEST, encode_change_request(change_ip, change_port))),
                                    (node.ip, node.port))
    assert sender == expected
    assert response.address(Attr.RESPONSE_ORIGIN) == expected


def test_response_port_reaches_another_socket(node):
    """RESPONSE-PORT delivers the response to the named port of the client's IP."""
    with udp_socket() as asker, udp_socket() as receiver:
        port = receiver.getsockname()[1]
        msg = binding((Attr.RESPONSE_PORT, encode_uint16(port)))
        asker.sendto(msg.encode(), (node.ip, node.port))
        response = Message.decode(receiver.recvfrom(4096)[0])
        assert response.transaction_id == msg.transaction_id
        assert response.address(Attr.XOR_MAPPED_ADDRESS) == asker.getsockname()


def test_classic_client_over_udp(node):
    """A cookieless RFC 3489 request gets MAPPED-, SOURCE- and CHANGED-ADDRESS."""
    msg = Message(Method.BINDING, Class.REQUEST, b"\x01" * 16, cookie=0x01010101)
    msg.add(Attr.CHANGE_REQUEST, encode_change_request(False, True))
    with udp_socket() as s:
        response, sender = exchange(s, msg, (node.ip, node.port))
        assert response.classic
        assert response.address(Attr.MAPPED_ADDRESS) == s.getsockname()
    assert sender == (node.ip, node.alt_port)
    assert response.address(Attr.SOURCE_ADDRESS) == sender
    assert response.address(Attr.CHANGED_ADDRESS) == (node.alt_ip, node.alt_port)


def test_malformed_datagrams_are_dropped_and_the_node_lives(node):
    """Garbage gets no answer and the next request is answered."""
    with udp_socket() as s:
        s.settimeout(0.5)
        for garbage in (b"", b"\x00", b"\x00\x01\x00\x08\x21\x12\xa4\x42" + b"x" * 12, b"\xff" * 100):
            s.sendto(garbage, (node.ip, node.port))
        with pytest.raises(socket.timeout):
            s.recvfrom(4096)
        s.settimeout(3)
        response, _ = exchange(s, binding(), (node.ip, node.port))
        assert response.cls == Class.SUCCESS


def test_unknown_required_attribute_gets_420(node):
    """An unknown comprehension-required attribute is answered 420 with UNKNOWN-ATTRIBUTES."""
    with udp_socket() as s:
        response, _ = exchange(s, binding((0x7ABC, b"?")), (node.ip, node.port))
    assert decode_error_code(response.get(Attr.ERROR_CODE))[0] == 420
    assert response.get(Attr.UNKNOWN_ATTRIBUTES) == b"\x7a\xbc"


@pytest.mark.parametrize("which", range(4))
def test_tcp_binding_on_all_four_endpoints(node, which):
    """TCP answers on each IP and port with the connection's mapping."""
    ip, port = endpoints(node)[which]
    with socket.create_connection((ip, port), timeout=3) as s:
        response = stream_exchange(s, binding())
        assert response.address(Attr.XOR_MAPPED_ADDRESS) == s.getsockname()
        assert response.address(Attr.RESPONSE_ORIGIN) == (ip, port)
        # Several requests ride one connection.
        assert stream_exchange(s, binding()).cls == Class.SUCCESS


def test_tcp_byte_at_a_time(node):
    """A request dribbled one byte per send is still answered."""
    msg = binding()
    with socket.create_connection((node.ip, node.port), timeout=3) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for byte in msg.encode():
            s.send(bytes([byte]))
        response = stream_exchange(s, binding())
    assert response.cls == Class.SUCCESS


def test_malformed_stream_closes_only_that_connection(node):
    """A garbage stream is closed; another connection keeps working."""
    with socket.create_connection((node.ip, node.port), timeout=3) as good, \
            socket.create_connection((node.ip, node.port), timeout=3) as bad:
        bad.sendall(b"\xff\xff\xff\xff" * 8)
        assert bad.recv(100) == b""
        assert stream_exchange(good, binding()).cls == Class.SUCCESS


@pytest.mark.parametrize("ip_attr", ["ip", "alt_ip"])
def test_tls_binding_with_the_generated_certificate(node, ip_attr):
    """TLS on both IPs works, verified against the self-signed certificate in the state dir."""
    context = ssl.create_default_context(cafile=str(node.state_dir / "tls" / "self-signed.pem"))
    ip = getattr(node, ip_attr)
    with socket.create_connection((ip, node.tls_port), timeout=3) as raw, \
            context.wrap_socket(raw, server_hostname="localhost") as s:
        response = stream_exchange(s, binding())
        assert response.address(Attr.XOR_MAPPED_ADDRESS) == s.getsockname()


def test_without_alternate_change_request_is_420(plain_node):
    """A node without --alt-ip sends no OTHER-ADDRESS and answers CHANGE-REQUEST with 420."""
    with udp_socket() as s:
        response, _ = exchange(s, binding(), (plain_node.ip, plain_node.port))
        assert Attr.OTHER_ADDRESS not in response
        response, _ = exchange(s, binding((Attr.CHANGE_REQUEST, encode_change_request(True, True))),
                               (plain_node.ip, plain_node.port))
        assert decode_error_code(response.get(Attr.ERROR_CODE))[0] == 420


def test_config_file_and_operator_certificate(tmp_path, node):
    """Options from a TOML file apply, and --cert/--key from the file are served."""
    cert_dir = node.state_dir / "tls"
    config = tmp_path / "node.toml"
    config.write_text(
        f'software = "txrendezvous-test"\ncert = "{cert_dir / "self-signed.pem"}"\n'
        f'key = "{cert_dir / "self-signed.key"}"\n'
    )
    other = start_node(tmp_path, "--config", str(config), alternate=False)
    try:
        with udp_socket() as s:
            response, _ = exchange(s, binding(), (other.ip, other.port))
        assert decode_text(response.get(Attr.SOFTWARE)) == "txrendezvous-test"
        assert not (other.state_dir / "tls").exists()
    finally:
        stop_node(other)


def test_bad_option_exits_with_a_message(tmp_path):
    """A bad option makes twistd exit non-zero and say why."""
    result = subprocess.run(
        [twistd(), "-n", "--pidfile=", "rendezvous", "--alt-ip", "127.0.0.2", "--port", str(free_port())],
        capture_output=True, text=True, cwd=tmp_path, env={"PYTHONPATH": str(ROOT), "PATH": ""}, timeout=60,
    )
    assert result.returncode != 0
    assert "--alt-ip needs a specific --ip" in result.stdout + result.stderr


def test_embedding_example_runs(node):
    """docs/examples/stun_client.py prints the mapping and gets its CHANGE-REQUEST answered."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "docs" / "examples" / "stun_client.py"), node.ip, str(node.port)],
        capture_output=True, text=True, timeout=60, env={"PYTHONPATH": str(ROOT)},
    )
    assert result.returncode == 0, result.stderr
    assert "mapped address: ('127.0.0.1'," in result.stdout
    assert f"change request answered from: ('{node.alt_ip}', {node.alt_port})" in result.stdout


def test_json_logs(tmp_path):
    """With twistd --logger rendezvous.node.logs.json_observer every line is a JSON event."""
    import json

    port = free_port()
    log_path = tmp_path / "out.log"
    with open(log_path, "wb") as out:
        process = subprocess.Popen(
            [twistd(), "--logger", "rendezvous.node.logs.json_observer", "-n", "--pidfile=", "rendezvous",
             "--ip", "127.0.0.1", "--port", str(port), "--tls-port", "0", "--no-relay", "--metrics", "off",
             "--state-dir", str(tmp_path / "state")],
            stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path, env={"PYTHONPATH": str(ROOT), "PATH": ""},
        )
    try:
        with udp_socket() as s:
            for _ in range(50):
                s.sendto(Message(Method.BINDING, Class.REQUEST).encode(), ("127.0.0.1", port))
                try:
                    s.settimeout(0.2)
                    s.recvfrom(2048)
                    break
                except OSError:
                    continue
    finally:
        process.terminate()
        process.wait(10)
    lines = [line for line in log_path.read_text().splitlines() if line.strip()]
    events = [json.loads(line) for line in lines]
    assert events and all({"time", "level", "namespace", "text"} <= event.keys() for event in events)


def test_embedded_defaults_start(tmp_path):
    """With no --state-dir (the README's run command) the node starts and fills its default state dir."""
    port = free_port()
    tls_port = free_port(exclude={port})
    env = {"PYTHONPATH": str(ROOT), "PATH": "", "TXRENDEZVOUS_STATE_DIR": str(tmp_path / "default-state")}
    process = subprocess.Popen(
        [twistd(), "-n", "--pidfile=", "rendezvous", "--port", str(port), "--tls-port", str(tls_port),
         "--metrics", "off"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=tmp_path, env=env,
    )
    try:
        with udp_socket() as s:
            s.settimeout(0.2)
            answered = False
            for _ in range(100):
                s.sendto(Message(Method.BINDING, Class.REQUEST).encode(), ("127.0.0.1", port))
                try:
                    answered = Message.decode(s.recvfrom(2048)[0]).cls == Class.SUCCESS
                    break
                except OSError:
                    if process.poll() is not None:
                        break
        assert answered, process.stdout.read().decode(errors="replace") if process.poll() is not None else ""
        assert (tmp_path / "default-state" / "accounts.sqlite").exists()
        assert (tmp_path / "default-state" / "tls" / "self-signed.pem").exists()
    finally:
        process.terminate()
        process.wait(10)
