"""`pyvmm kvmtrace` on QEMU microvm, beside the same trace of pyvmm: the same guest ELF, so the same banner
bytes cross the same port, and QEMU's own memory slots and vCPU set-up, read from its ioctls."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.support.guest import BANNER, GUEST, ROOT, MiB, ensure_built, qemu_cmd
from tests.support.kvmtrace import ioctls, records, serial_bytes

pytestmark = [pytest.mark.kvm, pytest.mark.qemu]


def traced(tmp_path, name: str, command: list[str]) -> tuple[subprocess.CompletedProcess, list[dict]]:
    ensure_built()
    out = tmp_path / f"{name}.jsonl"
    res = subprocess.run([sys.executable, "-m", "pyvmm", "kvmtrace", "--json", "-o", str(out), "--", *command],
                         capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL, cwd=ROOT)
    return res, records(out)


def final_slots(recs: list[dict]) -> dict[int, dict]:
    """The memory map KVM has at the end: each KVM_SET_USER_MEMORY_REGION replaces its slot, size 0 deletes."""
    slots: dict[int, dict] = {}
    for r in ioctls(recs, "KVM_SET_USER_MEMORY_REGION"):
        if r["ret"] != 0:
            continue
        a = r["arg"]
        if a["memory_size"] == 0:
            slots.pop(a["slot"], None)
        else:
            slots[a["slot"]] = a
    return slots


def test_qemu_microvm_traced_beside_pyvmm(tmp_path):
    qres, q = traced(tmp_path, "qemu", qemu_cmd("scenario=selftest"))
    pres, p = traced(tmp_path, "pyvmm", [sys.executable, "-m", "pyvmm", "run", str(GUEST), "-m", "128M",
                                          "--append", "scenario=selftest"])
    # isa-debug-exit makes QEMU exit with (code << 1) | 1; kvmtrace passes QEMU's exit code on.
    assert qres.returncode == 1, qres.stderr
    assert pres.returncode == 0, pres.stderr

    q_serial, p_serial = serial_bytes(q).decode(), serial_bytes(p).decode()
    q_banner, p_banner = BANNER.search(q_serial), BANNER.search(p_serial)
    assert q_banner and p_banner and q_banner.group(0) == p_banner.group(0), \
        "the same ELF writes the same banner through QEMU's 16550 as through pyvmm's"
    assert q_banner.group(0) in qres.stdout
    for recs in (q, p):
        last = ioctls(recs, "KVM_RUN")[-1]["exit"]
        assert (last["reason"], last["port"], last["data"]) == ("IO", 0xF4, "00000000")

    # Guest RAM: pyvmm maps it in one slot; QEMU splits it around the BIOS it maps at 0xf0000, and
    # aliases that ROM below 4 GiB, the RAM covered exactly once.
    q_slots = final_slots(q)
    ram = sorted((s["guest_phys_addr"], s["memory_size"]) for s in q_slots.values()
                 if s["guest_phys_addr"] < 128 * MiB)
    assert sum(size for _, size in ram) == 128 * MiB
    assert all(a + n == b for (a, n), (b, _) in zip(ram, ram[1:], strict=False)), "contiguous, no overlap"
    assert (0x10_0000, 127 * MiB) in ram, "QEMU's slot for the guest RAM above 1 MiB"
    assert any(s["guest_phys_addr"] == 0xFFFF_0000 for s in q_slots.values()), "the BIOS alias at the top"
    p_slots = final_slots(p)
    assert [(s["guest_phys_addr"], s["memory_size"]) for s in p_slots.values() if s["flags"] == 0] == \
        [(0, 128 * MiB)]

    for recs in (q, p):
        (vcpu,) = ioctls(recs, "KVM_CREATE_VCPU")
        (cpuid,) = ioctls(recs, "KVM_SET_CPUID2")
        assert cpuid["fd"] == vcpu["ret"] and cpuid["arg"]["nent"] > 0
    # QEMU sets the reset state itself (KVM_SET_SREGS2, real mode at the reset vector); pyvmm's firmware
    # path leaves KVM's own reset state, so it sets no segment registers at all.
    sregs2 = ioctls(q, "KVM_SET_SREGS2")[0]
    assert sregs2["arg"]["mode"] == "real mode" and sregs2["arg"]["cs"]["selector"] == 0xF000
    assert not ioctls(p, "KVM_SET_SREGS") and not ioctls(p, "KVM_SET_SREGS2")
    summary = {r["type"]: r for r in q}["summary"]
    assert summary["exits"]["by_reason"]["IO"] > len(q_banner.group(0)) * 2, \
        "each character costs QEMU an LSR read and a THR write, as it costs pyvmm"
