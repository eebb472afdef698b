"""Real server processes for tests: started on free loopback ports (and unix sockets), stopped
by PID. Used by pytest's fixtures and by django_tests/run.py."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

_ports_given: set[int] = set()


def fresh_socket() -> socket.socket:
    """A socket bound to a loopback port no server of this session had before. Clients are
    shared by settings, the location included: a new server on a port the OS hands out again
    would meet the health an earlier one earned (marked down, say)."""
    held = []
    try:
        while True:
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
            if port not in _ports_given:
                _ports_given.add(port)
                return s
            held.append(s)  # kept bound until done, so the next bind gets another port
    finally:
        for s in held:
            s.close()


def free_port() -> int:
    with fresh_socket() as s:
        return s.getsockname()[1]


def wait_until(check, timeout: float = 10.0, what: str = "server") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.02)
    raise RuntimeError(f"{what} did not come up within {timeout}s")


class ServerProcess:
    """A server process on a free loopback port or a unix socket in a directory of its own,
    stopped by PID. Subclasses say how to start it and how to tell it is up."""

    name = "server"
    unix = False
    socket_path: str | None = None
    port = 0

    def __init__(self, prefix: str) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix=prefix))
        self.proc: subprocess.Popen | None = None

    def command(self) -> list[str]:
        raise NotImplementedError

    def ready(self, sock: socket.socket) -> bool:
        return True

    def _connect(self) -> socket.socket:
        if self.unix:
            s = socket.socket(socket.AF_UNIX)
            try:
                s.connect(self.socket_path)
            except OSError:
                s.close()
                raise
            return s
        return socket.create_connection(("127.0.0.1", self.port), timeout=1)

    def start(self, env: dict | None = None) -> None:
        log = self.dir / "stderr.log"
        with open(log, "ab") as err:
            self.proc = subprocess.Popen(self.command(), stdout=err, stderr=err, env={**os.environ, **(env or {})})

        def up() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited: {log.read_text(errors='replace')}")
            with self._connect() as s:
                return self.ready(s)

        wait_until(up, what=f"{self.name} at {self.location}")

    @property
    def location(self) -> str:
        raise NotImplementedError

    def kill(self) -> None:
        """Die at once, as a crashed server does."""
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.kill()

    def restart(self) -> None:
        self.kill()
        self.start()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class MemcachedServer(ServerProcess):
    """A memcached process on 127.0.0.1:<free port>, or on a unix socket; with ``sasl``, one
    user in a SASL database of its own (memcached -S)."""

    name = "memcached"

    def __init__(
        self,
        *,
        unix: bool = False,
        args: tuple[str, ...] = (),
        env: dict | None = None,
        sasl: tuple[str, str] | None = None,
    ) -> None:
        exe = shutil.which("memcached")
        if exe is None:
            raise RuntimeError("memcached is not installed (Debian: apt-get install memcached)")
        super().__init__("rustcache-mc-")
        self.exe = exe
        self.unix = unix
        self.args = args
        self.env = dict(env or {})
        self.sasl = sasl
        self.port = 0 if unix else free_port()
        self.socket_path = str(self.dir / "memcached.sock") if unix else None
        if sasl:
            self._make_sasldb(*sasl)
        self.start()

    def _make_sasldb(self, username: str, password: str) -> None:
        """A SASL database with one user, and the config memcached -S reads (SASL_CONF_PATH)."""
        tool = shutil.which("saslpasswd2")
        if tool is None:
            raise RuntimeError("saslpasswd2 is not installed (Debian: apt-get install sasl2-bin)")
        db = self.dir / "sasldb2"
        subprocess.run(
            [tool, "-a", "memcached", "-c", "-p", "-f", str(db), username], input=password.encode(), check=True
        )
        (self.dir / "memcached.conf").write_text(f"mech_list: plain\nsasldb_path: {db}\n")
        self.env["SASL_CONF_PATH"] = str(self.dir)
        self.args = (*self.args, "-S")

    @property
    def location(self) -> str:
        return f"unix:{self.socket_path}" if self.unix else f"127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        cmd = [self.exe, "-U", "0", "-t", "2", "-m", "64"]
        if os.geteuid() == 0:
            cmd += ["-u", "root"]
        if self.unix:
            cmd += ["-s", self.socket_path, "-a", "0700"]
        else:
            cmd += ["-l", "127.0.0.1", "-p", str(self.port)]
        return cmd + list(self.args)

    def start(self, env: dict | None = None) -> None:
        super().start({**self.env, **(env or {})})

    def raw(self, command: bytes) -> bytes:
        """Send a text-protocol command, return the reply up to END/STORED/... (for tests)."""
        with self._connect() as s:
            s.sendall(command)
            data = b""
            ends = (b"END\r\n", b"STORED\r\n", b"NOT_STORED\r\n", b"DELETED\r\n", b"NOT_FOUND\r\n", b"OK\r\n")
            while not data.endswith(ends) and not data.startswith((b"ERROR", b"CLIENT_ERROR", b"SERVER_ERROR")):
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
            return data


class SilentServer:
    """Accepts connections and never answers: a hung server."""

    def __init__(self) -> None:
        self.sock = fresh_socket()
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.location = f"127.0.0.1:{self.port}"
        self.held: list[socket.socket] = []

    def connections_since_last_asked(self) -> int:
        """How many connections the kernel completed for us since the last call: they are taken
        from the backlog and held open (closing them would answer the client with an EOF)."""
        self.sock.setblocking(False)
        taken = 0
        while True:
            try:
                conn, _ = self.sock.accept()
            except BlockingIOError:
                return taken
            self.held.append(conn)
            taken += 1

    def close(self) -> None:
        for conn in self.held:
            conn.close()
        self.sock.close()


class _Peer:
    """A fake server on a real loopback socket: accepts connections on a thread and hands each
    to ``_talk`` on a thread of its own."""

    def __init__(self) -> None:
        self.sock = fresh_socket()
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.location = f"127.0.0.1:{self.port}"
        self.connections = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        self.sock.settimeout(0.2)
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.connections += 1
            threading.Thread(target=self._talk, args=(conn, self.connections == 1), daemon=True).start()

    def _talk(self, conn: socket.socket, first: bool) -> None:
        raise NotImplementedError

    def _received(self, conn: socket.socket, wait: float) -> Iterator[bytes]:
        """What arrives on ``conn``, a recv at a time, until the peer closes or the server stops."""
        conn.settimeout(wait)
        while not self.stop.is_set():
            try:
                data = conn.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            if not data:
                return
            yield data

    def close(self) -> None:
        self.stop.set()
        self.sock.close()
        self.thread.join(2)


class ScriptedServer(_Peer):
    """A hostile peer on a real socket: the first connection gets an error reply followed, a
    moment later, by a stray reply nobody asked for; later connections get ``fresh`` for every
    request. A client that pools the first connection reads the stray reply as an answer."""

    def __init__(self, stray: bytes, fresh: bytes) -> None:
        self.stray, self.fresh = stray, fresh
        super().__init__()

    def _talk(self, conn: socket.socket, first: bool) -> None:
        with conn:
            conn.settimeout(5)
            try:
                while conn.recv(65536):
                    if first:
                        conn.sendall(b"SERVER_ERROR boom\r\n")
                        time.sleep(0.05)
                        conn.sendall(self.stray)
                    else:
                        conn.sendall(self.fresh)
            except OSError:
                pass


class RedisServer(ServerProcess):
    """A redis-server on 127.0.0.1:<free port> (or a unix socket), without persistence."""

    name = "redis-server"

    def __init__(self, *, unix: bool = False, password: str | None = None, args: tuple[str, ...] = ()) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            raise RuntimeError("redis-server is not installed (Debian: apt-get install redis-server)")
        super().__init__("rustcache-redis-")
        self.exe = exe
        self.unix = unix
        self.password = password
        self.args = args
        self.port = 0 if unix else free_port()
        self.socket_path = str(self.dir / "redis.sock") if unix else None
        self.start()

    @property
    def location(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        if self.unix:
            return f"unix://{auth}{self.socket_path}"
        return f"redis://{auth}127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        cmd = [self.exe, "--save", "", "--appendonly", "no", "--dir", str(self.dir), "--bind", "127.0.0.1"]
        cmd += ["--port", "0", "--unixsocket", self.socket_path] if self.unix else ["--port", str(self.port)]
        if self.password:
            cmd += ["--requirepass", self.password]
        return cmd + list(self.args)

    def ready(self, sock: socket.socket) -> bool:
        sock.sendall(b"PING\r\n")
        return sock.recv(64).startswith((b"+PONG", b"-NOAUTH"))


class EchoServer(_Peer):
    """A peer that sends back every byte it receives (something listening that is not redis)."""

    def _talk(self, conn: socket.socket, first: bool) -> None:
        with conn:
            for data in self._received(conn, 0.2):
                conn.sendall(data)


class FakeReplyServer(_Peer):
    """A peer that answers every request with ``head``, then (with ``trickle``) one byte every
    ``trickle`` seconds, forever: a hostile length, or a server that trickles its reply."""

    def __init__(self, head: bytes, trickle: float | None = None) -> None:
        self.head, self.trickle = head, trickle
        super().__init__()

    def _talk(self, conn: socket.socket, first: bool) -> None:
        with conn:
            conn.settimeout(0.2)
            try:
                while not self.stop.is_set():
                    try:
                        if not conn.recv(65536):
                            return
                    except TimeoutError:
                        continue
                    conn.sendall(self.head)
                    while self.trickle and not self.stop.wait(self.trickle):
                        conn.sendall(b"x")
            except OSError:
                pass


class Certificates:
    """A CA, a server certificate it signed (for localhost and 127.0.0.1), a client certificate
    it signed (for mutual TLS), and a second CA that signed nothing here, made with the openssl
    command-line tool in a directory of their own."""

    def __init__(self) -> None:
        exe = shutil.which("openssl")
        if exe is None:
            raise RuntimeError("openssl is not installed (Debian: apt-get install openssl)")
        self.dir = Path(tempfile.mkdtemp(prefix="rustcache-certs-"))
        self._openssl = exe
        self.ca, self.ca_key = self._ca("ca", "rustcache test CA")
        self.other_ca, _ = self._ca("other-ca", "some other CA")
        self.server, self.server_key = self._signed("server", "localhost", "DNS:localhost,IP:127.0.0.1")
        self.client, self.client_key = self._signed("client", "rustcache client", None)
        # A certificate naming another host only (for hostname checks).
        self.elsewhere, self.elsewhere_key = self._signed("elsewhere", "cache.example.com", "DNS:cache.example.com")

    def _run(self, *args: str) -> None:
        subprocess.run([self._openssl, *args], check=True, capture_output=True, cwd=self.dir)

    def _ca(self, name: str, cn: str) -> tuple[str, str]:
        cert, key = self.dir / f"{name}.crt", self.dir / f"{name}.key"
        self._run(
            "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "30",
            "-subj", f"/CN={cn}", "-keyout", str(key), "-out", str(cert),
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        )  # fmt: skip
        return str(cert), str(key)

    def _signed(self, name: str, cn: str, san: str | None) -> tuple[str, str]:
        cert, key, csr = self.dir / f"{name}.crt", self.dir / f"{name}.key", self.dir / f"{name}.csr"
        ext = self.dir / f"{name}.ext"
        # Servers present theirs as clients too (a replica to its leader).
        usage = "serverAuth,clientAuth" if san else "clientAuth"
        ext.write_text(
            "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n"
            f"extendedKeyUsage={usage}\n" + (f"subjectAltName={san}\n" if san else "")
        )
        self._run(
            "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-subj", f"/CN={cn}",
            "-keyout", str(key), "-out", str(csr),
        )  # fmt: skip
        self._run(
            "x509", "-req", "-in", str(csr), "-CA", self.ca, "-CAkey", self.ca_key, "-CAcreateserial",
            "-days", "30", "-extfile", str(ext), "-out", str(cert),
        )  # fmt: skip
        return str(cert), str(key)

    def close(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


class TlsRedisServer(RedisServer):
    """A redis-server that speaks only TLS, on 127.0.0.1:<free port>, with `certs`' server
    certificate (or `cert`/`key`). `auth_clients`: "no", "yes" (mutual TLS) or "optional"."""

    name = "redis-server (TLS)"

    def __init__(
        self,
        certs: Certificates,
        *,
        auth_clients: str = "no",
        cert: tuple[str, str] | None = None,
        password: str | None = None,
        args: tuple[str, ...] = (),
    ) -> None:
        self.certs = certs
        self.auth_clients = auth_clients
        self.cert, self.key = cert or (certs.server, certs.server_key)
        super().__init__(password=password, args=args)

    @property
    def location(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"rediss://{auth}127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        cmd = [self.exe, "--save", "", "--appendonly", "no", "--dir", str(self.dir), "--bind", "127.0.0.1"]
        cmd += ["--port", "0", "--tls-port", str(self.port), "--tls-cert-file", self.cert, "--tls-key-file", self.key]
        cmd += ["--tls-ca-cert-file", self.certs.ca, "--tls-auth-clients", self.auth_clients]
        # As a replica it connects to its leader over TLS, with its certificate as the client's.
        cmd += ["--tls-replication", "yes"]
        if self.password:
            cmd += ["--requirepass", self.password, "--masterauth", self.password]
        return cmd + list(self.args)

    def _connect(self) -> socket.socket:
        import ssl

        context = ssl.create_default_context(cafile=self.certs.ca)
        context.check_hostname = False
        context.load_cert_chain(self.certs.client, self.certs.client_key)
        raw = socket.create_connection(("127.0.0.1", self.port), timeout=1)
        try:
            return context.wrap_socket(raw)
        except OSError:
            raw.close()
            raise

    def raw(self, command: bytes) -> bytes:
        """Send one inline command over TLS; the first reply's bytes."""
        with self._connect() as s:
            if self.password:
                s.sendall(f"AUTH {self.password}\r\n".encode())
                s.recv(64)
            s.sendall(command + b"\r\n")
            return s.recv(65536)


