"""Messages between the walk and the forked processes that do its per-file work.

Backups (pipeline_procs) and restores (restore_procs) hand files to forked processes, each
with its own GIL, over a Unix socket pair: a message is a length, then a pickle, and may carry
open descriptors (SCM_RIGHTS), so a child reaches files only relative to the folder the walk
opened. Both sides are cairn processes forked from one another, so the pickles are trusted.
"""

from __future__ import annotations

import contextlib
import gc
import mmap
import os
import pickle
import queue
import signal
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

_HEAD = struct.Struct("<Q")  # the pickle's length


def send(sock: socket.socket, message: Any, fds: list[int] | tuple[int, ...] = ()) -> None:
    """One message: its header (carrying the descriptors, if any), then its pickle. A big
    file's bytes do not travel this way: they are in SharedSlots, and a message names the slot."""
    payload = pickle.dumps(message, pickle.HIGHEST_PROTOCOL)
    header = _HEAD.pack(len(payload))
    if not fds:
        sock.sendall(header)
    else:
        sent = socket.send_fds(sock, [header], list(fds))
        if sent < len(header):
            sock.sendall(header[sent:])
    sock.sendall(payload)


def _exactly(sock: socket.socket, n: int, head: bytes = b"") -> memoryview | None:
    """`n` bytes, the first ones `head`; None if the stream ends first."""
    view = memoryview(bytearray(n))
    view[:len(head)] = head
    got = len(head)
    while got < n:
        part = sock.recv_into(view[got:])
        if not part:
            return None
        got += part
    return view


def receive(sock: socket.socket, max_fds: int = 0) -> tuple[Any, list[int]] | None:
    """The next message and the descriptors that came with it; None at the end of the stream.
    The header is read on its own, so a read never reaches into the next message (and its
    descriptors)."""
    fds: list[int] = []
    message = None
    try:
        if max_fds:
            head, fds, _flags, _addr = socket.recv_fds(sock, _HEAD.size, max_fds)
        else:
            head = sock.recv(_HEAD.size)
        header = _exactly(sock, _HEAD.size, head) if head else None
        if header is not None:
            (length,) = _HEAD.unpack(header)
            view = _exactly(sock, length)
            if view is not None:
                message = pickle.loads(view)
    except (ConnectionResetError, struct.error):  # the other side died with our last message unread
        message = None
    if message is None:
        for fd in fds:
            os.close(fd)
        return None
    return message, fds


def fork_children(count: int, serve: Callable[[socket.socket], None]) -> list[tuple[int, socket.socket]]:
    """Fork `count` children, each running `serve` on its end of a socket pair and then leaving
    by `os._exit` (never returning into the parent's code: the repository lock!); returns each
    one's (pid, the parent's end). A child ignores SIGINT: a terminal's Ctrl-C stops the walk,
    which ends the children. `gc.freeze()` keeps their collectors from walking (and so
    copying) the parent's objects, whose pages they share."""
    children: list[tuple[int, socket.socket]] = []
    gc.freeze()
    try:
        with _ctrl_c_held():
            for _ in range(count):
                ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
                pid = os.fork()
                if pid == 0:
                    code = 1
                    try:
                        signal.signal(signal.SIGINT, signal.SIG_IGN)
                        ours.close()
                        for _, earlier in children:  # else they would not see the parent's end
                            earlier.close()
                        serve(theirs)
                        code = 0
                    finally:
                        os._exit(code)
                theirs.close()
                children.append((pid, ours))
    except BaseException:
        for pid, sock in children:
            kill(pid)
            sock.close()
            os.waitpid(pid, 0)
        raise
    finally:
        gc.unfreeze()
    return children


@contextlib.contextmanager
def _ctrl_c_held() -> Iterator[None]:
    """Hold a Ctrl-C back while children are forked and recorded, and deliver it on leaving:
    raised between a fork and the recording of its child, it would leave that child neither
    ended nor reaped. Only the main thread runs Python's signal handlers, so elsewhere there is
    nothing to hold."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGINT) is None:
        yield
        return
    pressed: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: pressed.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if pressed:
            signal.raise_signal(signal.SIGINT)  # its handler runs now, as if pressed now


def portable(exc: BaseException) -> BaseException:
    """`exc` if it survives pickling, else a RuntimeError that names it."""
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:  # noqa: BLE001 - any failure to pickle
        return RuntimeError(f"{type(exc).__name__}: {exc}")
    return exc


class Stopped(BaseException):
    """Raised in a child by `stop`'s SIGTERM (see `stoppable`): what it was writing is cleaned
    up on the way out, as for any exception."""


def stoppable() -> None:
    """In a child: let SIGTERM raise Stopped at the next bytecode instead of ending the process
    where it stands (a temporary file half-written would be left in the repository)."""
    def _raise(signum: int, frame: object) -> None:
        raise Stopped()

    signal.signal(signal.SIGTERM, _raise)


def stop(pids: list[int], grace: float) -> None:
    """End children at once but cleanly: SIGTERM, then SIGKILL for any still running after
    `grace` seconds (one stuck in the kernel). They are not reaped here."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace
    for pid in pids:
        while True:
            info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            if info is not None and info.si_pid == pid:
                break
            if time.monotonic() >= deadline:
                kill(pid)
                break
            time.sleep(0.005)


def kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def how_it_ended(pid: int) -> str:
    """Why child `pid` ended ("killed by signal 9"), looked at without reaping it: the caller
    reaps later, so no pid of ours is reused while a thread may still signal it."""
    info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
    assert info is not None  # only WNOHANG returns None
    if info.si_code != os.CLD_EXITED:
        return f"killed by signal {info.si_status}"
    return f"exit status {info.si_status}"


class SharedSlots:
    """Memory shared with children forked after it was made, cut into equal slots that one
    side fills and the other reads: a big file's bytes reach a backup worker without passing
    through a socket (two copies and a page fault per 4 KiB on each side of it).

    The slots are taken and given back in the parent only; a child reads a slot it was sent
    the number of and answers when done with it. A slot may have more than one holder (`hold`):
    it is free again once each has given it back. Pages are allocated when first written and
    given back to the system (MADV_REMOVE) whenever no file is being cut and every slot is
    free: a backup's memory at its peak, the trees and the index at the end, does not carry
    them (the walk's peak RSS on `real` was 160 MiB with them, 136 without).
    """

    def __init__(self, count: int, size: int) -> None:
        self.size = size
        self._memory = mmap.mmap(-1, count * size)  # MAP_SHARED | MAP_ANONYMOUS: inherited by fork
        self._free: queue.SimpleQueue[int] = queue.SimpleQueue()
        for slot in range(count):
            self._free.put(slot)
        self._lock = threading.Lock()
        self._holders = [0] * count
        self._taken = 0
        self._filling = 0

    @contextlib.contextmanager
    def filling(self) -> Iterator[None]:
        """Around cutting one file: its slots' bytes (a carried tail!) stay until it is done."""
        with self._lock:
            self._filling += 1
        try:
            yield
        finally:
            with self._lock:
                self._filling -= 1
                self._release_if_idle()

    def take(self) -> int:
        """A free slot's number; blocks until a child gives one back. Only while `filling`."""
        slot = self._free.get()
        with self._lock:
            self._taken += 1
            self._holders[slot] = 1
        return slot

    def hold(self, slot: int) -> None:
        """One more holder of a taken slot, which must give it back too."""
        with self._lock:
            assert self._holders[slot], "only a taken slot can be held"
            self._holders[slot] += 1

    def give(self, slot: int) -> None:
        with self._lock:
            self._holders[slot] -= 1
            if self._holders[slot]:
                return
            self._taken -= 1
            self._release_if_idle()
        self._free.put(slot)

    def _release_if_idle(self) -> None:
        if not self._taken and not self._filling:
            try:
                self._memory.madvise(mmap.MADV_REMOVE)
            except OSError:  # a kernel without it for shared memory: the pages stay, nothing else
                pass

    def view(self, slot: int) -> memoryview:
        return memoryview(self._memory)[slot * self.size:(slot + 1) * self.size]

    def move(self, to_slot: int, from_slot: int, at: int, length: int) -> None:
        """Copy `length` bytes from offset `at` of one slot to the start of another (or the
        same one: the ranges may overlap)."""
        self._memory.move(to_slot * self.size, from_slot * self.size + at, length)
