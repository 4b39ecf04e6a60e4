"""Debugging the guest and its devices: the gdbstub, guest breakpoints, virtio breakpoints and the stop they share."""
