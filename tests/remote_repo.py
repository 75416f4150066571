"""Helpers for repository tests on remote locations: a location with its environment, the real
`cairn` command run against it, source trees of random data, and a bit-exact comparison."""

from __future__ import annotations

import hashlib
import os
import random
import subprocess
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from conftest import FAST_KDF_ARGS, PASSWORD, SRC
from servers import SeaweedFS, Sshd, aws_env, s3_client

MiB = 1024 * 1024


@dataclass
class Remote:
    """A repository location and what a process needs in its environment to reach it."""

    kind: str
    location: str
    env: dict[str, str] = field(default_factory=dict)

    def environ(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        env = {**os.environ, **self.env, "CAIRN_PASSWORD": PASSWORD, **(extra or {})}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SRC), env.get("PYTHONPATH")]))
        return env

    def command(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "cairn", "-r", self.location, *args]

    def cairn(self, *args: str, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.command(*args), capture_output=True, text=True, env=self.environ(env),
                              stdin=subprocess.DEVNULL, timeout=timeout)

    def start(self, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        return subprocess.Popen(self.command(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=self.environ(env), stdin=subprocess.DEVNULL)

    def ok(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        done = self.cairn(*args, env=env)
        assert done.returncode == 0, f"cairn {' '.join(args)} exited {done.returncode}: {done.stderr}"
        return done

    def init(self) -> None:
        self.ok("init", *FAST_KDF_ARGS)


def sftp_remote(sshd: Sshd, folder: Path, host: str = "cairn-test") -> Remote:
    return Remote("sftp", f"sftp:{host}:{folder}", dict(sshd.env))


def s3_remote(seaweedfs: SeaweedFS, home: Path, endpoint: str | None = None, bucket: str = "cairn-tests") -> Remote:
    client = s3_client(seaweedfs.endpoint)
    if not any(b["Name"] == bucket for b in client.list_buckets().get("Buckets", [])):
        client.create_bucket(Bucket=bucket)
    prefix = f"repo-{uuid.uuid4().hex[:12]}"
    return Remote("s3", f"s3:{endpoint or seaweedfs.endpoint}/{bucket}/{prefix}", aws_env(home))


def rclone_remote(home: Path, folder: Path) -> Remote:
    config = home / "rclone.conf"
    config.write_text("[disk]\ntype = local\n")
    return Remote("rclone", f"rclone:disk:{folder}", {"RCLONE_CONFIG": str(config)})


def make_tree(root: Path, seed: int, big: int = 4 * MiB, shared: bytes = b"") -> Path:
    """Random files (one `big`, some small, a duplicate, an empty one, a nested folder)."""
    rng = random.Random(seed)
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "big.bin").write_bytes(rng.randbytes(big))
    for i in range(5):
        (root / "sub" / f"small-{i}.txt").write_bytes(rng.randbytes(rng.randrange(1, 70_000)))
    (root / "sub" / "deeper" / "copy.txt").write_bytes((root / "sub" / "small-0.txt").read_bytes())
    (root / "empty").write_bytes(b"")
    if shared:
        (root / "shared.bin").write_bytes(shared)
    return root


def digest_tree(root: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file (and "dir" for folders) under root."""
    found: dict[str, str] = {}
    for path in sorted(root.rglob("*")):
        relative = str(path.relative_to(root))
        found[relative] = "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def restored(target: Path, source: Path) -> Path:
    """Where `restore --target` puts a snapshot of `source` (its absolute path under the target)."""
    return target / source.relative_to(source.anchor)


def one_line(done: subprocess.CompletedProcess[str]) -> str:
    """The single `cairn: ...` line a failed command prints; fails on a traceback or more lines."""
    lines = done.stderr.strip().splitlines()
    assert "Traceback" not in done.stderr, done.stderr
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("cairn: "), lines[0]
    return lines[0]
