"""What charlm guarantees about `charlm serve` under load and abuse: streams that starve the rest,
clients that stop reading or reset, a flood of events, Ctrl-C with clients not reading, numeric
extremes in a request, the Host of a loopback server, and names that reach the terminal. One test
per row of the README's table, named for it; each runs a real server on loopback (the CLI in a
process of its own where its log or its signals matter), and every wait is bounded.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import math
import re
import selectors
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator

import pytest

pytest.importorskip("starlette", reason="charlm[serve] is not installed")
openai = pytest.importorskip("openai", reason="the openai client is in the test extra")

from charlm.generation.translation import Hypothesis  # noqa: E402
from charlm.serve import server  # noqa: E402
from charlm.serve.app import create_app  # noqa: E402
from charlm.serve.catalog import load_catalog  # noqa: E402
from charlm.serve.fields import Limits  # noqa: E402
from charlm.serve.server import running  # noqa: E402
from tests.conftest import run_cli  # noqa: E402
from tests.serve.test_serve import events, models, slow_steps, wait_until  # noqa: E402, F401  (the tiny models)

MAXIMAL = {"prefix": "the ", "length": 2000, "num_samples": 32, "stream": True}  # the most one request may ask


@pytest.fixture(scope="module")
def catalog(models):  # noqa: F811
    return load_catalog([str(models)])


def stream_socket(url: str, body: dict, receive_buffer: int | None = None) -> socket.socket:
    """A socket that has sent `body` to /v1/generate; with `receive_buffer`, a small one (a client
    that reads little)."""
    host, port = url.removeprefix("http://").rstrip("/").rsplit(":", 1)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if receive_buffer is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.settimeout(30)
    sock.connect((host, int(port)))
    data = json.dumps(body).encode()
    sock.sendall(b"POST /v1/generate HTTP/1.1\r\nHost: " + host.encode() + b"\r\nContent-Type: application/json\r\n"
                 b"Content-Length: " + str(len(data)).encode() + b"\r\n\r\n" + data)
    return sock


def small_send_buffers(bind: Callable[[str, int], socket.socket]) -> Callable[[str, int], socket.socket]:
    """`server.bind` with a small send buffer, which the sockets it accepts inherit (Linux): a
    client that does not read blocks the server's writes after a few KiB, not megabytes."""
    def bind_small(host: str, port: int) -> socket.socket:
        sock = bind(host, port)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        return sock

    return bind_small


