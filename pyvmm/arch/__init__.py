"""Architecture-specific pieces of pyvmm."""
