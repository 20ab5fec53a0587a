"""gateway/writer/parts.py: pickles in parts are `pickle.dumps`' bytes; gathered writes keep
every byte in order, whatever the kernel takes per call and however many parts there are."""

from __future__ import annotations

import dataclasses
import os
import pickle

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.writer import parts as parts_module
from gateway.writer.parts import pickled, write_all
from gateway.writer.protocol import Records, frame, frame_parts, pack
from tests.test_protocol import RECORD

# Bodies on both sides of pickle's 64 KiB frame size, where a payload becomes a part of its own.
BODY = st.one_of(
    st.binary(max_size=300),
    st.integers(64 * 1024 - 40, 64 * 1024 + 40).map(lambda n: b"\x00\xff" * (n // 2)),
    st.integers(70_000, 200_000).map(os.urandom),
)


@settings(max_examples=40, deadline=None)
@given(bodies=st.lists(BODY, max_size=6), text=st.text(max_size=80))
def test_the_parts_join_to_the_pickle(bodies, text):
    """Byte for byte `pickle.dumps`: the spool's and the journal's files stay readable by
    older gateways, and older files by this one."""
    value = {"text": text, "bodies": bodies, "chunks": [bodies, bodies[:1]], "n": len(bodies)}
    assert b"".join(pickled(value)) == pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)


def test_a_large_body_is_a_part_of_its_own_not_a_copy():
    """What makes a frame of 100 KB bodies cheap: the body object itself is a part."""
    body = os.urandom(100_000)
    record = dataclasses.replace(RECORD, request_body=body)
    parts = frame_parts(Records([pack(record)]))
    assert any(part is body for part in parts)
    assert b"".join(parts) == frame(Records([pack(record)]))


@settings(max_examples=50, deadline=None)
@given(
    parts=st.lists(st.binary(max_size=64), max_size=5),
    limits=st.lists(st.integers(1, 16), min_size=1, max_size=8),
)
def test_a_gathered_write_cut_short_by_the_kernel_goes_on_in_order(tmp_path_factory, parts, limits):
    """`write_all` continues a short `writev` where it stopped, whatever the parts' sizes."""
    real = os.writev
    turns = iter(limits * 1000)

    def short(fd: int, views: list[memoryview]) -> int:  # the kernel taking a few bytes only
        joined = b"".join(bytes(v) for v in views)
        return real(fd, [joined[: next(turns)]])

    path = tmp_path_factory.mktemp("parts") / "f"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(os, "writev", short)
            write_all(fd, parts)
    finally:
        os.close(fd)
    assert path.read_bytes() == b"".join(parts)


def test_more_parts_than_one_writev_takes(tmp_path, monkeypatch):
    """Past IOV_MAX buffers (1024 on Linux) the parts go in several writes, in order."""
    monkeypatch.setattr(parts_module, "IOV_MAX", 16)
    parts = [bytes([n % 256]) * (n % 7 + 1) for n in range(100)]
    path = tmp_path / "f"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        write_all(fd, parts)
        write_all(fd, [b""] * 3000 + [b"end"])  # empty parts are skipped, not counted
    finally:
        os.close(fd)
    assert path.read_bytes() == b"".join(parts) + b"end"


def test_a_write_that_takes_nothing_is_a_full_disk(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "writev", lambda fd, views: 0)
    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        with pytest.raises(OSError, match="took no bytes"):
            write_all(fd, [b"x"])
    finally:
        os.close(fd)