def reset(sock: socket.socket) -> None:
    """Close as a crashed client does: a TCP reset, not a goodbye."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def get(url: str, path: str, timeout: float = 15) -> tuple[int, bytes]:
    host, port = url.removeprefix("http://").rstrip("/").rsplit(":", 1)
    connection = http.client.HTTPConnection(host.strip("[]"), int(port), timeout=timeout)
    connection.request("GET", path)
    response = connection.getresponse()
    return response.status, response.read()


@contextlib.contextmanager
def charlm_serve(*arguments: str, sigint: object = signal.SIG_DFL) -> Iterator[tuple[subprocess.Popen, str, list[str]]]:
    """`charlm serve ARGUMENTS --port 0` in a process of its own, started with SIGINT's handling
    `sigint` (SIG_IGN: as `nohup` or a shell's `&` start it): it, its URL, and the lines of its
    stderr so far (a thread reads them); stopped by Ctrl-C (SIGINT) at the end if still running."""
    process = subprocess.Popen([sys.executable, "-m", "charlm", "serve", *arguments, "--port", "0"],
                               stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, sigint))
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(process.stderr), daemon=True)
    reader.start()
    try:
        assert wait_until(lambda: any("Uvicorn running" in line or "Application startup" in line for line in lines)
                          or process.poll() is not None, 60), lines
        started = next(line for line in lines if line.startswith("serving "))
        yield process, re.search(r"at (http://\S+/) ", started).group(1), lines
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        reader.join(5)


# ---------------------------------------------------------------------------------------------
# Load: streams never starve the rest


def test_control_routes_answer_under_full_generation_load(catalog):
    """As many maximal streams as the server runs at once (64 × 32 samples of 2,000 tokens), read
    by their clients: GET /v1/models and a model's metrics still answer at once."""
    app = create_app(catalog)
    limits = Limits()
    with running(app) as url:
        socks = [stream_socket(url, MAXIMAL) for _ in range(limits.in_flight)]
        taken = [0]
        stop = threading.Event()

        def drain() -> None:  # every client reads all it is sent
            chooser = selectors.DefaultSelector()
            for sock in socks:
                chooser.register(sock, selectors.EVENT_READ)
            while not stop.is_set():
                for key, _ in chooser.select(0.1):
                    taken[0] += len(key.fileobj.recv(1 << 16))

        reader = threading.Thread(target=drain, daemon=True)
        reader.start()
        try:
            assert wait_until(lambda: app.state.slots.used == limits.in_flight and taken[0] > 0, 30)
            for path in ("/v1/models", "/v1/models/tiny", "/v1/models/tiny/metrics", "/"):
                assert get(url, path, timeout=10)[0] == 200, path  # within 10 s, under the whole load
            assert app.state.slots.used == limits.in_flight  # the load was still there
        finally:
            stop.set()
            reader.join()
            for sock in socks:
                reset(sock)


def test_a_client_that_stops_reading_loses_its_stream_and_its_place(catalog, monkeypatch, capfd):
    """Clients that open a maximal stream and never read: each is ended after `write_seconds`,
    in one log line, and its place at work is free for the next request while its socket is
    still open."""
    monkeypatch.setattr(server, "bind", small_send_buffers(server.bind))
    app = create_app(catalog, Limits(in_flight=2, write_seconds=0.5))
    slow_steps(app, seconds=0.001)
    with running(app, log_level="info") as url:
        stuck = [stream_socket(url, MAXIMAL, receive_buffer=4096) for _ in range(2)]
        assert wait_until(lambda: app.state.slots.used == 2)
        assert wait_until(lambda: app.state.slots.used == 0, 30)  # both ended, their sockets still open
        status, body = get(url, "/v1/models")
        sock = stream_socket(url, {"prefix": "the ", "length": 5})
        assert sock.recv(1 << 16).startswith(b"HTTP/1.1 200")
        for sock in stuck:
            reset(sock)
    assert status == 200
    logged = capfd.readouterr().err
    assert logged.count("took none of its stream for 0.5 s; the stream is ended") == 2
    assert "Traceback" not in logged and "ASGI callable" not in logged


@pytest.mark.parametrize("path", ["/v1/generate", "/v1/completions"])
def test_a_body_that_never_arrives_is_a_408_not_a_connection_held(catalog, path):
    """A client that says a body of 100 bytes and sends 10: a 408 after `read_seconds`, in the
    path's dialect, and the connection is closed."""
    app = create_app(catalog, Limits(read_seconds=0.5))
    with running(app) as url:
        host, port = url.removeprefix("http://").rstrip("/").rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=30) as sock:
            sock.sendall(f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                         "Content-Length: 100\r\n\r\n{\"model\": ".encode())
            answer = b""
            while chunk := sock.recv(1 << 16):  # to the end: the server closes the connection
                answer += chunk
    head, body = answer.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 408")
    error = json.loads(body)["error"]
    assert (error if path == "/v1/generate" else error["message"]) == "the body did not arrive within 0.5 s"


# ---------------------------------------------------------------------------------------------
# Floods: of events, of log lines


def test_a_multi_sample_stream_joins_its_pieces(catalog):
    """A 32-sample stream sends each sample's text at most once per 20 ms (the pieces made in
    between joined, whichever order the samples' pieces come in), and the text is the same as
    the answer that does not stream."""
    app = create_app(catalog)
    body = {"prefix": "the ", "length": 400, "num_samples": 32, "seed": 3}
    with running(app) as url:
        whole = json.loads(post_for_text(url, body))["samples"]
        started = time.monotonic()
        text = post_for_text(url, {**body, "stream": True})
        seconds = time.monotonic() - started
    found = [data for name, data in events(text) if name == "message"]
    most = 2 + seconds / 0.02  # the prefix alone, then one per 20 ms
    for sample in range(32):
        pieces = [data["text"] for data in found if data["sample"] == sample]
        assert "".join(pieces) == whole[sample]
        assert len(pieces) <= most, (len(pieces), seconds)


def post_for_text(url: str, body: dict) -> str:
    host, port = url.removeprefix("http://").rstrip("/").rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=60)
    connection.request("POST", "/v1/generate", json.dumps(body), {"Content-Type": "application/json"})
    return connection.getresponse().read().decode()


def test_a_client_reset_mid_stream_is_one_log_line_at_most(models):  # noqa: F811
    """16 clients that reset their connection in the middle of a maximal stream: the server's log
    grows by one line each at most (its access line), and it answers at once afterwards."""
    with charlm_serve(str(models / "tiny.safetensors")) as (process, url, lines):
        before = len(lines)
        socks = [stream_socket(url, MAXIMAL) for _ in range(16)]
        for sock in socks:
            assert sock.recv(1 << 12).startswith(b"HTTP/1.1 200")
        time.sleep(0.5)  # the streams flow
        for sock in socks:
            reset(sock)
        time.sleep(1)
        assert get(url, "/v1/models", timeout=10)[0] == 200
        time.sleep(0.5)
        added = lines[before:]
    assert not [line for line in added if "socket.send" in line or "Traceback" in line]
    assert len(added) <= 16 + 1, added  # 16 access lines and the GET's


