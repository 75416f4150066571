"""A backup's files read and stored by forked worker processes, each with its own GIL.

Why: with reader and saver threads (pipeline.Pipeline) a first backup kept about one and a
half of two cores busy. Opening, capturing metadata, reading, hashing and sealing are mostly
Python or hold the GIL (AES-GCM in `cryptography` does), and every system call hands the GIL
from one thread to another. Worker processes do the same work without waiting for each other.

Shape: the walk (archiver) stays in this process and hands batches of files exactly as to the
reader threads (`Pipeline.read_at`), except files too big to read whole (over twice the largest
chunk): this process's big-file readers (BIG_READERS, a file each) read and cut those (cutting
is fast, and one worker would seal a whole file's chunks one after another on one core: CPU/wall
1.0 for a 1 GiB file). A reader reads its file into memory shared with the workers
(procs.SharedSlots, a slot of `slot_bytes` at a time), cuts each slot in place and sends a
worker the slot's number and its chunks' offsets; the worker hashes and seals them from
there as it does a batch's. Saver threads sharing this process's GIL did that before (CPU/wall
1.4), then pieces sent through the socket (two more copies of every byte: a 1 GiB random file
took 1.35x as long). A batch or piece goes to the worker with the least work outstanding,
with a copy of each folder's descriptor (SCM_RIGHTS), so a worker reaches files only relative
to a folder the walk opened. A worker runs the threads' per-file code (`FileReader`: change
detection, skip-and-list rules, chunking) and then, per batch or piece (or every QUEUE_BYTES
of a medium file), asks this process which of the chunks it hashed are new
(`Repository.claim_blobs`: this process alone decides what the repository
has, so a blob two workers meet is stored once, and packs of other snapshots that the backup
relies on are noted as with threads). It seals the new ones into a pack of its own, written
into a temporary file in the repository as it fills (`Repository.streamed_pack`: a worker held
a whole 16 MiB pack in memory before, 46 MiB of a first backup's 261 over all its processes),
and stores it; this process indexes each pack the worker reports (`Repository.add_pack`) and
writes the index objects. Trees are stored here, by the walk.

The content ids a batch's results carry may sit in a worker's unfinished pack: `flush` (before a
checkpoint) and `close` have every worker store its pack and report it before anything refers
to them in a snapshot.

When: for a local folder only (an SSH or HTTP connection cannot be shared by two processes) and
not for a dry run, which stores nothing; and only once the walk has handed over START_FILES
files or START_BYTES, the first ones going to `Pipeline`'s threads. They fork after the index
is loaded, so they share its pages (`gc.freeze()` keeps them shared), and leave by `os._exit`,
never returning into this process's code (the repository lock!). A worker stores its last pack
only when told to finish: if this process dies, its workers store nothing more.

Failures: a file's own problems (unreadable, changed twice) come back in its result as with the
threads. Anything else in a worker (a full disk, a bug) is sent here and raised in the walk, and
a worker that dies (killed, out of memory) fails the backup with one line naming it. Nothing is
half-written: a pack is stored whole or not at all, and no snapshot refers to a blob whose pack
was not reported. Ctrl-C reaches the walk only (workers ignore SIGINT), which checkpoints with
the workers' help and then ends them. An aborted backup ends its workers with SIGTERM, which a
worker turns into an exception (procs.stoppable), so a pack it was writing is removed as on any
error; SIGKILL follows only for one still running after STOP_GRACE.
"""

from __future__ import annotations

import functools
import os
import queue
import socket
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from cairn.errors import CairnError
from cairn.files.chunker import RawReader
from cairn.files.pipeline import BATCH_FILES, Aborted, FileReader, Pipeline, ReadResult, _Batch, _ReadError
from cairn.files.procs import (
    SharedSlots, Stopped, fork_children, how_it_ended, portable, receive, send, stop, stoppable,
)
from cairn.repo.blob import BlobType
from cairn.repo.repository import Repository

