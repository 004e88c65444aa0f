"""cocotb unit benches of the Verilog core, run from pytest (tests/test_rtl.py) on every simulator found."""
