"""Tools that look at a VMM from outside it: kvmtrace (every KVM ioctl and exit of any process)."""
