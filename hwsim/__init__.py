"""hwsim: run tensor-compressed, back-propagation-free training against pluggable simulated hardware."""
__version__ = "0.1.0"