class DelayProxy:
    """Forwards a TCP connection to `upstream_port`, adding `delay` seconds of latency to the
    server's replies: a real server, made slow (`delay` may be changed at any time: it holds
    for the replies that arrive after)."""

    def __init__(self, upstream_port: int, delay: float) -> None:
        self.upstream_port, self.delay = upstream_port, delay
        self.sock = fresh_socket()
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.location = f"redis://127.0.0.1:{self.port}"
        self._threads = threading
        self._open: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            self._open += [client, upstream]
            self._threads.Thread(target=self._pump, args=(client, upstream, False), daemon=True).start()
            self._threads.Thread(target=self._pump, args=(upstream, client, True), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, slow: bool) -> None:
        """Copy src to dst, each chunk sent (if `slow`) `delay` after it arrived (a latency:
        chunks that arrive together leave together)."""
        import queue

        chunks: queue.Queue = queue.Queue()

        def send() -> None:
            try:
                while (item := chunks.get()) is not None:
                    arrived, chunk, delay = item
                    time.sleep(max(0.0, arrived + delay - time.monotonic()))
                    dst.sendall(chunk)
            except OSError:
                pass
            finally:
                for s in (src, dst):
                    with contextlib.suppress(OSError):
                        s.shutdown(socket.SHUT_RDWR)

        self._threads.Thread(target=send, daemon=True).start()
        try:
            while chunk := src.recv(65536):
                chunks.put((time.monotonic(), chunk, self.delay if slow else 0.0))
        except OSError:
            pass
        chunks.put(None)

    def close(self) -> None:
        self.sock.close()
        for s in self._open:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()


