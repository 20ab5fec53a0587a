"""The spool cannot wedge the writer: on a full disk (ENOSPC, a 256 KiB tmpfs) or past a file
size limit (EFBIG, RLIMIT_FSIZE) each record is wholly kept or dropped and counted, the byte
count stays the bytes on disk, a torn file is replayed up to the tear, and a gateway whose
database is down and whose spool is full keeps an idle writer and stops at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import pickle
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from secrets import token_urlsafe

import aiohttp
import pytest

from gateway.app import Gateway
from gateway.capture.exchange import Exchange
from gateway.writer import spool as spool_module
from gateway.writer.spool import Spool, _entry, read_records
from tests.conftest import CALL_KEY as KEY
from tests.conftest import (
    Upstream,
    health,
    make_settings,
    migrated_sqlite,
    running,
    tmpfs,
    wait_until,
)
from tests.tcp_relay import TcpRelay

ROOT = Path(__file__).resolve().parent.parent
TINY = 256 * 1024


def body(n: int) -> bytes:
    """Record n's request body: 1-3 KiB that no other record has, so a torn or misplaced
    record cannot read back as intact; sizes vary so writes end mid-page. Random bytes, which
    do not compress: written record by record (see `words` for blocks)."""
    return hashlib.shake_256(str(n).encode()).digest(1024 + 32 * (n % 64))


VOCABULARY = b"the a call agent tool run step answer model token cost time".split()


def words(n: int) -> bytes:
    """A body like a chat call's, its own words in an order no other has, which compresses
    (about 4x alone, more together): records of these go in blocks."""
    text = b" ".join(
        VOCABULARY[i % len(VOCABULARY)] for i in hashlib.shake_256(b"%d" % n).digest(250)
    )
    return b'{"messages":[{"role":"user","content":"%s"}]}' % text


def record(n: int, text: bytes | None = None) -> Exchange:
    return Exchange(
        id=10_000 + n,
        started_at=1.0e9 + n,
        method="POST",
        client_path="/v1/chat/completions",
        path="/v1/chat/completions",
        query="",
        request_headers=[],
        request_body=body(n) if text is None else text,
        status=200,
    )


def on_disk(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("spool-*.bin"))


def fill(folder: str, count: int) -> dict[str, int]:
    """Append `count` records in batches of 7 to a fresh spool in `folder`, past what the
    filesystem takes; run in a child process (see `run_fill`)."""
    errors = []

    class Errors(logging.Handler):
        def emit(self, entry: logging.LogRecord) -> None:
            if entry.levelno >= logging.ERROR:
                errors.append(entry)

    logging.getLogger("agentops.spool").addHandler(Errors())
    spool = Spool(folder, 10**9)
    kept = 0
    for start in range(0, count, 7):
        kept += spool.append([record(n) for n in range(start, min(count, start + 7))])
    spool.close()
    return {
        "kept": kept,
        "dropped": spool.dropped,
        "spooled": spool.spooled,
        "size": spool.size,
        "errors": len(errors),
    }


def run_fill(folder: Path, count: int, file_limit: int | None = None) -> dict[str, int]:
    """`fill` in a child process; with `file_limit` its files may not grow past that many
    bytes (RLIMIT_FSIZE), with SIGXFSZ ignored so a write past it fails with EFBIG."""

    def limit() -> None:
        if file_limit is not None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (file_limit, file_limit))

    script = (
        "import json, sys\nfrom tests.test_spool import fill\n"
        "print(json.dumps(fill(sys.argv[1], int(sys.argv[2]))))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(folder), str(count)],
        cwd=ROOT,
        preexec_fn=limit,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    """A 256 KiB tmpfs (we run as root); skips, saying why, where mounting is refused."""
    with tmpfs(
        tmp_path / "tiny", f"size={TINY}", "; the RLIMIT_FSIZE case still covers short writes"
    ) as where:
        yield where


@pytest.fixture(params=["ENOSPC", "EFBIG"])
def full(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Path, dict]]:
    """A spool folder filled past what it can take, and the child's report: a full tmpfs
    (ENOSPC), or a file size limit (EFBIG)."""
    if request.param == "ENOSPC":
        folder = request.getfixturevalue("tiny_fs") / "spool"
        yield folder, run_fill(folder, 400)
    else:
        folder = tmp_path / "spool"
        yield folder, run_fill(folder, 400, file_limit=100_000 + 123)


def test_a_full_disk_keeps_whole_records_and_counts_the_rest(full: tuple[Path, dict]):
    folder, report = full
    assert report["dropped"] > 0 and report["kept"] > 20  # the disk did fill, part-way
    assert report["kept"] + report["dropped"] == 400
    assert report["spooled"] == report["kept"]
    assert report["size"] == on_disk(folder)  # the byte count is the bytes on disk
    assert report["errors"] <= 2  # one episode: its first drop and its summary
    back = [r for path in sorted(folder.glob("spool-*.bin")) for r in read_records(path)]
    assert len(back) == report["kept"]
    for r in back:  # every kept record intact, none torn or shifted
        assert r.request_body == body(r.id - 10_000)


def test_a_drained_full_spool_is_empty_and_takes_records_again(tiny_fs: Path):
    folder = tiny_fs / "spool"
    spool = Spool(folder, 10**9)
    while spool.append([record(spool.dropped + spool.spooled)]):
        pass  # until the tmpfs is full
    assert spool.pending() and spool.size == on_disk(folder)
    replayed = 0
    for path, records in spool.drain():
        replayed += len(records)
        assert spool.done(path)
    assert replayed == spool.spooled
    assert not spool.pending() and spool.size == 0 == on_disk(folder)
    assert spool.append([record(0)]) == 1 and spool.size == on_disk(folder) > 0
    spool.close()


def test_a_journal_on_a_full_disk_starts_again_by_itself_and_keeps_no_stale_calls(
    tiny_fs: Path, monkeypatch: pytest.MonkeyPatch
):
    """The journal's disk fills: journaling stops. Once there is room, it starts again after
    RETRY_SECONDS when asked (/healthz asks: an idle gateway's `journal` clears with no call
    needed); a call that was open when it stopped, and ended meanwhile, is not listed as
    interrupted by a later kill's recovery (its record was stored)."""
    from gateway.writer import journal as journal_module

    monkeypatch.setattr(journal_module, "RETRY_SECONDS", 3600.0)
    journal = journal_module.Journal(tiny_fs / "journal")
    journal.open()
    earlier = record(1)
    journal.write(None, [], [earlier], [])  # a call starts
    filler = tiny_fs / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    with contextlib.suppress(OSError):
        while os.write(fd, b"\0" * 4096):
            pass
    os.close(fd)
    journal.write(b"\0" * 65536, [2, 3], [], [])  # a hand-off's frame: no room for it
    assert journal.failed is not None and "No space left" in journal.failed
    journal.write(None, [], [], [earlier.id])  # it ends while journaling is off
    journal.retry()
    assert journal.failed is not None  # not yet: RETRY_SECONDS have not passed
    filler.unlink()
    monkeypatch.setattr(journal_module, "RETRY_SECONDS", 0.0)  # ... and now they have
    journal.retry()  # no call needed
    assert journal.failed is None
    later = record(20)
    journal.write(None, [], [later], [])
    journal._compact()  # what a long-running gateway does past 64 KiB of entries
    found = journal_module.Journal(tiny_fs / "journal").recover()  # after a kill
    assert [c.id for c in found.interrupted] == [later.id]
    journal.close(clean=True)


