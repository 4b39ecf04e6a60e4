"""The VM fd: memory slots, the in-kernel irqchip and PIT, interrupt lines, irqfd and ioeventfd."""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING

from . import abi
from .ioctl import close_fd, ioctl

if TYPE_CHECKING:
    from .system import Kvm
    from .vcpufd import VcpuFd


class VmFd:
    """One KVM virtual machine."""

    def __init__(self, kvm: Kvm, fd: int) -> None:
        self.kvm = kvm
        self.fd = fd
        self._finalizer = weakref.finalize(self, close_fd, fd)
        self._next_slot = 0
        self._free_slots: list[int] = []
        # slot -> (gpa, size, hva, readonly): what each memory slot maps now (the gdbstub's write
        # watchpoints split RAM slots around read-only pages, and put them back).
        self.slots: dict[int, tuple[int, int, int, bool]] = {}

    def close(self) -> None:
        self._finalizer()

    def set_user_memory_region(self, gpa: int, size: int, hva: int, *, readonly: bool = False,
                               slot: int | None = None) -> int:
        """Map host memory [hva, hva+size) at guest-physical gpa; returns the slot used."""
        if slot is None:
            if self._free_slots:
                slot = self._free_slots.pop()
            else:
                slot = self._next_slot
                self._next_slot += 1
        region = abi.kvm_userspace_memory_region(
            slot=slot,
            flags=abi.KVM_MEM_READONLY if readonly else 0,
            guest_phys_addr=gpa,
            memory_size=size,
            userspace_addr=hva,
        )
        ioctl(self.fd, abi.KVM_SET_USER_MEMORY_REGION, region, name="KVM_SET_USER_MEMORY_REGION")
        self.slots[slot] = (gpa, size, hva, readonly)
        return slot

    def delete_memory_region(self, slot: int) -> None:
        """Unmap a slot (KVM_SET_USER_MEMORY_REGION with size 0); its number is reused."""
        region = abi.kvm_userspace_memory_region(slot=slot, flags=0, guest_phys_addr=0, memory_size=0,
                                                 userspace_addr=0)
        ioctl(self.fd, abi.KVM_SET_USER_MEMORY_REGION, region, name="KVM_SET_USER_MEMORY_REGION")
        if self.slots.pop(slot, None) is not None:
            self._free_slots.append(slot)

    def set_tss_addr(self, gpa: int) -> None:
        ioctl(self.fd, abi.KVM_SET_TSS_ADDR, gpa, name="KVM_SET_TSS_ADDR")

    def create_irqchip(self) -> None:
        ioctl(self.fd, abi.KVM_CREATE_IRQCHIP, name="KVM_CREATE_IRQCHIP")

    def create_pit2(self) -> None:
        cfg = abi.kvm_pit_config(flags=abi.KVM_PIT_SPEAKER_DUMMY)
        ioctl(self.fd, abi.KVM_CREATE_PIT2, cfg, name="KVM_CREATE_PIT2")

    def get_irqchip(self, chip_id: int) -> abi.kvm_irqchip:
        """One in-kernel interrupt controller's state (KVM_IRQCHIP_PIC_MASTER, _SLAVE or _IOAPIC)."""
        chip = abi.kvm_irqchip(chip_id=chip_id)
        ioctl(self.fd, abi.KVM_GET_IRQCHIP, chip, name="KVM_GET_IRQCHIP")
        return chip

    def set_irqchip(self, chip: abi.kvm_irqchip) -> None:
        ioctl(self.fd, abi.KVM_SET_IRQCHIP, chip, name="KVM_SET_IRQCHIP")

    def get_pit2(self) -> abi.kvm_pit_state2:
        state = abi.kvm_pit_state2()
        ioctl(self.fd, abi.KVM_GET_PIT2, state, name="KVM_GET_PIT2")
        return state

    def set_pit2(self, state: abi.kvm_pit_state2) -> None:
        ioctl(self.fd, abi.KVM_SET_PIT2, state, name="KVM_SET_PIT2")

    def irq_line(self, gsi: int, level: int) -> None:
        ioctl(self.fd, abi.KVM_IRQ_LINE, abi.kvm_irq_level(irq=gsi, level=level), name="KVM_IRQ_LINE")

    def irqfd(self, eventfd: int, gsi: int, *, resamplefd: int | None = None, deassign: bool = False) -> None:
        flags = abi.KVM_IRQFD_FLAG_DEASSIGN if deassign else 0
        if resamplefd is not None:
            flags |= abi.KVM_IRQFD_FLAG_RESAMPLE
        arg = abi.kvm_irqfd(fd=eventfd, gsi=gsi, flags=flags, resamplefd=resamplefd or 0)
        ioctl(self.fd, abi.KVM_IRQFD, arg, name="KVM_IRQFD")

    def ioeventfd(self, eventfd: int, addr: int, length: int, *, datamatch: int | None = None,
                  pio: bool = False, deassign: bool = False) -> None:
        flags = 0
        if datamatch is not None:
            flags |= abi.KVM_IOEVENTFD_FLAG_DATAMATCH
        if pio:
            flags |= abi.KVM_IOEVENTFD_FLAG_PIO
        if deassign:
            flags |= abi.KVM_IOEVENTFD_FLAG_DEASSIGN
        arg = abi.kvm_ioeventfd(datamatch=datamatch or 0, addr=addr, len=length, fd=eventfd, flags=flags)
        ioctl(self.fd, abi.KVM_IOEVENTFD, arg, name="KVM_IOEVENTFD")

    def create_vcpu(self, index: int) -> VcpuFd:
        from .vcpufd import VcpuFd

        fd = ioctl(self.fd, abi.KVM_CREATE_VCPU, index, name="KVM_CREATE_VCPU")
        return VcpuFd(self, fd, index)