class SentinelServer(ServerProcess):
    """One redis-sentinel (``redis-server --sentinel``) watching ``service`` at ``master_port``,
    with a short down-after so a failover takes a few seconds."""

    name = "redis-sentinel"

    def __init__(
        self,
        service: str,
        master_port: int,
        *,
        down_after_ms: int = 1000,
        quorum: int = 2,
        password: str | None = None,
        master_password: str | None = None,
    ) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            raise RuntimeError("redis-server is not installed (Debian: apt-get install redis-server)")
        super().__init__("rustcache-sentinel-")
        self.exe = exe
        self.port = free_port()
        # The sentinel rewrites its config file as it learns: it must be its own, and writable.
        self.config = self.dir / "sentinel.conf"
        self.config.write_text(
            f"port {self.port}\nbind 127.0.0.1\ndir {self.dir}\n"
            f"sentinel monitor {service} 127.0.0.1 {master_port} {quorum}\n"
            f"sentinel down-after-milliseconds {service} {down_after_ms}\n"
            f"sentinel failover-timeout {service} 10000\n"
            f"sentinel parallel-syncs {service} 2\n"
            + (f"sentinel auth-pass {service} {master_password}\n" if master_password else "")
            + (f"requirepass {password}\n" if password else "")
        )
        self.password = password
        self.start()

    @property
    def location(self) -> str:
        return f"127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        return [self.exe, str(self.config), "--sentinel"]

    def ready(self, sock: socket.socket) -> bool:
        sock.sendall(b"PING\r\n")
        return sock.recv(64).startswith((b"+PONG", b"-NOAUTH"))

    def ask(self, *args: str) -> bytes:
        """One command's raw reply."""
        return raw_command(self.port, *args, password=self.password)