def test_a_file_torn_mid_record_is_replayed_up_to_the_tear(tmp_path: Path):
    folder = tmp_path / "spool"
    writer = Spool(folder, 10**9)
    writer.append([record(1), record(2), record(3)])
    writer.close()
    (torn,) = folder.glob("spool-*.bin")
    whole = torn.read_bytes()
    torn.write_bytes(whole[:-100])  # a process killed in the middle of its third record
    (folder / "spool-00000000000000000001-1.bin").write_bytes(whole[:2])  # a torn header

    spool = Spool(folder, 10**9)
    assert spool.size == on_disk(folder) and spool.pending()
    replayed = []
    for path, records in spool.drain():
        replayed += [r.id - 10_000 for r in records]
        assert spool.done(path)
    assert replayed == [1, 2]
    assert not spool.pending() and not list(folder.glob("spool-*.bin"))


def test_small_records_that_come_together_are_one_compressed_block(tmp_path: Path):
    """A hand-off window of 1 KB calls takes a fraction of its bytes, reads back whole and in
    order beside records written one by one (and beside files from before blocks)."""
    folder = tmp_path / "spool"
    older = b"".join(b"".join(_entry(record(n))) for n in (1, 2))  # a file written before
    folder.mkdir()
    (folder / "spool-00000000000000000001-1.bin").write_bytes(older)
    spool = Spool(folder, 10**9)
    together = [record(n, words(n)) for n in range(3, 40)]
    before = spool.size
    assert spool.append(together) == len(together)
    raw = sum(len(b"".join(_entry(r))) for r in together)
    assert spool.size - before < raw / 4
    assert spool.append([record(40)]) == 1  # random bytes: as they are
    assert spool.append([record(41, words(41))]) == 1  # alone, still compressed
    spool.close()
    files = sorted(folder.glob("spool-*.bin"))
    assert sum(p.stat().st_size for p in files) == spool.size
    back = [r for path in files for r in read_records(path)]
    assert [r.id - 10_000 for r in back] == list(range(1, 42))
    assert all(
        r.request_body == (words(n) if 3 <= n <= 41 and n != 40 else body(n))
        for n, r in zip(range(1, 42), back, strict=True)
    )
    assert back[5] == together[3]  # every field, not the body alone