BATCHES_PER_WORKER = 3  # one being read, two waiting: a worker never idles for the walk
CLAIMS_AHEAD = 1
"""Questions a worker may have asked (`_Worker.settle`) before it waits for the oldest answer;
each holds its batch's new bytes until then."""
QUEUE_BYTES = 8 << 20
"""A worker asks which of its chunks are new at the end of each batch, or sooner once this many
bytes wait (a file that grew too big to read whole while it was read): that bounds its memory,
and asking costs one round trip."""


def slot_bytes(max_size: int) -> int:
    """A big file's chunks go to a worker a shared slot at a time (one round trip each). A slot
    must hold more than the largest chunk: the unfinished chunk carried over (at most that
    large) leaves room for new bytes, so each slot gives at least one chunk. Five fourths of it
    (5 MiB): 3 slots of 5 MiB went as fast as 4 of 8 on a 1 GiB random file, and a first backup
    of `real` peaked at 136 MiB in the walk's process instead of 155."""
    return max_size + max_size // 4

STOP_GRACE = 5.0
"""Seconds an aborted backup gives its workers to leave cleanly before killing them."""

START_FILES = 1000
START_BYTES = 16 << 20
"""Until the walk has handed over this many files or bytes, they are read by this process's
threads (`Pipeline`): for a backup that small, forking the workers and passing messages costs
more than the second core saves, and each worker would leave a pack of its own."""


BIG_READERS = 2
"""Big files read and cut at once by this process, each in a thread of its own. Cutting is the
one stage of a big file that cannot be split across processes (each cut point depends on the
one before), and pyfastcdc lets go of the GIL while it cuts: with one reader, four 1 GiB random
files left the cores 17-21% idle, the workers waiting for slots; with two, 9-12%, and three
were slower (docs/PERFORMANCE.md). One big file alone still goes at one reader's pace."""


def worker_processes() -> int:
    """One worker per core and one more, to read while another waits on the disk."""
    return max(2, min(8, (os.cpu_count() or 2) + 1))


# -- a worker process ------------------------------------------------------------------------

