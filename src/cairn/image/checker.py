"""What `cairn check` needs to know about an image snapshot: is every part of it there?

`image_problems` opens the disk description and every extent page (authenticated, validated
as a restore would), and asks the caller whether each data blob they name is indexed as data.
It never raises for damage: it names it, so one lost page does not hide the next.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from cairn.errors import CairnError
from cairn.image import format as disk_format
from cairn.image.pages import DATA, PARTIAL, decode_page, load_page, mask_length
from cairn.repo.blob import BlobType
from cairn.repo.repository import Repository

IsIndexed = Callable[[bytes, int], bool]
"""Whether a blob id is in the index with the given blob type."""


def image_problems(repo: Repository, root: bytes, is_indexed: IsIndexed, where: str = "image") -> Iterator[str]:
    """One line per problem found in the image whose description blob is `root`."""
    try:
        disk = disk_format.decode(load_page(repo, root, where), f"{where}: disk description")
    except CairnError as exc:
        yield f"{where}: disk description {root.hex()[:12]}: {exc}"
        return
    missing = 0
    for region in disk.regions:
        mask_size = mask_length(disk.chunk, region.block)
        for page_no, page_id in enumerate(region.pages):
            _, count = disk.page_span(region, page_no)
            what = f"{where}: extent page {page_id.hex()[:12]}"
            try:
                entries = decode_page(load_page(repo, page_id, what), count, mask_size, what)
            except CairnError as exc:
                yield f"{what}: {exc}"
                continue
            for kind, blob_id, _ in entries:
                if kind in (DATA, PARTIAL) and not is_indexed(blob_id, BlobType.DATA):
                    missing += 1
                    if missing <= 20:
                        yield f"{where}: data blob {blob_id.hex()[:12]} of region at byte {region.start} is not in the index"
    if missing > 20:
        yield f"{where}: {missing - 20} more data blobs are not in the index"