def test_large_records_are_compressed_once_the_spool_is_half_full(tmp_path: Path):
    """Records of large bodies go as they are (zstd would cost the proxy more than the disk
    saved), until half the bound is used: from there the choice is CPU now or records dropped
    later, and they are compressed, so a burst of 100 KB calls lasts longer before any drop."""
    big = [record(n, b" ".join(words(n * 100 + i) for i in range(40))) for n in range(40)]
    size = len(b"".join(_entry(big[0])))
    assert size > spool_module.BLOCK_RECORD_BYTES
    spool = Spool(tmp_path / "spool", 10 * size)
    kept = sum(spool.append([r]) for r in big)
    assert kept > 15 and spool.dropped == len(big) - kept  # as they are: 10 would fit
    spool.close()
    files = sorted((tmp_path / "spool").glob("spool-*.bin"))
    back = [r for p in files for r in read_records(p)]
    assert back == big[:kept]


def test_a_block_torn_by_a_kill_is_lost_whole_and_the_file_read_up_to_it(tmp_path: Path):
    folder = tmp_path / "spool"
    spool = Spool(folder, 10**9)
    spool.append([record(n, words(n)) for n in range(1, 5)])
    spool.append([record(n, words(n)) for n in range(5, 9)])
    spool.close()
    (path,) = folder.glob("spool-*.bin")
    path.write_bytes(path.read_bytes()[:-7])
    assert [r.id - 10_000 for r in read_records(path)] == [1, 2, 3, 4]


def test_a_block_past_the_bound_keeps_what_fits_record_by_record(tmp_path: Path):
    spool = Spool(tmp_path / "spool", 20_000)
    spool.append([record(1, words(1))])
    kept = spool.append([record(n, words(n)) for n in range(2, 200)])
    assert 0 < kept < 198 and spool.dropped == 198 - kept
    assert spool.size == on_disk(tmp_path / "spool") <= 20_000
    spool.close()
    back = [r for p in sorted((tmp_path / "spool").glob("*.bin")) for r in read_records(p)]
    assert [r.id - 10_000 for r in back] == list(range(1, kept + 2))


def test_a_file_rotates_by_its_records_bytes_not_only_its_own(tmp_path: Path, monkeypatch):
    """A compressed file holds no more records than a file of records as they are would:
    replaying one (the recorder reads a file whole) stays within the same memory."""
    monkeypatch.setattr(spool_module, "_ROTATE_BYTES", 50_000)
    spool = Spool(tmp_path / "spool", 10**9)
    for start in range(0, 400, 20):
        spool.append([record(n, words(n)) for n in range(start, start + 20)])
    spool.close()
    files = sorted((tmp_path / "spool").glob("spool-*.bin"))
    held = [[len(b"".join(_entry(r))) for r in read_records(p)] for p in files]
    assert sum(map(len, held)) == 400 and len(files) > 1
    block = 20 * max(map(max, held))  # a file is rotated before the write that would pass it
    assert all(sum(sizes) < 50_000 + block for sizes in held)
    assert all(p.stat().st_size < 50_000 / 2 for p in files)  # what it saves on disk


