"""Training, data and evaluation for DiffGesture; uses model_core for the network, schedule and samplers."""