def test_ctrl_c_with_clients_not_reading_ends_without_a_traceback(catalog, monkeypatch, capfd):
    """Ctrl-C on a server whose clients have stopped reading their streams (their buffers full):
    it stops within its grace period, with no traceback. (uvicorn's SIGINT handler sets
    `should_exit`, as leaving `running` does; the real signal is `test_ctrl_c_in_a_process`.)"""
    monkeypatch.setattr(server, "bind", small_send_buffers(server.bind))
    app = create_app(catalog)
    with running(app, on_stop=app.state.stop, log_level="info") as url:
        stuck = [stream_socket(url, MAXIMAL, receive_buffer=4096) for _ in range(4)]
        assert wait_until(lambda: app.state.slots.used == 4)
        time.sleep(1)  # their buffers fill
        stopping = time.monotonic()
    waited = time.monotonic() - stopping
    for sock in stuck:
        reset(sock)
    logged = capfd.readouterr().err
    assert "Traceback" not in logged and "CancelledError" not in logged and "ASGI callable" not in logged, logged
    assert "Cancel" not in logged and waited < server.GRACEFUL_SECONDS + 1, logged  # nothing left to cancel


@pytest.mark.parametrize("sigint", [signal.SIG_DFL, signal.SIG_IGN], ids=["default", "started-ignoring-sigint"])
def test_ctrl_c_in_a_process(models, sigint):  # noqa: F811
    """SIGINT to `charlm serve` with clients not reading: it says it was interrupted, no traceback;
    also when started with SIGINT ignored (in the background of a script), where uvicorn's raising
    the signal again once stopped does nothing."""
    with charlm_serve(str(models / "tiny.safetensors"), sigint=sigint) as (process, url, lines):
        stuck = [stream_socket(url, MAXIMAL, receive_buffer=4096) for _ in range(4)]
        time.sleep(2)
        process.send_signal(signal.SIGINT)
        code = process.wait(20)
        for sock in stuck:
            reset(sock)
    printed = "".join(lines)
    assert code == 130 and lines[-1] == "charlm: interrupted\n" and "Traceback" not in printed, printed


# ---------------------------------------------------------------------------------------------
# Numeric extremes


@pytest.mark.parametrize("penalty", [1000, 1e308])
def test_a_huge_length_penalty_translates_as_the_cli_does(catalog, runner, models, penalty):  # noqa: F811
    """/v1/translate and `charlm translate --beam 3` take any finite length penalty: the outputs
    of `charlm translate`, no 500, no traceback."""
    from starlette.testclient import TestClient

    with TestClient(create_app(catalog), raise_server_exceptions=False) as client:
        answer = client.post("/v1/translate", content=json.dumps({"inputs": ["abc", "bcab"], "beam": 3,
                                                                  "length_penalty": penalty}),
                             headers={"Content-Type": "application/json"})
    printed = run_cli(runner, "translate", "--checkpoint", models / "rev.safetensors", "--beam", "3",
                      "--length-penalty", str(penalty), "abc", "bcab")
    assert answer.status_code == 200
    assert answer.json()["outputs"] == printed.stdout.splitlines()


def test_a_length_penalty_ranks_as_score_over_length_to_the_penalty():
    """The ranking taken in the log domain is the ranking of the README's formula wherever that
    formula is a number."""
    hypotheses = [Hypothesis(list(range(length)), score, ended) for length in (0, 1, 3, 7, 20)
                  for score in (0.0, -0.5, -2.0, -9.0, -30.0) for ended in (False, True)]
    for penalty in (0.0, 0.3, 1.0, 2.5, 50.0):
        for one in hypotheses:
            for other in hypotheses:
                by_formula = [one.score / max(len(one.ids) + one.ended, 1) ** penalty,
                              other.score / max(len(other.ids) + other.ended, 1) ** penalty]
                if not math.isclose(*by_formula, rel_tol=1e-9):  # exact ties may round either way
                    assert (by_formula[0] < by_formula[1]) == (one.normalised(penalty) < other.normalised(penalty))


def test_an_infinite_length_penalty_is_refused_in_one_line(catalog, runner, models):  # noqa: F811
    """A length penalty that is no finite number (JSON's 1e999 reads as infinity): a 400 naming the
    field, and the CLI's error naming the flag."""
    from starlette.testclient import TestClient

    with TestClient(create_app(catalog)) as client:
        answer = client.post("/v1/translate", content='{"inputs": ["abc"], "beam": 3, "length_penalty": 1e999}',
                             headers={"Content-Type": "application/json"})
    printed = run_cli(runner, "translate", "--checkpoint", models / "rev.safetensors", "--beam", "3",
                      "--length-penalty", "inf", "abc", ok=False)
    assert answer.status_code == 400 and "length_penalty" in answer.json()["error"]
    assert printed.exit_code != 0
    assert printed.stderr.count("\n") == 1 and "length_penalty must be at least 0, got inf" in printed.stderr


