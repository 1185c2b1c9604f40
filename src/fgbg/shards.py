"""WebDataset-style tar shards: deterministic writer, streaming reader, resumable parallel builds.

A shard holds a few thousand samples; each sample's files share a key (`bg0001_fg0002_f0_p03.jpg`,
`….mask.png`, `….json`), so `tar tf` and the `webdataset` library read them as they are. Tar
headers carry no time, user or host, so the same samples give the same bytes on any machine.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import tarfile
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from tqdm import tqdm

from fgbg.images import atomic_write_bytes, contact_sheet, encode_png, open_temp_beside, remove_stale_temps

MANIFEST = "shards.json"
PREVIEW = "preview.png"
JOURNAL = ".journal.jsonl"
_BLOCK = tarfile.BLOCKSIZE
_RECORD = tarfile.RECORDSIZE


_HEADER_TEMPLATE = bytearray(
    tarfile.TarInfo("x").tobuf(tarfile.USTAR_FORMAT, "utf-8", "strict")  # mode 644, uid 0, mtime 0
)
_HEADER_TEMPLATE[148:156] = b"        "


def ustar_header(name: str, size: int) -> bytes:
    """The 512-byte ustar header tarfile would write for a regular file (mtime 0, root, 0644).

    Built from a template: tarfile's own header code cost ~0.1 ms per sample, a third of the
    compose budget.
    """
    raw = name.encode()
    if len(raw) > 100:
        raise ValueError(f"tar member name longer than 100 bytes: {name}")
    header = _HEADER_TEMPLATE.copy()
    header[0:100] = raw.ljust(100, b"\0")
    header[124:136] = b"%011o\0" % size
    header[148:156] = b"%06o\0 " % sum(header)
    return bytes(header)


class ShardWriter:
    """Streams samples into `<path>.tmp`, hashing as it goes; `commit()` renames it into place."""

    def __init__(self, path: Path):
        self.path = Path(path)
        fd, self._tmp = open_temp_beside(self.path)
        self._file = os.fdopen(fd, "wb", buffering=1 << 20)
        self._sha = hashlib.sha256()
        self.bytes = 0
        self.samples = 0

    def _write(self, data: bytes | memoryview) -> None:
        self._file.write(data)
        self._sha.update(data)
        self.bytes += len(data)

    def add(self, key: str, files: dict[str, bytes]) -> None:
        """Add one sample: `files` maps extension (`jpg`, `mask.png`) to its bytes."""
        for ext, data in files.items():
            self._write(ustar_header(f"{key}.{ext}", len(data)))
            self._write(data)
            pad = -len(data) % _BLOCK
            if pad:
                self._write(b"\0" * pad)
        self.samples += 1

    def commit(self) -> ShardRecord:
        end = 2 * _BLOCK
        end += -(self.bytes + end) % _RECORD  # pad the archive to whole records, as tar does
        self._write(b"\0" * end)
        self._file.close()
        os.replace(self._tmp, self.path)
        return ShardRecord(self.path.name, self.samples, self.bytes, self._sha.hexdigest())

    def abort(self) -> None:
        self._file.close()
        Path(self._tmp).unlink(missing_ok=True)


@dataclass(frozen=True)
class Part:
    """Part `index` (from 0) of `count` of a stage's shards, built by one process of several
    (fgbg.parts); `source` says where it came from, for messages."""

    index: int
    count: int
    source: str = "--part"

    def __post_init__(self):
        if self.count < 1 or not 0 <= self.index < self.count:
            raise ValueError(f"part {self.index}/{self.count} from {self.source}: need 0 ≤ I < N (I counts from 0)")

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    @property
    def journal(self) -> str:
        return f".journal.part-{self.index:04d}-of-{self.count:04d}.jsonl"

    def select(self, items: Sequence[str]) -> list[str]:
        """This part's share of the stage's shards (in plan order): every N-th from the I-th."""
        return list(items[self.index :: self.count])


@dataclass(frozen=True)
class ShardRecord:
    """What a finished shard must be: used to verify it before it is read or reused."""

    name: str
    samples: int
    bytes: int
    sha256: str


def iter_shard(path: Path) -> Iterator[tuple[str, dict[str, bytes]]]:
    """Yield (key, {extension: bytes}) for each sample, streaming the tar in order."""
    key: str | None = None
    files: dict[str, bytes] = {}
    with tarfile.open(path, mode="r|") as tar:
        for member in tar:
            if not member.isfile():
                continue
            base = member.name.rsplit("/", 1)[-1]
            k, _, ext = base.partition(".")
            if k != key and key is not None:
                yield key, files
                files = {}
            key = k
            data = tar.extractfile(member)
            files[ext] = data.read() if data else b""
    if key is not None:
        yield key, files


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify_shard(path: Path, record: ShardRecord, stamp: list[int] | None = None) -> bool:
    """True when the file on disk is exactly the shard the record describes: its size and sha256,
    or — cheaper — the `stamp` journalled when it was written (see `file_stamp`) still matches."""
    try:
        st = path.stat()
        if st.st_size != record.bytes:
            return False
        return stamp == file_stamp(path, st) or file_sha256(path) == record.sha256
    except FileNotFoundError:
        return False


def file_stamp(path: Path, st: os.stat_result | None = None) -> list[int]:
    """(device, inode, size, mtime in ns): unchanged only while nothing rewrote, replaced, copied or
    truncated the file since it was stamped — DVC's own state skips rehashing on the same test. A
    journal line carries its shard's stamp, so a merge or resume rereads only shards that changed."""
    st = st or path.stat()
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns]


def read_manifest(folder: Path) -> dict[str, Any]:
    return json.loads((Path(folder) / MANIFEST).read_text())


@dataclass(frozen=True)
class ShardTask:
    """One shard to build: its path relative to the output folder and the worker's input."""

    name: str
    payload: Any


class ShardJournal:
    """Resume bookkeeping for a stage that writes named shards into `out_dir`.

    On open: removes temp files and files that are not wanted, and keeps shards a finished
    manifest or a journal of a killed run or of a part (same `fingerprint`: params + inputs)
    vouches for, after checking size and sha256 (or the journalled file stamp, which spares
    rereading a shard nothing touched since); shards that fail the check are rebuilt and named
    through `log`. `record()` journals each finished shard as it lands. With a `part`, only that
    part's shards are considered and nothing else in the folder is touched (other parts may be
    writing there now); it journals into its own file.
    """

    def __init__(
        self,
        out_dir: Path,
        names: Sequence[str],
        fingerprint: str,
        keep: Sequence[str] = (),
        part: Part | None = None,
        log: Callable[[str], None] = print,
    ):
        self.out_dir = Path(out_dir)
        self.fingerprint = fingerprint
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if part is None:
            remove_stale_temps(self.out_dir)
            wanted = set(names)
            for f in sorted(self.out_dir.rglob("*")):
                rel = f.relative_to(self.out_dir).as_posix()
                if f.is_file() and rel not in wanted and rel not in keep and not _is_journal(rel):
                    f.unlink()
        else:
            names = part.select(names)
            for name in names:  # this part's own leftovers only (temp names from open_temp_beside)
                path = self.out_dir / name
                for tmp in path.parent.glob(f".{path.name}.*.tmp"):
                    tmp.unlink(missing_ok=True)
        reusable = _reusable_records(self.out_dir, fingerprint)
        self.done: dict[str, ShardRecord] = {}
        self.todo: list[str] = []
        damaged = []

        # sha256 releases the GIL: hash the candidates whose stamp changed in threads
        def intact(name: str) -> bool:
            if name not in reusable:
                return False
            rec, _, stamp = reusable[name]
            return verify_shard(self.out_dir / name, rec, stamp)

        with ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
            verified = dict(zip(names, pool.map(intact, names), strict=True))
        for name in names:
            rec, origin, _ = reusable.get(name, (None, None, None))
            if verified[name]:
                self.done[name] = rec
            else:
                if rec is not None and origin != JOURNAL:
                    damaged.append(f"{name} ({origin})")
                (self.out_dir / name).unlink(missing_ok=True)
                self.todo.append(name)
        if damaged:
            log(f"{self.out_dir}: {len(damaged)} shard(s) missing or not matching their journal (size/sha256), "
                f"rebuilt here: {', '.join(damaged)}")  # fmt: skip
        if part is None and self.todo:
            for label in _absent_parts(self.out_dir):
                log(f"{self.out_dir}: {label} left no journal (never ran, or not on this filesystem): its shards "
                    "are built here")  # fmt: skip
        self._file = open(self.out_dir / (part.journal if part else JOURNAL), "a")

    def record(self, name: str, rec: ShardRecord) -> None:
        self.done[name] = rec
        line = {"fingerprint": self.fingerprint, "path": name, **asdict(rec), "stamp": file_stamp(self.out_dir / name)}
        self._file.write(json.dumps(line) + "\n")
        self._file.flush()

    def close(self) -> dict[str, ShardRecord]:
        self._file.close()
        return {name: self.done[name] for name in sorted(self.done)}


