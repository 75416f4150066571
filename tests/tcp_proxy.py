"""A small TCP proxy on 127.0.0.1 that makes a connection slow, flaky or dead, on cue.

Put between cairn and a real server, it shows how the storage layer copes with a bad network
without touching either end: `delay` holds back every chunk, `rate` caps the bytes per second of
each direction, `drop_after` resets a connection once it carried that many bytes (at most
`max_drops` times, so every test ends), `cut`/`resume` turn the whole server unreachable and
back, and `stall`/`unstall` freeze it: connections stay open, new ones are accepted, but not a
byte moves either way until `unstall` (a hung server, or a NAT that silently lost its state,
which only a timeout can notice). It only ever connects to the loopback port it was given.
"""

from __future__ import annotations

import socket
import struct
import threading
import time


class TcpProxy:
    def __init__(self, target_port: int, *, delay: float = 0.0, rate: float | None = None,
                 drop_after: int | None = None, max_drops: int = 0, corrupt_at: int | None = None) -> None:
        self.target = ("127.0.0.1", target_port)
        self.delay = delay
        self.rate = rate
        self.drop_after = drop_after
        self.max_drops = max_drops
        self.drops = 0
        self.corrupt_at = corrupt_at
        """Flip one bit of the byte at this offset of the first connection's client-to-server stream."""
        self.corrupted = False
        self.connections = 0
        self.carried = 0
        """Bytes forwarded so far, both ways, all connections."""
        self._cut = False
        self._flowing = threading.Event()
        self._flowing.set()
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._stopped = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stopped:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self._cut:
                _reset(client)
                continue
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        """Connect `client` to the server once the proxy is not stalled, and pump both ways."""
        with self._lock:
            self._open.add(client)
        self._flowing.wait()
        if self._stopped or self._cut:
            self._close(client)
            return
        try:
            server = socket.create_connection(self.target, timeout=5)
        except OSError:
            self._close(client)
            return
        server.settimeout(None)
        with self._lock:
            self.connections += 1
            self._open.update((client, server))
        state = {"bytes": 0, "sent": 0}
        for source, sink in ((client, server), (server, client)):
            threading.Thread(target=self._pump, args=(source, sink, client, server, state, source is client),
                             daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, client: socket.socket, server: socket.socket,
              state: dict[str, int], upstream: bool) -> None:
        try:
            while True:
                self._flowing.wait()
                chunk = source.recv(65536)
                self._flowing.wait()  # a chunk read just before a stall is held back too
                if not chunk:
                    break
                if self.delay:
                    time.sleep(self.delay)
                if self.rate:
                    time.sleep(len(chunk) / self.rate)
                with self._lock:
                    state["bytes"] += len(chunk)
                    self.carried += len(chunk)
                    drop = (self.drop_after is not None and state["bytes"] > self.drop_after
                            and self.drops < self.max_drops)
                    if drop:
                        self.drops += 1
                if drop or self._cut:
                    break
                if upstream:
                    chunk = self._maybe_corrupt(chunk, state)
                sink.sendall(chunk)
        except OSError:
            pass
        finally:
            self._close(client, server)

    def _maybe_corrupt(self, chunk: bytes, state: dict[str, int]) -> bytes:
        start, state["sent"] = state["sent"], state["sent"] + len(chunk)
        with self._lock:
            if self.corrupt_at is None or self.corrupted or not start <= self.corrupt_at < state["sent"]:
                return chunk
            self.corrupted = True
        damaged = bytearray(chunk)
        damaged[self.corrupt_at - start] ^= 0x01
        return bytes(damaged)

    def _close(self, *sockets: socket.socket) -> None:
        for sock in sockets:
            with self._lock:
                self._open.discard(sock)
            _reset(sock)

    def cut(self) -> None:
        """The server is gone: reset every connection and refuse new ones."""
        self._cut = True
        with self._lock:
            sockets = list(self._open)
        self._close(*sockets)

    def resume(self) -> None:
        self._cut = False

    def stall(self) -> None:
        """The server goes silent: nothing is forwarded, nothing is closed, new connections hang."""
        self._flowing.clear()

    def unstall(self) -> None:
        """The server answers again; what waited in the proxy moves on."""
        self._flowing.set()

    def stop(self) -> None:
        self._stopped = True
        self._listener.close()
        self.cut()
        self._flowing.set()


def _reset(sock: socket.socket) -> None:
    """Close with a TCP reset, as a crashed peer or a dropped NAT entry looks to the other end."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.shutdown(socket.SHUT_RDWR)  # wakes the pump thread blocked in recv on it
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass
