"""MuFleet's benchmarks: speed and memory numbers, printed as tables (`make bench`)."""
