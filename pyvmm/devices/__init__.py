"""Platform devices of pyvmm: the 16550A, the debug exit, power and reset, the POST port."""