def test_files_removed_by_hand_do_not_leave_the_spool_pending(tmp_path: Path):
    spool = Spool(tmp_path / "spool", 10**9)
    spool.append([record(1)])
    spool.close()
    for path in (tmp_path / "spool").glob("spool-*.bin"):
        path.unlink()
    assert list(spool.drain()) == []
    assert not spool.pending() and spool.size == 0


def test_the_size_limit_drops_and_counts_with_one_log_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    spool = Spool(tmp_path / "spool", 20_000)
    with caplog.at_level(logging.ERROR, logger="agentops.spool"):
        kept = spool.append([record(n) for n in range(100)])
    assert 0 < kept < 100 and spool.dropped == 100 - kept
    assert spool.size == on_disk(tmp_path / "spool") <= 20_000
    assert len(caplog.records) == 1  # the episode's first drop; the rest are counted
    spool.close()


def test_files_handed_to_the_writer_count_until_it_removes_them(tmp_path: Path):
    """The proxy hands its overflow files to the writer; until the writer has replayed and
    removed them they are on disk, so they count in `size` (/healthz) and against the bound.
    They used not to: under sustained load 1.5 GB of handed-over files sat behind a 1 GiB
    bound while /healthz said 11 MiB."""
    folder = tmp_path / "spool"
    spool = Spool(folder, 20_000)
    kept = spool.append([record(n) for n in range(100)])
    handed = spool.release()
    assert handed and spool.size == on_disk(folder) > 10_000
    assert kept > 10 and spool.append([record(n) for n in range(100, 200)]) <= 1
    assert on_disk(folder) <= 20_000
    for path in handed:  # the writer replayed them
        path.unlink()
    assert spool.append([record(200)]) == 1
    assert spool.size == on_disk(folder) < 10_000
    spool.close()


async def test_a_torn_spool_file_is_stored_up_to_the_tear_and_removed(
    upstream: Upstream, tmp_path: Path
):
    """Left by a crash: the records before the tear are stored, the file goes, and the writer
    does not replay it forever."""
    folder = tmp_path / "spool"
    spool = Spool(folder, 10**9)
    spool.append([record(1), record(2)])
    spool.close()
    (path,) = folder.glob("spool-*.bin")
    path.write_bytes(path.read_bytes()[:-10])
    db = migrated_sqlite(tmp_path / "torn.db")
    async with running(make_settings(upstream.url, db, tmp_path)) as gw:
        await gw.recorder.drained(timeout=10)
        assert await gw.store.count() == 1
        assert not list(folder.glob("spool-*.bin"))
        state = await health(gw)
        assert state["spool_bytes"] == 0 and state["database"] == "ok"


# -- a gateway with its database down and its spool on a full disk -----------------------------


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


async def idle_writer(gw: Gateway) -> None:
    """The writer process used under 20% of a core over 2 s."""
    pid = gw.recorder.pid
    assert pid is not None
    before = cpu_seconds(pid)
    await asyncio.sleep(2)
    assert cpu_seconds(pid) - before < 0.4


async def send(gw: Gateway, count: int, tag: str) -> None:
    """`count` calls, 25 at a time, each with 2 KiB of text so a few dozen fill the spool
    (random, as base64: compressed blocks would hold hundreds of repeated characters)."""

    async def one(http: aiohttp.ClientSession, n: int) -> None:
        payload = {
            "model": "mistral-small-latest",
            "messages": [{"role": "user", "content": f"{tag} {n} {token_urlsafe(1536)}"}],
        }
        async with http.post(
            f"{gw.proxy_url}/v1/chat/completions",
            json=payload,
            headers={"Authorization": f"Bearer {KEY}"},
        ) as resp:
            await resp.read()
            assert resp.status == 200

    async with aiohttp.ClientSession() as http:
        for start in range(0, count, 25):
            await asyncio.gather(*(one(http, n) for n in range(start, min(count, start + 25))))


