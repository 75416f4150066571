"""The hidden Argon2id cost options shared by `init`, `key add` and `key passwd`.

Hidden from --help because the defaults are right for real repositories; they exist for tests
and very small machines, and each command's help text mentions them as advanced options.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from cairn.errors import UsageError
from cairn.repo.keys import KdfParams

F = TypeVar("F", bound=Callable[..., Any])

ADVANCED_HELP = (
    "Advanced: --kdf-iterations, --kdf-memory-kib and --kdf-lanes set the Argon2id cost of the "
    "new key (defaults 6, 32768 and 4). Lower values make the password easier to guess."
)


def kdf_options(f: F) -> F:
    defaults = KdfParams()
    f = click.option("--kdf-lanes", type=click.IntRange(1, 64), default=defaults.lanes, hidden=True)(f)
    f = click.option(
        "--kdf-memory-kib", type=click.IntRange(8, 16 * 1024 * 1024), default=defaults.memory_kib, hidden=True
    )(f)
    f = click.option("--kdf-iterations", type=click.IntRange(1, 100), default=defaults.iterations, hidden=True)(f)
    return f


def kdf_params(iterations: int, memory_kib: int, lanes: int) -> KdfParams:
    if memory_kib < 8 * lanes:
        raise UsageError(f"Argon2id needs at least 8 KiB of memory per lane: {8 * lanes} KiB for {lanes} lanes")
    return KdfParams(iterations=iterations, memory_kib=memory_kib, lanes=lanes)
