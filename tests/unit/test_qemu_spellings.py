"""QEMU's spellings on `pyvmm run`: each accepted and mapped onto the VmConfig it means, or refused with
one line that names the option and what to use instead (tests/integration/test_qemu_habits.py boots)."""

from __future__ import annotations

import pytest

from pyvmm import qemuopts
from pyvmm.cli import build_parser, config_from_args, main
from pyvmm.errors import ConfigError
from pyvmm.virtio.balloon import BalloonOptions

MiB = 1 << 20


def cfg(*argv: str):
    args = build_parser().parse_args(["run", *argv])
    return config_from_args(args)


@pytest.mark.parametrize("argv, field, value", [
    (["-smp", "2"], "smp", 2),
    (["-smp", "cpus=4,sockets=2,cores=2"], "smp", 4),
    (["-smp", "4,sockets=1,cores=2,threads=2"], "smp", 4),
    (["-smp", "sockets=2,cores=3"], "smp", 6),
    (["--smp", "3"], "smp", 3),
    (["-m", "512m"], "memory", 512 * MiB),
    (["-m", "size=1G"], "memory", 1024 * MiB),
    (["-qmp", "unix:/tmp/q.sock,server,wait=off"], "qmp", ("unix:/tmp/q.sock,server,wait=off",)),
    (["-qmp", "tcp:127.0.0.1:4444,server,nowait"], "qmp", ("tcp:127.0.0.1:4444,server,nowait",)),
    (["-monitor", "stdio"], "monitor", True),
    (["-monitor", "none"], "monitor", False),
    (["-monitor", "unix:/tmp/m.sock,server,nowait"], "hmp", ("unix:/tmp/m.sock,server,nowait",)),
    (["-serial", "stdio"], "console", "stdio"),
    (["-serial", "mon:stdio"], "console", "stdio"),
    (["-serial", "null"], "console", "none"),
    (["-serial", "file:/tmp/console.txt"], "console", "file:/tmp/console.txt"),
    (["-nographic"], "display", "none"),
    (["-display", "none"], "display", "none"),
    (["-display", "curses"], "display", "terminal"),
    (["-S"], "start_paused", True),
    (["-no-reboot"], "no_reboot", True),
    (["-no-shutdown"], "no_shutdown", True),
    (["-M", "microvm"], "acpi", True),
    (["-M", "microvm,acpi=off"], "acpi", False),
    (["-machine", "microvm,x-option-roms=off,pit=on"], "acpi", True),
    (["-no-acpi"], "acpi", False),
    (["-enable-kvm"], "smp", 1),
    (["-accel", "kvm"], "smp", 1),
    (["-M", "microvm,accel=kvm"], "smp", 1),
    (["-nodefaults", "-no-user-config"], "smp", 1),
    (["-cpu", "host"], "cpu_passthrough", True),
    (["-cpu", "max"], "cpu_passthrough", True),
    (["-name", "vm1"], "name", "vm1"),
    (["-name", "guest=vm2,debug-threads=on"], "name", "vm2"),
    (["-kernel", "k.elf"], "kernel", __import__("pathlib").Path("k.elf")),
    (["-append", "console=ttyS0"], "append", "console=ttyS0"),
    (["-initrd", "i.cpio"], "initrd", __import__("pathlib").Path("i.cpio")),
    (["-mem-prealloc"], "mem_prealloc", True),
    (["-d", "virtio"], "trace", frozenset({"virtio"})),
    (["-d", "trace:virtio*,guest_errors"], "trace", frozenset({"virtio"})),
    (["-d", "boot,virtio"], "trace", frozenset({"boot", "virtio"})),
    (["-D", "/tmp/pyvmm.log"], "log_file", __import__("pathlib").Path("/tmp/pyvmm.log")),
    (["--trace-file", "t.jsonl"], "trace", frozenset({"virtio"})),        # implied, JSON only
    (["--trace-file", "t.jsonl"], "trace_text", False),
    (["--trace-file", "t.jsonl", "--trace", "boot"], "trace", frozenset({"boot"})),
    (["--trace-file", "t.jsonl", "--trace", "boot"], "trace_text", True),
])
def test_spelling_maps_onto_the_config(argv, field, value):
    assert getattr(cfg(*argv), field) == value


def test_monitor_stdio_is_not_memory_onitor():
    c = cfg("-monitor", "stdio", "-m", "128M")
    assert c.monitor and c.memory == 128 * MiB


def test_device_virtio_balloon_takes_qemus_properties_and_defaults():
    c = cfg("-device", "virtio-balloon-device,id=balloon0,deflate-on-oom=on,free-page-reporting=on,"
            "guest-stats-polling-interval=2")
    assert c.balloon == BalloonOptions(must_tell_host=False, stats=True, stats_interval=2.0, deflate_on_oom=True,
                                       free_page_reporting=True, page_poison=True)
    plain = cfg("-device", "virtio-balloon-device").balloon
    assert (plain.deflate_on_oom, plain.free_page_reporting, plain.must_tell_host) == (False, False, False)
    assert cfg("-device", "virtio-balloon").balloon == plain       # no PCI: the one balloon there is
    assert cfg("-device", "virtio-balloon-device,page-poison=off").balloon.page_poison is False


def test_device_isa_debug_exit_at_pyvmms_port_is_accepted():
    assert cfg("-device", "isa-debug-exit,iobase=0xf4,iosize=0x04").balloon == "default"