class _Worker(FileReader):
    """A worker's reader: chunks wait in `queue` until the parent says which are new, then the
    new ones are sealed into this worker's own pack."""

    def __init__(self, repo: Repository, sock: socket.socket, shared: SharedSlots) -> None:
        super().__init__(repo.config.chunker)
        self.repo = repo
        self.sock = sock
        self.shared = shared  # ProcessPipeline.shared, inherited by the fork
        self.inbox: deque[tuple[Any, list[int]]] = deque()  # batches that came during a claim
        self.queue: list[tuple[int, bytes, bytes | memoryview]] = []
        self.queued = 0
        self.asked: deque[list[tuple[int, bytes, bytes | memoryview]]] = deque()  # claims unanswered
        self.builder = repo.streamed_pack()
        self.parent = os.getppid()

    def store(self, blob_type: BlobType, data: bytes | memoryview) -> bytes:
        blob_id = self.repo.blob_id(data)
        self.queue.append((blob_type, blob_id, data))
        self.queued += len(data)
        if self.queued >= QUEUE_BYTES:
            self.settle()
        return blob_id

    def _hand(self, chunk: bytes | memoryview) -> Future[bytes]:
        future: Future[bytes] = Future()
        future.set_result(self.store(BlobType.DATA, chunk))
        return future

    def settle(self) -> None:
        """Ask which queued blobs are new; pack those once the answer comes, which is taken
        when the next question is asked (`CLAIMS_AHEAD`): meanwhile this worker reads its next
        batch. Waiting for each answer at once had a worker wait 40% of a first backup of
        100,000 small files, the parent's thread that answers waiting for the walk's GIL."""
        if self.queue:
            waiting, self.queue, self.queued = self.queue, [], 0
            send(self.sock, ("claim", [(blob_id, len(data)) for _, blob_id, data in waiting]))
            self.asked.append(waiting)
        while len(self.asked) > CLAIMS_AHEAD:
            self.pack_claimed(self.reply("claimed"))

    def settle_all(self) -> None:
        """Pack every new blob asked about (before a slot is given back, a flush, the end)."""
        self.settle()
        while self.asked:
            self.pack_claimed(self.reply("claimed"))

    def pack_claimed(self, claims: list[bool]) -> None:
        """Pack the new blobs of the oldest question, `claims` its answer (stored packs are
        reported)."""
        waiting = self.asked.popleft()
        pack_size = self.repo.config.pack_size
        for (blob_type, blob_id, data), new in zip(waiting, claims):
            if new:
                self.repo.seal_into(self.builder, blob_type, blob_id, data)
                if self.builder.size >= pack_size:
                    self.finish_pack()

    def finish_pack(self) -> None:
        if len(self.builder):
            if os.getppid() != self.parent:
                raise EOFError("the backup's process is gone: its lock no longer covers a new pack")
            builder = self.builder
            self.repo.store_pack(builder)
            send(self.sock, ("pack", (builder.pack_id, builder.entries)))
            self.builder = self.repo.streamed_pack(reuse=builder)

    def reply(self, kind: str) -> Any:
        """The parent's next message of `kind`; batches sent meanwhile wait in the inbox."""
        while (message := self.receive()) is not None:
            if message[0][0] == kind:
                return message[0][1]
            self.inbox.append(message)
        raise EOFError("the backup ended while this worker waited for it")

    def next_message(self) -> tuple[Any, list[int]] | None:
        if self.inbox:
            return self.inbox.popleft()
        return self.receive()

    def receive(self) -> tuple[Any, list[int]] | None:
        return receive(self.sock, max_fds=BATCH_FILES)

    def serve(self) -> None:
        """Read each batch sent until the parent says "finish", then store the last pack."""
        while (message := self.next_message()) is not None:
            (kind, body), fds = message
            if kind == "claimed":  # came while this worker read its next batch
                self.pack_claimed(body)
                continue
            if kind in ("flush", "finish"):
                self.settle_all()
                self.finish_pack()
                if kind == "finish":
                    return
                send(self.sock, ("flushed", None))
                continue
            if kind == "slot":  # a piece of a big file the parent cut in a shared slot: ids in order
                slot, cuts = body
                view = self.shared.view(slot)
                ids = [self.store(BlobType.DATA, view[at:at + length]) for at, length in cuts]
                self.settle_all()  # sealed (copied into the pack): the parent may fill the slot again
                send(self.sock, ("results", (ids, 0)))
                continue
            try:
                results = []
                for at, name, owner in body:
                    if self.aborted:
                        raise Aborted()
                    results.append(self.read_file_at(fds[at], name, None, owner))
                self.settle()
            finally:
                for fd in fds:
                    os.close(fd)
            for result in results:
                if result.stored:
                    result.content = [f.result() for f in result.stored]
                    result.stored = []
                if result.node is not None:
                    result.pack_node()
            read, self.bytes_read = self.bytes_read, 0
            send(self.sock, ("results", (results, read)))
        # The end of the stream without "finish": the backup was abandoned or its process died.
        # Nothing more is stored: its lock may be gone, and a pack stored now would be orphaned.


def _run_worker(repo: Repository, sock: socket.socket, shared: SharedSlots) -> None:
    stoppable()
    worker = _Worker(repo, sock, shared)
    try:
        worker.serve()
    except (EOFError, Stopped):
        return  # the parent is gone or ending the backup: nothing to report to
    except BaseException as exc:  # noqa: BLE001 - sent to the parent, which raises it
        try:
            send(sock, ("crash", portable(exc)))
        except OSError:
            pass
        raise
    finally:
        if worker.builder.sink is not None:  # a pack begun and not stored: its temporary file goes
            worker.builder.sink.discard()


# -- the parent's side -----------------------------------------------------------------------

def _weight(batch: _Batch) -> int:
    """A batch's work, to choose the least busy worker: its bytes, and a page per file."""
    return batch.size + 4096 * len(batch.files)


