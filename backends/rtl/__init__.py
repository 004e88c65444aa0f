"""The ``rtl`` backend: TT layers run on the Verilog core (rtl/) in a simulator through cocotb, bit-exact
with the ``fixed`` backend's spec (docs/rtl.md)."""