EXTREMES = [1e308, -1e308, 5e-324, 10**400, -(10**400), 2**64, -(2**63) - 1]
NUMBER_FIELDS = {
    "/v1/generate": ({"prefix": "the ", "length": 5}, ["temperature", "top_k", "top_p", "min_p", "repetition_penalty",
                                                       "presence_penalty", "frequency_penalty", "seed", "length",
                                                       "num_samples"]),
    "/v1/completions": ({"model": "tiny", "prompt": "the ", "max_tokens": 5},
                        ["temperature", "top_p", "n", "max_tokens", "logprobs", "presence_penalty", "frequency_penalty",
                         "seed", "best_of", "top_k", "min_p", "repetition_penalty"]),
    "/v1/chat/completions": ({"model": "tiny", "messages": [{"role": "user", "content": "the"}], "max_tokens": 5,
                              "logprobs": True}, ["temperature", "top_logprobs", "max_completion_tokens", "seed"]),
    "/v1/translate": ({"inputs": ["abc"], "beam": 2}, ["beam", "max_length", "length_penalty"]),
    "/v1/inside": ({"text": "the time"}, ["top_k"]),
}


@pytest.mark.parametrize("path", list(NUMBER_FIELDS))
def test_an_extreme_number_in_any_field_is_an_answer_or_a_400_never_a_500(catalog, path):
    """Every number field of every route, given the largest and smallest floats, a denormal, and
    whole numbers too long for a float or a seed: an answer, or a 400 naming the field in one line."""
    from starlette.testclient import TestClient

    body, names = NUMBER_FIELDS[path]
    with TestClient(create_app(catalog), raise_server_exceptions=False) as client:
        for name in names:
            for value in EXTREMES:
                answer = client.post(path, content=json.dumps({**body, name: value}),
                                     headers={"Content-Type": "application/json"})
                assert answer.status_code in (200, 400), (name, value, answer.text)
                if answer.status_code == 400:
                    error = answer.json()["error"]
                    message = error if isinstance(error, str) else error["message"]
                    assert "\n" not in message and (name in message or name == "max_tokens"), (name, value, message)


# ---------------------------------------------------------------------------------------------
# Who may ask; what reaches the terminal


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.parametrize("host", ["127.0.0.2", "localhost.", pytest.param("::1", marks=pytest.mark.skipif(
    not ipv6_loopback(), reason="this machine has no IPv6 loopback"))])
def test_a_loopback_address_serves(models, host):  # noqa: F811
    """`--host 127.0.0.2` (or `localhost.`, `::1`) serves at the URL it prints, not a 421."""
    with charlm_serve(str(models / "tiny.safetensors"), "--host", host) as (_, url, _lines):
        assert get(url, "/v1/models")[0] == 200


@pytest.mark.parametrize("host, status", [
    ("localhost.", 200), ("LOCALHOST", 200), ("[0:0:0:0:0:0:0:1]:8000", 200), ("[::ffff:127.0.0.1]", 200),
    ("127.0.0.1.:8000", 200), ("localhost.evil.example", 421), ("127.0.0.1.evil.example", 421), ("[::2]", 421),
    ("", 421)])
def test_a_loopback_server_answers_each_spelling_of_its_names_and_no_other(catalog, host, status):
    app = create_app(catalog, allowed_hosts=("localhost", "127.0.0.1", "::1"))
    with running(app) as url:
        _, port = url.removeprefix("http://").rstrip("/").rsplit(":", 1)
        connection = http.client.HTTPConnection("127.0.0.1", int(port), timeout=15)
        connection.putrequest("GET", "/v1/models", skip_host=True)
        connection.putheader("Host", host)
        connection.endheaders()
        assert connection.getresponse().status == status


def test_the_startup_line_escapes_a_checkpoint_name(runner, models, monkeypatch):  # noqa: F811
    """A checkpoint whose file name holds terminal escapes is named with them escaped, as `info` does."""
    served = []
    monkeypatch.setattr(server, "serve_forever", lambda app, sock, on_stop: served.append(app))
    shutil.copy(models / "tiny.safetensors", "ti\x1b[2Jny.safetensors")
    printed = run_cli(runner, "serve", "ti\x1b[2Jny.safetensors", "--port", "0")
    assert "\x1b" not in printed.stderr
    assert "serving ti\\x1b[2Jny (lm) at http://127.0.0.1:" in printed.stderr
    assert len(served) == 1