class TlsSentinelServer(SentinelServer):
    """A sentinel that speaks only TLS (``certs``' server certificate), and watches its data
    nodes over TLS too."""

    name = "redis-sentinel (TLS)"

    def __init__(self, certs: Certificates, service: str, master_port: int, **kwargs) -> None:
        self.certs = certs
        super().__init__(service, master_port, quorum=1, **kwargs)

    def start(self, env: dict | None = None) -> None:
        if "tls-port" not in self.config.read_text():
            text = self.config.read_text().replace(f"port {self.port}\n", "port 0\n")
            self.config.write_text(
                text + f"tls-port {self.port}\ntls-cert-file {self.certs.server}\n"
                f"tls-key-file {self.certs.server_key}\ntls-ca-cert-file {self.certs.ca}\n"
                "tls-auth-clients no\ntls-replication yes\n"
            )
        super().start(env)

    def _connect(self) -> socket.socket:
        import ssl

        context = ssl.create_default_context(cafile=self.certs.ca)
        raw = socket.create_connection(("127.0.0.1", self.port), timeout=1)
        try:
            return context.wrap_socket(raw, server_hostname="localhost")
        except OSError:
            raw.close()
            raise

    def ask(self, *args: str) -> bytes:
        words = [f"*{len(args)}\r\n".encode()] + [f"${len(a.encode())}\r\n{a}\r\n".encode() for a in args]
        with self._connect() as s:
            if self.password:
                s.sendall(f"AUTH {self.password}\r\n".encode())
                s.recv(64)
            s.sendall(b"".join(words))
            time.sleep(0.05)
            return s.recv(65536)


