"""virtio devices of pyvmm: the virtio-mmio transport, split virtqueues and the memory balloon."""