@pytest.mark.postgres
async def test_database_down_and_spool_disk_full_keep_the_writer_idle_and_lose_no_count(
    upstream: Upstream,
    relayed_pg: tuple[str, TcpRelay],
    tiny_fs: Path,
    tmp_path: Path,
):
    db, relay = relayed_pg
    settings = make_settings(upstream.url, db, tmp_path).replace(spool_dir=str(tiny_fs))
    gw = Gateway(settings)
    await gw.start()
    restored = False
    try:
        await relay.cut()
        await send(gw, 300, "full")

        async def settled() -> bool:  # every call stored, spooled or dropped by the writer
            state = await health(gw)
            return state["queue_depth"] == 0 and state["dropped_records"] > 0

        await wait_until(settled)
        state = await health(gw)
        assert state["database"] == "down" and state["status"] == "degraded"

        await idle_writer(gw)  # waiting for the database, not spinning

        async def exact() -> bool:
            return (await health(gw))["spool_bytes"] == on_disk(tiny_fs) > 0

        await wait_until(exact)

        await relay.restore()
        restored = True

        async def replayed() -> bool:
            state = await health(gw)
            return state["database"] == "ok" and state["spool_bytes"] == 0 == on_disk(tiny_fs)

        await wait_until(replayed)
        await idle_writer(gw)  # where the byte count used to stay above zero, and spin
        await gw.recorder.drained(timeout=10)
        state = await health(gw)
        stored = await gw.store.count()
        assert stored > 0 and stored + state["dropped_records"] == 300
        assert state["spool_bytes"] == 0 == on_disk(tiny_fs)
        assert state["database"] == "ok"
        await send(gw, 5, "after")  # and new calls are recorded again
        await gw.recorder.drained(timeout=10)
        assert await gw.store.count() == stored + 5
    finally:
        if not restored:
            await relay.restore()
        began = time.monotonic()
        await gw.stop()
    assert time.monotonic() - began < 5


@pytest.mark.postgres
async def test_a_gateway_stops_at_once_with_its_database_down_and_its_spool_full(
    upstream: Upstream,
    relayed_pg: tuple[str, TcpRelay],
    tiny_fs: Path,
    tmp_path: Path,
):
    db, relay = relayed_pg
    settings = make_settings(upstream.url, db, tmp_path).replace(spool_dir=str(tiny_fs))
    gw = Gateway(settings)
    await gw.start()
    try:
        await relay.cut()
        await send(gw, 200, "stop")
    finally:
        began = time.monotonic()
        await gw.stop()
        took = time.monotonic() - began
        await relay.restore()
    assert took < 8
    kept = sum(1 for p in tiny_fs.rglob("spool-*.bin") for _ in read_records(p))
    dropped = gw.recorder.health().dropped_records
    assert kept > 0 and dropped > 0
    assert kept + dropped == 200  # every call is on disk or counted


def test_a_batch_is_written_as_the_same_bytes_as_its_records_one_by_one(tmp_path: Path):
    together, alone = Spool(tmp_path / "together", 10**9), Spool(tmp_path / "alone", 10**9)
    records = [record(n) for n in range(50)]
    assert together.append(records) == 50
    for r in records:
        assert alone.append([r]) == 1
    together.close()
    alone.close()
    (a,), (b,) = (tmp_path / "together").glob("spool-*.bin"), (tmp_path / "alone").glob("*.bin")
    assert a.read_bytes() == b.read_bytes()
    assert together.size == alone.size == a.stat().st_size
    assert [r.to_dict() for r in read_records(a)] == [r.to_dict() for r in records]


def test_a_batch_over_the_size_limit_keeps_the_records_that_fit(tmp_path: Path):
    records = [record(n) for n in range(30)]
    alone = Spool(tmp_path / "alone", 20_000)
    kept_alone = sum(alone.append([r]) for r in records)
    together = Spool(tmp_path / "together", 20_000)
    assert together.append(records) == kept_alone < 30
    assert together.dropped == alone.dropped == 30 - kept_alone
    assert together.size == alone.size == on_disk(tmp_path / "together")
    together.close()
    alone.close()


def test_records_another_version_wrote_read_back_by_their_fields(tmp_path: Path):
    """A record's dict with a field this version lacks, or without one it has, reads back as
    `Exchange.from_dict` makes it; one with exactly this version's fields, by position."""
    whole = record(1).to_dict()
    older = {k: v for k, v in whole.items() if k != "response_decoded"}
    newer = {**whole, "a_later_field": 1}
    path = tmp_path / "spool-00000000000000000001-1.bin"
    path.write_bytes(
        b"".join(
            len(data).to_bytes(4, "big") + data
            for data in (
                pickle.dumps(d, protocol=pickle.HIGHEST_PROTOCOL) for d in (whole, older, newer)
            )
        )
    )
    back = list(read_records(path))
    assert back == [record(1), Exchange.from_dict(older), Exchange.from_dict(newer)]
    assert back[0] == back[1] == back[2]  # the missing field has its default
