"""x86-64: the guest-physical map, CPU state, and boot protocols."""