def raw_command(port: int, *args: str, password: str | None = None, certs: Certificates | None = None) -> bytes:
    """One command to a redis (or sentinel) on 127.0.0.1:``port``, over a socket of our own (TLS
    with ``certs``' CA and client certificate when given); its raw reply (read until the server
    pauses)."""

    def packed(words: tuple[str, ...]) -> bytes:
        return f"*{len(words)}\r\n".encode() + b"".join(f"${len(w.encode())}\r\n{w}\r\n".encode() for w in words)

    raw = socket.create_connection(("127.0.0.1", port), timeout=2)
    if certs is not None:
        import ssl

        context = ssl.create_default_context(cafile=certs.ca)
        context.load_cert_chain(certs.client, certs.client_key)
        try:
            raw = context.wrap_socket(raw, server_hostname="127.0.0.1")
        except OSError:
            raw.close()
            raise
    with raw as s:
        if password:
            s.sendall(packed(("AUTH", password)))
            s.recv(64)
        s.sendall(packed(args))
        data = s.recv(65536)
        s.settimeout(0.05)
        try:
            while chunk := s.recv(65536):
                data += chunk
        except OSError:
            pass
        return data


class SentinelGroup:
    """A master, two replicas and three sentinels on loopback: Sentinel's smallest sound setup.
    ``master()`` is whichever data node the sentinels name now (it changes after a failover)."""

    service = "rustcache"

    def __init__(
        self,
        *,
        replicas: int = 2,
        sentinels: int = 3,
        down_after_ms: int = 1000,
        password: str | None = None,
        sentinel_password: str | None = None,
    ) -> None:
        self.password = password
        auth = ("--masterauth", password) if password else ()
        self.nodes = [RedisServer(password=password, args=auth)]
        master_port = self.nodes[0].port
        self.nodes += [
            RedisServer(password=password, args=("--replicaof", "127.0.0.1", str(master_port), *auth))
            for _ in range(replicas)
        ]
        self.replicas = replicas
        self.sentinels = [
            SentinelServer(
                self.service,
                master_port,
                down_after_ms=down_after_ms,
                quorum=min(2, sentinels),
                password=sentinel_password,
                master_password=password,
            )
            for _ in range(sentinels)
        ]
        self.wait_healthy()

    @property
    def addresses(self) -> list[tuple[str, int]]:
        return [("127.0.0.1", s.port) for s in self.sentinels]

    def master_port(self) -> int:
        reply = self.sentinels[0].ask("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service)
        return int(reply.split(b"\r\n")[-2])

    def master(self) -> RedisServer:
        port = self.master_port()
        return next(n for n in self.nodes if n.port == port)

    def wait_healthy(self, timeout: float = 30.0) -> None:
        """Until every sentinel knows the other two and sees the master with two live replicas
        in sync (so a failover can be agreed and has a replica to promote)."""

        def healthy() -> bool:
            others = f"\r\nnum-other-sentinels\r\n$1\r\n{len(self.sentinels) - 1}".encode()
            for s in self.sentinels:
                master = s.ask("SENTINEL", "MASTER", self.service)
                if b"s_down" in master or b"o_down" in master or others not in master:
                    return False
                replicas = s.ask("SENTINEL", "REPLICAS", self.service)
                if replicas.count(b"master-link-status\r\n$2\r\nok") < self.replicas or b"s_down" in replicas:
                    return False
            return True

        wait_until(healthy, timeout, what="the sentinel group")

    def fail_over(self, timeout: float = 30.0) -> tuple[int, int]:
        """Kill the master and wait until the sentinels name another; (old port, new port)."""
        old = self.master()
        old.kill()
        wait_until(lambda: self.master_port() != old.port, timeout, what="a failover")
        return old.port, self.master_port()

    def revive(self, port: int) -> None:
        """Start a killed node again, as a replica of the current master (the sentinels would
        convert it too, but later)."""
        node = next(n for n in self.nodes if n.port == port)
        auth = ("--masterauth", self.password) if self.password else ()
        node.args = ("--replicaof", "127.0.0.1", str(self.master_port()), *auth)
        node.start()

    def close(self) -> None:
        for p in self.sentinels + self.nodes:
            p.close()


class FakeSentinel(_Peer):
    """A sentinel that names ``master_port`` (settable) as the master of ``service`` and
    announces a change only when told (``announce``): a sentinel that lags behind a failover,
    or one whose announcement comes at a moment of the test's choosing, which real ones only do
    by chance. It answers GET-MASTER-ADDR-BY-NAME, MASTER, REPLICAS (none), SUBSCRIBE and PING."""

    def __init__(self, service: str, master_port: int) -> None:
        self.service, self.master_port = service, master_port
        self.asked = 0  # GET-MASTER-ADDR-BY-NAME requests answered
        self.subscribed = 0  # SUBSCRIBE requests answered
        self._subscribers: list[socket.socket] = []
        self._sending = threading.Lock()  # an announcement and a reply never interleave
        super().__init__()

    def announce(self, new_port: int) -> None:
        """Name ``new_port`` the master from now on, and publish +switch-master to every
        subscriber."""
        old, self.master_port = self.master_port, new_port
        payload = f"{self.service} 127.0.0.1 {old} 127.0.0.1 {new_port}"
        frame = b"".join(f"${len(w)}\r\n{w}\r\n".encode() for w in ("message", "+switch-master", payload))
        for conn in list(self._subscribers):
            with self._sending, contextlib.suppress(OSError):
                conn.sendall(b"*3\r\n" + frame)

    @staticmethod
    def _commands(buf: bytearray) -> list[list[bytes]]:
        """The whole commands at the front of ``buf`` (taken out of it)."""
        out = []
        while True:
            if not buf.startswith(b"*") or b"\r\n" not in buf:
                return out
            head, rest = bytes(buf).split(b"\r\n", 1)
            words, ok = [], True
            for _ in range(int(head[1:])):
                if b"\r\n" not in rest:
                    ok = False
                    break
                size_line, rest = rest.split(b"\r\n", 1)
                size = int(size_line[1:])
                if len(rest) < size + 2:
                    ok = False
                    break
                words.append(rest[:size])
                rest = rest[size + 2 :]
            if not ok:
                return out
            out.append(words)
            buf[:] = rest

    def _answer(self, words: list[bytes]) -> bytes:
        def bulk(s: str) -> bytes:
            return f"${len(s)}\r\n{s}\r\n".encode()

        name = [w.decode().upper() for w in words[:2]]
        port = str(self.master_port)
        if name == ["SENTINEL", "GET-MASTER-ADDR-BY-NAME"]:
            self.asked += 1
            return b"*2\r\n" + bulk("127.0.0.1") + bulk(port)
        if name == ["SENTINEL", "MASTER"]:
            fields = ["name", self.service, "ip", "127.0.0.1", "port", port, "flags", "master"]
            return f"*{len(fields)}\r\n".encode() + b"".join(bulk(f) for f in fields)
        if name == ["SENTINEL", "REPLICAS"]:
            return b"*0\r\n"
        if name[:1] == ["SUBSCRIBE"]:
            self.subscribed += 1
            return b"".join(
                b"*3\r\n" + bulk("subscribe") + bulk(ch.decode()) + f":{i}\r\n".encode()
                for i, ch in enumerate(words[1:], 1)
            )
        if name[:1] == ["PING"]:
            return b"+PONG\r\n"
        return b"-ERR unknown command\r\n"

    def _talk(self, conn: socket.socket, first: bool) -> None:
        buf = bytearray()
        with conn:
            for data in self._received(conn, 0.5):
                buf += data
                for words in self._commands(buf):
                    with self._sending:
                        conn.sendall(self._answer(words))
                    if words[:1] and words[0].upper() == b"SUBSCRIBE":
                        self._subscribers.append(conn)


def free_cluster_port() -> int:
    """A free port whose cluster bus port (the port + 10000) is free too."""
    import random

    for _ in range(200):
        port = random.randint(20000, 40000)
        if port in _ports_given:
            continue
        try:
            for p in (port, port + 10000):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", p))
        except OSError:
            continue
        _ports_given.add(port)
        return port
    raise RuntimeError("no free pair of ports for a cluster node")


def _cluster_args(node: RedisServer, node_timeout_ms: int) -> list[str]:
    return [
        "--cluster-enabled", "yes", "--cluster-config-file", str(node.dir / "nodes.conf"),
        "--cluster-node-timeout", str(node_timeout_ms), "--cluster-require-full-coverage", "no",
    ]  # fmt: skip


class ClusterNode(RedisServer):
    """A redis-server in cluster mode (its own nodes.conf, a short node timeout)."""

    name = "redis-server (cluster)"

    def __init__(self, *, node_timeout_ms: int = 1000, password: str | None = None) -> None:
        self.node_timeout_ms = node_timeout_ms
        self._cluster_port = free_cluster_port()
        super().__init__(password=password)

    def command(self) -> list[str]:
        self.port = self._cluster_port
        extra = ["--masterauth", self.password] if self.password else []
        return [*super().command(), *extra, *_cluster_args(self, self.node_timeout_ms)]


class TlsClusterNode(TlsRedisServer):
    """A cluster-mode redis-server that speaks only TLS, to clients and on its cluster bus."""

    name = "redis-server (TLS cluster)"

    def __init__(self, certs: Certificates, *, node_timeout_ms: int = 1000, password: str | None = None) -> None:
        self.node_timeout_ms = node_timeout_ms
        self._cluster_port = free_cluster_port()
        super().__init__(certs, password=password)

    def command(self) -> list[str]:
        self.port = self._cluster_port
        return [*super().command(), "--tls-cluster", "yes", *_cluster_args(self, self.node_timeout_ms)]


class RedisCluster:
    """A Redis Cluster of ``primaries`` primaries with a replica each, made with ``redis-cli
    --cluster create`` on loopback; for the whole test session (it takes a few seconds)."""

    def __init__(
        self,
        primaries: int = 3,
        *,
        replicas: int = 1,
        password: str | None = None,
        certs: Certificates | None = None,
    ) -> None:
        # password: every node's (requirepass, and masterauth for its replicas); certs: every
        # node speaks only TLS, its bus too, with these certificates.
        cli = shutil.which("redis-cli")
        if cli is None:
            raise RuntimeError("redis-cli is not installed (Debian: apt-get install redis-tools)")
        self.password = password
        self.certs = certs
        self.cli = [cli]
        if certs is not None:
            self.cli += ["--tls", "--cacert", certs.ca, "--cert", certs.client, "--key", certs.client_key]
        if password:
            self.cli += ["--no-auth-warning", "-a", password]
        count = primaries * (1 + replicas)
        if certs is not None:
            self.nodes: list[RedisServer] = [TlsClusterNode(certs, password=password) for _ in range(count)]
        else:
            self.nodes = [ClusterNode(password=password) for _ in range(count)]
        subprocess.run(
            [*self.cli, "--cluster", "create", *(f"127.0.0.1:{n.port}" for n in self.nodes),
             "--cluster-replicas", str(replicas), "--cluster-yes"],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip
        self.wait_ok()

    def ask(self, port: int, *args: str) -> bytes:
        """One command to the node on ``port`` (with the cluster's password and TLS)."""
        return raw_command(port, *args, password=self.password, certs=self.certs)

    @property
    def location(self) -> str:
        """Seed nodes, as a LOCATION."""
        scheme = "rediss" if self.certs is not None else "redis"
        auth = f":{self.password}@" if self.password else ""
        return ",".join(f"{scheme}://{auth}127.0.0.1:{n.port}" for n in self.nodes[:3])

    def alive(self) -> list[RedisServer]:
        return [n for n in self.nodes if n.proc and n.proc.poll() is None]

    def wait_ok(self, timeout: float = 30.0) -> None:
        """Until every live node says the cluster is ok and agrees on who serves every slot."""

        def ok() -> bool:
            views = set()
            for n in self.alive():
                if b"cluster_state:ok" not in self.ask(n.port, "CLUSTER", "INFO"):
                    return False
                info = self.ask(n.port, "INFO", "replication")
                if b"role:slave" in info and b"master_link_status:up" not in info:
                    return False
                views.add(tuple(sorted((s, p) for s, _, p in self.slot_ranges(n.port))))
            replicas = sum(b"role:slave" in self.ask(n.port, "INFO", "replication") for n in self.alive())
            primaries = {p for _, p in next(iter(views), ())}
            return len(views) == 1 and replicas == len(self.alive()) - len(primaries)

        wait_until(ok, timeout, what="the cluster")

    def slot_ranges(self, port: int) -> list[tuple[int, int, int]]:
        """(first slot, last slot, primary port) as node ``port`` sees them (CLUSTER SHARDS is
        newer than some servers: read redis-cli's CLUSTER NODES)."""
        out = []
        for line in self.ask(port, "CLUSTER", "NODES").decode(errors="replace").splitlines():
            parts = line.split()
            if len(parts) < 9 or "master" not in parts[2] or "fail" in parts[2]:
                continue
            node_port = int(parts[1].split("@")[0].rsplit(":", 1)[1])
            for r in parts[8:]:
                if r.startswith("["):
                    continue  # a slot being migrated
                first, _, last = r.partition("-")
                out.append((int(first), int(last or first), node_port))
        return out

    def node_ids(self) -> dict[int, str]:
        """Each node's cluster id, by port."""
        out = {}
        for line in self.ask(self.alive()[0].port, "CLUSTER", "NODES").decode(errors="replace").splitlines():
            parts = line.split()
            if len(parts) >= 8 and "@" in parts[1]:
                out[int(parts[1].split("@")[0].rsplit(":", 1)[1])] = parts[0]
        return out

    def reshard(self, source: int, target: int, slots: int) -> None:
        """Move ``slots`` slots (and their keys) from the primary on ``source`` to ``target``."""
        ids = self.node_ids()
        subprocess.run(
            [*self.cli, "--cluster", "reshard", f"127.0.0.1:{source}", "--cluster-from", ids[source],
             "--cluster-to", ids[target], "--cluster-slots", str(slots), "--cluster-yes", "--cluster-pipeline", "10"],
            check=True, capture_output=True, timeout=120,
        )  # fmt: skip

    def migrate_slot(self, slot: int, target: int, pause: float = 0.02) -> None:
        """Move one slot to the primary on ``target`` the way redis-cli does, one key at a time
        with a pause between: for that long the slot is split between the two nodes (ASK).
        Then the nodes are told the new owner, the source first (redis-cli starts with the
        target): for one more pause the source sends clients to the target, which still sends
        them back (MOVED both ways)."""
        source = self.primary_of(slot)
        ids = self.node_ids()
        self.ask(target, "CLUSTER", "SETSLOT", str(slot), "IMPORTING", ids[source])
        self.ask(source, "CLUSTER", "SETSLOT", str(slot), "MIGRATING", ids[target])
        while True:
            reply = self.ask(source, "CLUSTER", "GETKEYSINSLOT", str(slot), "1")
            keys = [line.decode() for line in reply.split(b"\r\n")[2::2] if line]
            if not keys:
                break
            auth = ("AUTH", self.password) if self.password else ()
            self.ask(source, "MIGRATE", "127.0.0.1", str(target), "", "0", "5000", "REPLACE", *auth, "KEYS", *keys)
            time.sleep(pause)
        self.ask(source, "CLUSTER", "SETSLOT", str(slot), "NODE", ids[target])
        time.sleep(pause)
        for port in [target, *({p for _, _, p in self.slot_ranges(source)} - {source, target})]:
            self.ask(port, "CLUSTER", "SETSLOT", str(slot), "NODE", ids[target])

    def failover(self, primary: int) -> int:
        """A manual failover (``CLUSTER FAILOVER`` sent to a replica of the primary on
        ``primary``): the replica takes every slot of its primary at once, with no data lost.
        The new primary's port."""
        ids = self.node_ids()
        replica = None
        for line in self.ask(primary, "CLUSTER", "NODES").decode(errors="replace").splitlines():
            parts = line.split()
            if len(parts) >= 8 and "slave" in parts[2] and parts[3] == ids[primary]:
                replica = int(parts[1].split("@")[0].rsplit(":", 1)[1])
        if replica is None:
            raise RuntimeError(f"the primary on {primary} has no replica")
        self.ask(replica, "CLUSTER", "FAILOVER")
        wait_until(lambda: b"role:master" in self.ask(replica, "INFO", "replication"), 20, what="the failover")
        self.wait_ok()
        return replica

    def primary_of(self, slot: int) -> int | None:
        """The port of the primary serving ``slot`` (None while none does: a failover)."""
        port = self.alive()[0].port
        return next((p for first, last, p in self.slot_ranges(port) if first <= slot <= last), None)

    def owners(self) -> list[int | None]:
        """The primary of every slot, by slot (one CLUSTER NODES)."""
        out: list[int | None] = [None] * 16384
        for first, last, p in self.slot_ranges(self.alive()[0].port):
            out[first : last + 1] = [p] * (last - first + 1)
        return out

    def node(self, port: int) -> RedisServer:
        return next(n for n in self.nodes if n.port == port)

    def close(self) -> None:
        for n in self.nodes:
            n.close()


def postgres_bindir() -> Path | None:
    """The directory of PostgreSQL's server programs (Debian keeps them out of PATH)."""
    found = shutil.which("pg_config")
    if found:
        out = subprocess.run([found, "--bindir"], capture_output=True, text=True).stdout.strip()
        if out and (Path(out) / "postgres").exists():
            return Path(out)
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"), key=lambda p: int(p.parent.parent.name))
    return versions[-1].parent if versions else None


class PostgresServer(ServerProcess):
    """A PostgreSQL server of its own (initdb into a temporary directory, trust auth) on a
    free loopback port, for the ORM benchmark. PostgreSQL refuses to run as root: as root it
    runs as the ``postgres`` user. Debian: ``apt-get install -y postgresql``."""

    name = "postgres"

    def __init__(self) -> None:
        super().__init__("rustcache-pg-")
        bindir = postgres_bindir()
        if bindir is None:
            raise RuntimeError("PostgreSQL is not installed (Debian: apt-get install -y postgresql)")
        self.bindir = bindir
        self.as_user: list[str] = []
        if os.geteuid() == 0:
            import pwd

            user = pwd.getpwnam("postgres")
            os.chown(self.dir, user.pw_uid, user.pw_gid)
            self.as_user = ["runuser", "-u", "postgres", "--"]
        self.port = free_port()
        subprocess.run(
            [*self.as_user, str(bindir / "initdb"), "-D", str(self.dir / "data"), "-U", "postgres",
             "--auth=trust", "--no-sync", "-E", "UTF8"],
            check=True, capture_output=True, timeout=120,
        )  # fmt: skip
        self.start()

    def command(self) -> list[str]:
        return [
            *self.as_user, str(self.bindir / "postgres"), "-D", str(self.dir / "data"), "-p", str(self.port),
            "-k", str(self.dir), "-c", "listen_addresses=127.0.0.1",
        ]  # fmt: skip

    @property
    def location(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def database(self) -> dict:
        """Django's DATABASES entry for it."""
        return {"ENGINE": "django.db.backends.postgresql", "NAME": "postgres", "USER": "postgres",
                "HOST": "127.0.0.1", "PORT": str(self.port)}  # fmt: skip

    def stop(self) -> None:
        """A fast shutdown (SIGINT to the postmaster: open sessions are ended, not waited for)."""
        pidfile = self.dir / "data" / "postmaster.pid"
        if self.proc and self.proc.poll() is None and pidfile.exists():
            try:
                os.kill(int(pidfile.read_text().split()[0]), signal.SIGINT)
                self.proc.wait(10)
            except (ValueError, OSError, subprocess.TimeoutExpired):
                pass
        super().stop()
