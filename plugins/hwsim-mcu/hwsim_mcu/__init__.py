"""hwsim-mcu: a Cortex-M micro-controller backend for hwsim, found through the ``hwsim.backends`` entry point."""
