"""Sizes and the validated VM configuration."""

import pytest

from pyvmm.config import VmConfig
from pyvmm.errors import ConfigError
from pyvmm.units import format_size, parse_size


@pytest.mark.parametrize("text,value", [
    ("256M", 256 << 20), ("1G", 1 << 30), ("512", 512 << 20), ("64k", 64 << 10), ("1.5G", 3 << 29),
    ("4096B", 4096), ("2MiB", 2 << 20),
])
def test_parse_size(text, value):
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["", "lots", "-1M", "1X", "0.3k"])
def test_parse_size_rejects(text):
    with pytest.raises(ConfigError):
        parse_size(text)


def test_format_size():
    # One style everywhere: MiB with one decimal.
    assert format_size(256 << 20) == "256.0 MiB" and format_size(1 << 30) == "1024.0 MiB"
    assert format_size(200 << 10) == "0.2 MiB" and format_size(260968 << 10) == "254.9 MiB"


@pytest.mark.parametrize("kw,msg", [
    ({"memory": 0}, "greater than zero"),
    ({"memory": 4097}, "4 KiB"),
    ({"memory": 1 << 20}, "at least 2M"),
    ({"smp": 0}, "at least 1"),
    ({"virtio_version": 3}, "1 .legacy. or 2"),
    ({"trace": frozenset({"nope"})}, "unknown trace category"),
])
def test_validate(kw, msg):
    with pytest.raises(ConfigError, match=msg):
        VmConfig(**kw).validate()


def test_smp_above_limit():
    with pytest.raises(ConfigError, match="KVM allows"):
        VmConfig(smp=9).validate(max_vcpus=8)


def test_the_python_api_takes_what_people_type(tmp_path):
    cfg = VmConfig(kernel=str(tmp_path / "k.elf"), memory="256M", initrd="i.gz", trace="virtio,boot",
                   qmp="unix:/tmp/q.sock", trace_file="t.jsonl")
    assert cfg.kernel == tmp_path / "k.elf" and cfg.initrd.name == "i.gz" and cfg.trace_file.name == "t.jsonl"
    assert cfg.memory == 256 << 20 and VmConfig(memory="1G").memory == 1 << 30
    assert VmConfig(memory="64").memory == 64 << 20
    assert cfg.trace == frozenset({"virtio", "boot"}) and cfg.qmp == ("unix:/tmp/q.sock",)
    with pytest.raises(ConfigError, match="not a size"):
        VmConfig(memory="lots")