def _is_journal(rel: str) -> bool:
    return rel == JOURNAL or (rel.startswith(".journal.part-") and rel.endswith(".jsonl"))


Filler = Callable[[ShardWriter, Any], None]
_worker_filler: Filler | None = None  # this worker process's filler, set by _start_worker


def _start_worker(filler: Filler) -> None:
    global _worker_filler
    _worker_filler = filler


def _build_in_worker(out_dir: Path, task: ShardTask) -> ShardRecord:
    return _build_one(out_dir, task, _worker_filler)


def build_shards(
    out_dir: Path,
    tasks: Sequence[ShardTask],
    make_filler: Callable[[], Filler],
    *,
    fingerprint: str,
    jobs: int,
    desc: str = "shards",
    keep: Sequence[str] = (),
    part: Part | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, ShardRecord]:
    """Build every task's shard in `out_dir` with `jobs` processes; reuse verified ones.

    `make_filler()` runs once, here, before the workers fork (e.g. a class holding the prepared
    images, its inputs given explicitly as constructor arguments); the filler it returns writes
    one shard's samples with `filler(writer, task.payload)`. A killed run resumes where it stopped
    and a changed run rebuilds (see ShardJournal). Output bytes do not depend on `jobs`. With a
    `part`, only that part's shards are built (fgbg.parts); the records returned are its own.
    """
    journal = ShardJournal(out_dir, [t.name for t in tasks], fingerprint, keep, part, log)
    desc = desc if part is None else f"{desc} part {part}"
    pending = set(journal.todo)
    todo = [t for t in tasks if t.name in pending]
    bar = tqdm(
        total=len(journal.done) + len(todo), initial=len(journal.done), desc=desc, unit="shard", dynamic_ncols=True
    )
    try:
        fill = make_filler() if todo else None  # once: forked workers inherit it (a part pays it once too)
        if jobs <= 1 or len(todo) <= 1:
            for t in todo:
                journal.record(t.name, _build_one(journal.out_dir, t, fill))
                bar.update(1)
        else:
            ctx = get_context("fork")  # workers inherit the filler without pickling
            with ProcessPoolExecutor(jobs, mp_context=ctx, initializer=_start_worker, initargs=(fill,)) as ex:
                futures = {ex.submit(_build_in_worker, journal.out_dir, t): t.name for t in todo}
                for fut in as_completed(futures):
                    journal.record(futures[fut], fut.result())
                    bar.update(1)
    finally:
        bar.close()
        records = journal.close()
    return records


def _build_one(out_dir: Path, task: ShardTask, fill: Filler) -> ShardRecord:
    writer = ShardWriter(out_dir / task.name)
    try:
        fill(writer, task.payload)
    except BaseException:
        writer.abort()
        raise
    return writer.commit()


def _reusable_records(out_dir: Path, fingerprint: str) -> dict[str, tuple[ShardRecord, str, list[int] | None]]:
    """Shard records (where each came from, and the file's stamp when a journal has it) in a finished
    manifest, a killed run's journal or the parts' journals, written with the same inputs."""
    records: dict[str, tuple[ShardRecord, str, list[int] | None]] = {}
    try:
        manifest = read_manifest(out_dir)
        if manifest.get("fingerprint") == fingerprint:
            for path, rec in manifest["shards"].items():
                records[path] = (ShardRecord(**rec), MANIFEST, None)
    except (FileNotFoundError, json.JSONDecodeError, KeyError, TypeError):
        pass
    for journal in sorted(out_dir.glob(".journal*.jsonl")):
        if not _is_journal(journal.name):
            continue
        origin = JOURNAL if journal.name == JOURNAL else _part_label(journal.name)
        for line in journal.read_text().splitlines():
            try:
                entry = json.loads(line)
                path, stamp = entry.pop("path"), entry.pop("stamp", None)  # before ShardRecord(**entry)
                if entry.pop("fingerprint") == fingerprint:
                    records[path] = (ShardRecord(**entry), origin, stamp)
            except (json.JSONDecodeError, KeyError, TypeError):
                continue  # a line cut short by a kill
    return records


