"""Physics-informed networks trained BP-free: sparse grids, forward-only derivative estimators, PDE
problems and the training loop behind ``hwsim pinn``."""
