"""Tar shards: headers as tarfile writes them, atomic writes, round trips."""

from __future__ import annotations

import stat
import tarfile

import pytest

from fgbg.images import FILE_MODE
from fgbg.shards import ShardWriter, iter_shard, ustar_header


@pytest.mark.parametrize("name, size", [("bg0001_fg0002_f0_p03.jpg", 5413), ("k.mask.png", 0), ("k.json", 10**9)])
def test_fast_tar_header_is_what_tarfile_writes(name, size):
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = size, 0o644, 0
    assert ustar_header(name, size) == info.tobuf(tarfile.USTAR_FORMAT, "utf-8", "strict")


def test_shard_round_trips_and_is_written_atomically_with_shared_permissions(tmp_path):
    path = tmp_path / "s" / "shard-000000.tar"
    w = ShardWriter(path)
    w.add("a1", {"jpg": b"x" * 700, "json": b"{}"})
    assert not path.exists()  # nothing visible until commit
    w.add("a2", {"jpg": b"", "json": b"[1]"})
    rec = w.commit()
    assert rec.samples == 2 and rec.bytes == path.stat().st_size and rec.bytes % tarfile.RECORDSIZE == 0
    assert list(iter_shard(path)) == [("a1", {"jpg": b"x" * 700, "json": b"{}"}), ("a2", {"jpg": b"", "json": b"[1]"})]
    assert stat.S_IMODE(path.stat().st_mode) == FILE_MODE
    assert [p.name for p in path.parent.iterdir()] == [path.name]