def _absent_parts(out_dir: Path) -> list[str]:
    """Parts of a split run (N known from any part's journal) whose journal is not in `out_dir`."""
    seen: dict[int, set[int]] = {}
    for journal in out_dir.glob(".journal.part-*.jsonl"):
        index, count = _part_of(journal.name)
        seen.setdefault(count, set()).add(index)
    return [f"part {i}/{n}" for n, indices in sorted(seen.items()) for i in range(n) if i not in indices]


def _part_of(journal_name: str) -> tuple[int, int]:
    index, count = journal_name.removeprefix(".journal.part-").removesuffix(".jsonl").split("-of-")
    return int(index), int(count)


def _part_label(journal_name: str) -> str:
    """`.journal.part-0001-of-0004.jsonl` → `part 1/4`."""
    return "part {}/{}".format(*_part_of(journal_name))


def part_summary(part: Part, records: dict[str, ShardRecord]) -> dict:
    """What a part run returns: it writes no manifest (the merge does)."""
    return {"part": str(part), "shards": len(records), "samples": sum(r.samples for r in records.values())}


def write_manifest(out_dir: Path, fingerprint: str, records: dict[str, ShardRecord]) -> None:
    """The finished stage's shard list (sizes + checksums); the journal is no longer needed."""
    manifest = {
        "fingerprint": fingerprint,
        "samples": sum(r.samples for r in records.values()),
        "shards": {path: asdict(r) for path, r in sorted(records.items())},
    }
    atomic_write_bytes(Path(out_dir) / MANIFEST, json.dumps(manifest, indent=1).encode() + b"\n")
    for journal in Path(out_dir).glob(".journal*.jsonl"):  # the run's and the parts': no longer needed
        if _is_journal(journal.name):
            journal.unlink(missing_ok=True)


def fingerprint_of(*parts: Any) -> str:
    """A stable hash of JSON-able parts (params, input checksums)."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


PACKAGE = Path(__file__).resolve().parent


def fgbg_imports(module: str) -> set[str]:
    """The fgbg modules `module` imports anywhere in its body (top level or inside functions)."""
    found = set()
    for node in ast.walk(ast.parse((PACKAGE / f"{module}.py").read_text(encoding="utf-8"))):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("fgbg"):
            names = [node.module] if node.module != "fgbg" else [f"fgbg.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names if a.name.startswith("fgbg.")]
        found.update(n.split(".")[1] for n in names)
    return found


def module_closure(module: str) -> set[str]:
    """`module` and every fgbg module it imports, transitively: the code a stage runs (dvc.yaml's
    code deps of the stage, which tests/test_dvc_deps.py derives from this)."""
    seen, todo = set(), [module]
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo.extend(fgbg_imports(m) - seen)
    return seen


def code_fingerprint(module: str) -> str:
    """A hash of the source a stage runs. Its shards are persisted across runs and reused when their
    fingerprint matches, so without it a rerun after a code change (which DVC starts because a code
    dep changed) would keep every shard the old code wrote."""
    digest = hashlib.sha256()
    for m in sorted(module_closure(module)):
        digest.update(m.encode() + b"\0" + (PACKAGE / f"{m}.py").read_bytes())
    return digest.hexdigest()[:16]


def folder_fingerprint(folder: Path) -> str:
    """Hash of every file's relative path and bytes in a (small) folder, e.g. the prepared set."""
    h = hashlib.sha256()
    for f in sorted(Path(folder).rglob("*")):
        if f.is_file():
            h.update(f.relative_to(folder).as_posix().encode() + b"\0")
            h.update(file_sha256(f).encode())
    return h.hexdigest()[:16]


def preview_samples(out_dir: Path, shard_names: list[str], n: int) -> list[tuple[str, str, dict[str, bytes]]]:
    """(shard, key, files) for n samples spread over the shards, so every split is shown."""
    per_shard = max(1, -(-n // max(len(shard_names), 1)))
    picked = []
    for name in shard_names:
        for i, (key, files) in enumerate(iter_shard(Path(out_dir) / name)):
            if i >= per_shard or len(picked) >= n:
                break
            picked.append((name, key, files))
    return picked


def finish_stage(out_dir: Path, fingerprint: str, records: dict[str, ShardRecord], preview_rows: list) -> dict:
    """The end every shard stage shares: preview.png (rows of same-size images, read back from
    the shards as stored), then shards.json, which marks the output finished."""
    if preview_rows:
        atomic_write_bytes(Path(out_dir) / PREVIEW, encode_png(contact_sheet(preview_rows), 6))
    write_manifest(out_dir, fingerprint, records)
    return read_manifest(out_dir)