class _Piece(_Batch):
    """Consecutive chunks of a big file in one shared slot, sealed by one worker; each chunk's
    future gets its id when the worker's results come, and then the slot is free again."""

    __slots__ = ("chunks", "release")

    def __init__(self, count: int, release: Callable[[], None]) -> None:
        super().__init__()
        self.chunks: list[Future[bytes]] = [Future() for _ in range(count)]
        self.release = release

    def deliver(self, future: Future[list[bytes]]) -> None:
        self.release()
        exc = future.exception()
        if exc is None and len(future.result()) != len(self.chunks):  # never left unanswered
            exc = CairnError(f"a backup worker gave {len(future.result())} ids for {len(self.chunks)} chunks")
        for at, chunk in enumerate(self.chunks):
            if exc is not None:
                chunk.set_exception(exc)
            else:
                chunk.set_result(future.result()[at])


@dataclass
class _Proc:
    pid: int
    sock: socket.socket
    send_lock: threading.Lock = field(default_factory=threading.Lock)
    sent: deque[_Batch] = field(default_factory=deque)  # batches without results, oldest first
    load: int = 0  # the `_weight` of the batches sent and not read yet
    alive: bool = True  # until its reader sees it end
    ended: str = ""  # why, when this process ended it
    flushed: threading.Semaphore = field(default_factory=lambda: threading.Semaphore(0))
    reader: threading.Thread | None = None