@pytest.mark.parametrize("argv, message", [
    (["-drive", "file=disk.img"], "-drive: pyvmm has no block devices"),
    (["-hda", "disk.img"], "-hda: pyvmm has no disks"),
    (["-cdrom", "x.iso"], "-cdrom: pyvmm has no CD-ROM"),
    (["-netdev", "user,id=n0"], "-netdev: pyvmm has no network devices"),
    (["-nic", "user"], "-nic: pyvmm has no network devices"),
    (["-vnc", ":0"], "-vnc: pyvmm has no graphical display"),
    (["-bios", "bios.bin"], "-bios: pyvmm boots through its own ROM (--firmware FILE"),
    (["-boot", "c"], "-boot: pyvmm boots the kernel given with -kernel"),
    (["-chardev", "stdio,id=c0"], "-chardev: pyvmm's console is COM1"),
    (["-object", "memory-backend-ram,id=m"], "-object: pyvmm has no QOM objects"),
    (["-incoming", "tcp::4444"], "-incoming: pyvmm cannot migrate"),
    (["-vga", "std"], "-vga: use --vga text or --vga none"),
    (["-usb"], "-usb: pyvmm has no USB"),
    (["-rtc", "base=utc"], "-rtc: pyvmm has no RTC"),
    (["-daemonize"], "-daemonize: run pyvmm in the background"),
    (["-frobnicate"], "unknown option -frobnicate"),
    (["-smp", "2,cores=3"], "-smp 2,cores=3: 2 CPUs do not match sockets*cores*threads = 3"),
    (["-smp", "2,maxcpus=4"], "pyvmm has no CPU hotplug"),
    (["-smp", "two"], "-smp 'two': expected N or cpus=N"),
    (["-monitor", "vc"], "-monitor 'vc': use stdio, none, unix:PATH"),
    (["-monitor", "unix:"], "-monitor unix:: missing socket path"),
    (["-serial", "pty"], "-serial 'pty': pyvmm's COM1 goes to stdio, mon:stdio, null or file:PATH"),
    (["-display", "gtk"], "-display 'gtk': pyvmm has no windows"),
    (["-M", "pc"], "-M pc: pyvmm models one machine, close to QEMU's microvm"),
    (["-M", "q35,accel=kvm"], "-M q35"),
    (["-M", "microvm,frob=1"], "unknown property 'frob'"),
    (["-accel", "tcg"], "-accel tcg: pyvmm runs guests on KVM only"),
    (["-cpu", "Skylake-Client"], "-cpu Skylake-Client: pyvmm gives the guest the host's CPUID"),
    (["-d", "in_asm"], "-d in_asm: a log item of QEMU's TCG emulator"),
    (["-d", "frob"], "-d frob: unknown log item"),
    (["-device", "virtio-net-device"], "-device virtio-net-device: pyvmm has no network devices"),
    (["-device", "virtio-balloon-pci"], "pyvmm has no PCI bus: its balloon is virtio-mmio"),
    (["-device", "e1000"], "-device e1000: pyvmm has no network devices"),
    (["-device", "frob"], "-device frob: unknown driver; pyvmm has virtio-balloon-device, virtio-rng-device, "
     "isa-debug-exit, python:FILE:CLASS"),
    (["-device", "isa-debug-exit"], "QEMU's default port is 0x501; pyvmm's is 0xf4"),
    (["-device", "isa-debug-exit,iobase=0x501"], "pyvmm's debug-exit port is 0xf4"),
    (["-device", "virtio-balloon-device,frob=on"], "unknown property 'frob'"),
    (["-device", "virtio-balloon-device,deflate-on-oom=maybe"], "expected on or off"),
    (["-device", "virtio-balloon-device,free-page-hint=on"], "pyvmm does not implement free page hinting"),
    (["-device", "virtio-balloon-device", "-device", "virtio-balloon-device"], "given twice"),
    (["-device", "virtio-balloon-device", "--balloon", "off"], "both --balloon and -device"),
    (["-kernel", "a.elf", "b.elf"], "two kernels"),
])
def test_refused_with_one_line(argv, message, capsys):
    code = main(["run", *argv])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("pyvmm: ") and err.count("\n") == 1, err
    assert message in err, err


def test_help_lists_qemus_spellings(capsys):
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    out = capsys.readouterr().out
    for spelling in ("-kernel", "-smp", "-qmp", "-monitor", "-serial", "-nographic", "-display", "-S",
                     "-no-reboot", "-no-shutdown", "-device", "-machine", "-enable-kvm", "-accel", "-cpu",
                     "-name", "-pidfile", "-D", "-d", "-append", "-initrd", "-mem-prealloc"):
        assert f"  {spelling} " in out or f"{spelling}," in out or f", {spelling}" in out, spelling


def test_every_option_string_of_the_run_parser_is_known_to_the_pre_check():
    from pyvmm.cli import _run_parser
    from pyvmm.cli_run import run_option_strings

    known, takes_value = run_option_strings(_run_parser(build_parser()))
    assert "-monitor" in known and "-monitor" in takes_value and "-S" in known and "-S" not in takes_value
    assert not set(qemuopts.UNSUPPORTED) & known        # an option cannot be both
    # a value that looks like an option is the value, not an option
    qemuopts.check_unsupported(["-append", "-drive", "-m", "64M"], known, takes_value)
    with pytest.raises(ConfigError, match="-drive"):
        qemuopts.check_unsupported(["-m", "64M", "-drive", "x"], known, takes_value)


@pytest.mark.parametrize("text, props", [
    ("a,b=1,c", ("a", {"b": "1", "c": "on"})),
    ("file,,name,x=y", ("file,name", {"x": "y"})),
])
def test_props_as_qemu_writes_them(text, props):
    assert qemuopts.parse_props(text, "-x") == props
