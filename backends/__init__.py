"""Simulated hardware behind the Backend seam (installed as ``hwsim.backends``)."""
from hwsim.backends.base import Backend, Capabilities, backend_class, backend_names, create_backend

__all__ = ["Backend", "Capabilities", "backend_class", "backend_names", "create_backend"]