class ProcessPipeline(Pipeline):
    """`Pipeline`'s interface (read_at, submit, result, store, flush, close) over worker
    processes; trees are still stored by `store`, in this process."""

    big_readers = BIG_READERS

    def __init__(self, repo: Repository, processes: int) -> None:
        super().__init__(repo, dry_run=False)
        self.crash: BaseException | None = None
        self.closing = False
        self.lock = threading.Lock()
        self.slots: queue.SimpleQueue[None] = queue.SimpleQueue()  # one token per batch that may be sent
        self.procs: list[_Proc] = []
        self.processes = processes
        self.handed = (0, 0)  # files and bytes handed to the threads, until the workers start
        self.shared: SharedSlots | None = None  # made with the workers
        # Every file a worker reads whole shares a batch: a batch costs two round trips (the
        # claim, the results), which took longer than reading a medium file alone.
        self.batched_up_to = self.whole

    def _start(self) -> None:
        """Fork the workers, once the walk has handed over START_FILES or START_BYTES: an
        unchanged or small backup then forks none."""
        # Before the fork, so that the workers share it: a slot per worker and one more per
        # big-file reader beyond the first: each reader fills one while the others are sealed
        # (more were not faster). Never fewer than one more than the readers: each holds two
        # while it carries a chunk over from one to the next.
        count = max(self.processes + BIG_READERS - 1, BIG_READERS + 1)
        self.shared = SharedSlots(count, slot_bytes(self.params.max_size))
        # On a failure here fork_children has ended the children it made; the walk closes us.
        self.procs = [_Proc(pid, sock) for pid, sock in fork_children(self.processes, self._serve)]
        for proc in self.procs:
            proc.reader = threading.Thread(target=self._read, args=(proc,), daemon=True,
                                           name=f"cairn-backup-proc-{proc.pid}")
            proc.reader.start()
            for _ in range(BATCHES_PER_WORKER):
                self.slots.put(None)

    def _serve(self, sock: socket.socket) -> None:  # in a worker
        assert self.shared is not None
        _run_worker(self.repo, sock, self.shared)

    # -- the walker's side -------------------------------------------------------------------

    def _submit(self, batch: _Batch, big: bool) -> None:
        if not self.procs:
            handed = (self.handed[0] + len(batch.files), self.handed[1] + batch.size)
            if handed[0] < START_FILES and handed[1] < START_BYTES:
                self.handed = handed
                super()._submit(batch, big)
                return
            self._start()
        if big:  # read and cut by this process's big-file reader, its pieces sealed by the workers
            super()._submit(batch, big)
            return
        folders: dict[int, int] = {}
        # the owner, not the lstat: pickling a stat_result cost the walk 4.5 us per file
        files = [(folders.setdefault(fd, len(folders)), name, st.st_uid) for fd, name, st in batch.files]
        self._send(batch, ("batch", files), list(folders))

    def _send(self, batch: _Batch, message: tuple[str, Any], fds: list[int]) -> None:
        """Send `batch` to the least busy worker, whose results will set its (new) future.

        The walk (batches) and the readers (pieces) send from different threads, and a worker
        answers in the order it received: so a batch joins the worker's `sent` under its send
        lock, in the order of sending."""
        self.slots.get()  # blocks while every worker has BATCHES_PER_WORKER batches
        future: Future[Any] = Future()
        if isinstance(batch, _Piece):
            future.add_done_callback(batch.deliver)
        batch.future = future
        with self.lock:
            alive = [p for p in self.procs if p.alive]
            proc = min(alive, key=lambda p: p.load) if alive else None
        if proc is not None:
            with proc.send_lock:
                with self.lock:
                    queued = proc.alive  # else its reader has failed what it was sent
                    if queued:
                        proc.sent.append(batch)
                        proc.load += _weight(batch)
                if queued:
                    try:
                        send(proc.sock, message, fds)
                    except OSError:  # the worker is gone: its reader fails this batch with the others
                        pass
                    return
        # No worker left: each one's reader set self.crash before it counted as gone.
        self.slots.put(None)
        future.set_exception(self.crash or CairnError("the backup's worker processes ended"))

    # -- the big-file reader's side ----------------------------------------------------------

    def _chunked(self, rest: RawReader, head: bytes) -> tuple[list[Future[bytes]], int]:
        """Once the workers run, a big file is read into the shared slots and cut there; each
        slot's chunks go to the least busy worker as offsets, and the worker hashes and seals
        them from the shared memory (hashing, compressing and sealing on every core, and no
        copy through a socket)."""
        if not self.procs:
            return super()._chunked(rest, head)
        assert self.shared is not None
        with self.shared.filling():
            return self._cut_in_slots(rest, head)

    def _cut_in_slots(self, rest: RawReader, head: bytes) -> tuple[list[Future[bytes]], int]:
        """Fill a slot, cut it, send all its chunks but the last (which may end only further on:
        its bytes start the next slot), until the end of the stream. A chunk that is not the
        slot's last ends where the stream's chunker ends it: both take the first cut point at
        least min_size from its start, and it was found inside the slot."""
        shared = self.shared
        assert shared is not None
        cutter = self._cutter()
        futures: list[Future[bytes]] = []
        size = 0
        slot = shared.take()
        taken = -1  # the slot sent last, held until its tail is moved out
        view = shared.view(slot)
        view[:len(head)] = head
        filled = len(head)
        try:
            while True:
                filled, end = self._fill(rest, view, filled)
                if self.aborted:
                    raise Aborted()
                if self.crash is not None:  # a worker died: read no more of a file nobody will seal
                    raise self.crash
                cuts = [(chunk.offset, chunk.length) for chunk in cutter.cut_buf(view[:filled])]
                tail = (0, 0) if end else cuts.pop()
                piece = _Piece(len(cuts), functools.partial(shared.give, slot))
                piece.size = filled if end else tail[0]
                futures += piece.chunks
                size += piece.size
                sent, slot = slot, -1  # the piece gives it back once the worker is done with it
                if not end:  # and this reader once the tail is moved: no other may fill it first
                    shared.hold(sent)
                    taken = sent
                self._send(piece, ("slot", (sent, cuts)), [])
                if end:
                    return futures, size
                slot = shared.take()
                shared.move(slot, taken, *tail)
                shared.give(taken)
                taken = -1
                view = shared.view(slot)
                filled = tail[1]
        finally:
            for held in (slot, taken):
                if held >= 0:
                    shared.give(held)

    def _fill(self, rest: RawReader, view: memoryview, filled: int) -> tuple[int, bool]:
        """Read into `view` after its first `filled` bytes until it is full or the stream ends:
        (bytes now in it, whether the stream ended)."""
        while filled < len(view):
            try:
                n = rest.readinto(view[filled:])
            except OSError as exc:
                raise _ReadError(exc) from None
            if not n:
                return filled, True
            filled += n
            self._count(n)
        return filled, False

    def result(self, pending: Any) -> ReadResult:
        if self.crash is not None:
            raise self.crash
        return super().result(pending)

    def flush(self) -> None:
        """Have every worker store its pack and report it, then write the index."""
        if self.crash is not None:
            raise self.crash
        asked = [proc for proc in self.procs if proc.alive]
        for proc in asked:
            try:
                with proc.send_lock:
                    send(proc.sock, ("flush", None))
            except OSError:
                pass  # it is gone: its reader releases `flushed` when it sees that
        for proc in asked:
            proc.flushed.acquire()
        if self.crash is not None:
            raise self.crash
        self.repo.flush()

    def close(self, abort: bool = False) -> None:
        """Let the workers store their last packs and end (or, with `abort`, end them at once);
        raises what a worker failed with, unless aborting anyway."""
        self.closing = True
        super().close(abort)
        if abort:  # a pack being written is removed, not left as a temporary file (Stopped)
            stop([proc.pid for proc in self.procs], STOP_GRACE)
        for proc in self.procs:
            try:
                if not abort:
                    with proc.send_lock:
                        send(proc.sock, ("finish", None))  # store the last pack, then end
                proc.sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass  # it is gone already
        for proc in self.procs:
            if proc.reader is not None:
                proc.reader.join()
            os.waitpid(proc.pid, 0)
            proc.sock.close()
        self.procs = []
        if not abort and self.crash is not None:
            raise self.crash

    # -- a reader thread per worker ----------------------------------------------------------

    def _read(self, proc: _Proc) -> None:
        """Answer the worker's claims, index its packs and hand its results to the walk; when
        it ends, fail whatever it was still sent."""
        try:
            while (message := receive(proc.sock)) is not None:
                kind, body = message[0]
                if kind == "claim":
                    claims = self.repo.claim_blobs(body)
                    try:
                        with proc.send_lock:
                            send(proc.sock, ("claimed", claims))
                    except OSError:
                        continue  # it died after asking: the next receive sees its end
                    added = [size for (_, size), new in zip(body, claims) if new]
                    with self._lock:
                        self.blobs_new += len(added)
                        self.bytes_added += sum(added)
                elif kind == "pack":
                    self.repo.add_pack(*body)
                elif kind == "results":
                    results, read = body
                    with self.lock:
                        batch = proc.sent.popleft()
                        proc.load -= _weight(batch)
                    self._count(read)
                    assert batch.future is not None
                    batch.future.set_result(results)
                    self.slots.put(None)
                elif kind == "flushed":
                    proc.flushed.release()
                elif kind == "crash":
                    self.crash = self.crash or body
        except Exception as exc:  # noqa: BLE001 - storing the index failed, or a garbled message
            self.crash = self.crash or exc
            stop([proc.pid], STOP_GRACE)  # as in `close`: a pack it was writing is removed
            proc.ended = f"stopped by cairn: {exc}"
        if self.crash is None and not (self.closing and not proc.sent):
            how = proc.ended or how_it_ended(proc.pid)  # `close` reaps it
            self.crash = CairnError(f"backup worker process {proc.pid} ended unexpectedly ({how}); "
                                    "nothing of this run was saved as a snapshot: run the backup again")
        with self.lock:  # after self.crash is set: `_submit` fails batches with it once none is alive
            proc.alive = False
            left, proc.sent = list(proc.sent), deque()
        proc.flushed.release()
        for batch in left:
            assert batch.future is not None
            batch.future.set_exception(self.crash or CairnError("the backup was interrupted"))
            self.slots.put(None)
