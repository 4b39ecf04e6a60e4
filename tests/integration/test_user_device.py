"""User devices (-device python:FILE:CLASS,key=value): a device written here, in the test's tmp_path, driven
by the tiny guest's driver (scenario=rng rng_id=ID) in a KVM VM; and every bad input in one line."""

import re
import textwrap

import pytest

from pyvmm.errors import ConfigError
from pyvmm.virtio.user import parse_user_device
from tests.support.guest import pyvmm_cli, run_guest

pytestmark = pytest.mark.kvm

COUNTER = '''
from pyvmm.virtio.device import VirtioDeviceBase


class Counter(VirtioDeviceBase):
    """Fills each device-writable buffer with the bytes start, start+step, ... (mod 256), going on
    where the last buffer stopped."""

    device_id = 42
    queues = ("countq",)
    queue_sizes = (8,)

    def __init__(self, start="0", step="1"):
        super().__init__()
        self.next = int(start)
        self.step = int(step)

    def handle(self, queue, chain):
        data = bytearray()
        for _ in range(chain.writable_len):
            data.append(self.next & 0xFF)
            self.next += self.step
        chain.write(data)
        self.trace("count", len(data), "bytes counted")


class Broken(Counter):
    def handle(self, queue, chain):
        return 1 // 0


class NotADevice:
    pass
'''


@pytest.fixture
def devfile(tmp_path):
    path = tmp_path / "counter.py"
    path.write_text(COUNTER)
    return path


def printed(out: str) -> bytes:
    m = re.search(r"rng: \d+ bytes in \d+ buffers:((?: [0-9a-f]{2})+)", out)
    assert m, out[-2000:]
    return bytes.fromhex(m.group(1))


def test_a_user_device_is_driven_by_the_tiny_guest(devfile):
    dev = parse_user_device(f"python:{devfile}:Counter", {"start": "7", "step": "3"})
    code, out, m = run_guest("scenario=rng rng_id=42 rng_bytes=40", devices=(dev,))
    assert code == 0, out[-2000:]
    assert printed(out) == bytes((7 + 3 * i) & 0xFF for i in range(32))
    t = m.virtio_devices[1]
    assert (t.name, t.device.device_id, t.irq_gsi) == ("counter0", 42, 6)
    assert t.device.next == 7 + 3 * 40
    assert "virtio-mmio: 0xd0001000 irq 6 version 2 device 42" in out


def test_the_cli_loads_it_from_the_file_and_the_trace_names_it(devfile):
    res = pyvmm_cli("run", "-nographic", "--append", "scenario=rng rng_id=42 rng_bytes=16", "--balloon", "off",
                    "-device", f"python:{devfile}:Counter,start=1", "--trace", "virtio")
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert printed(res.stdout)[:16] == bytes(range(1, 17))
    assert "counter0 count !! 16 bytes counted" in res.stderr
    assert re.search(r"counter0 DeviceID -> 42", res.stderr), res.stderr[:2000]


def test_a_device_raising_in_its_handler_is_contained(devfile):
    res = pyvmm_cli("run", "-nographic", "--append", "scenario=rng rng_id=42", "-device",
                    f"python:{devfile}:Broken")
    # The guest sees DEVICE_NEEDS_RESET and fails its scenario; the VMM reports it and exits normally.
    assert res.returncode == 1, res.stderr
    assert "rng: the device set DEVICE_NEEDS_RESET" in res.stdout
    assert "scenario rng: FAIL device error" in res.stdout
    lines = [ln for ln in res.stderr.splitlines() if "ZeroDivisionError" in ln]
    assert len(lines) == 1 and "counter.py" in lines[0] and "in handle" in lines[0], res.stderr
    assert "Traceback" not in res.stderr


@pytest.mark.parametrize("spec, message", [
    ("python:no_such_module_pyvmm:Dev", "no module named 'no_such_module_pyvmm'"),
    ("python:{dir}/missing.py:Dev", "no such file"),
    ("python:{file}:Nothing", "defines no 'Nothing'"),
    ("python:{file}:NotADevice", "NotADevice is not a device: subclass pyvmm.virtio.device.VirtioDeviceBase"),
    ("python:{file}:Counter,colour=red", "unexpected keyword argument 'colour'; Counter takes start, step"),
    ("python:{bad}:Dev", "does not import: SyntaxError"),
    ("python:{file}", "expected python:MODULE_OR_FILE:CLASS"),
])
def test_bad_user_devices_are_one_line(devfile, tmp_path, spec, message):
    bad = tmp_path / "bad.py"
    bad.write_text("def broken(:\n")
    arg = spec.format(dir=tmp_path, file=devfile, bad=bad)
    res = pyvmm_cli("run", "-nographic", "-device", arg)
    assert res.returncode == 2, res.stderr
    assert message in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr
    with pytest.raises(ConfigError):
        driver, _, props = arg.partition(",")
        parse_user_device(driver, dict(p.split("=") for p in props.split(",") if p))


def test_a_raising_constructor_is_one_line(tmp_path):
    path = tmp_path / "ctor.py"
    path.write_text(textwrap.dedent('''
        from pyvmm.virtio.device import VirtioDeviceBase
        class Dev(VirtioDeviceBase):
            device_id = 43
            queues = ("q",)
            queue_sizes = (8,)
            def __init__(self, size="1"):
                super().__init__()
                self.size = int(size)
    '''))
    res = pyvmm_cli("run", "-nographic", "-device", f"python:{path}:Dev,size=big")
    assert res.returncode == 2
    assert "the constructor raised ValueError" in res.stderr and len(res.stderr.strip().splitlines()) == 1


def test_the_python_api_takes_a_device_instance(devfile):
    from pyvmm.virtio.user import load_module

    counter = load_module(str(devfile), "test").Counter(start="200")
    code, out, m = run_guest("scenario=rng rng_id=42 rng_bytes=8", devices=(counter,), balloon=None)
    assert code == 0, out[-2000:]
    assert printed(out) == bytes([200, 201, 202, 203, 204, 205, 206, 207])
    assert m.virtio_devices[0].name == "counter0"
