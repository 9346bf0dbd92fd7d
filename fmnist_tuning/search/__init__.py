"""The search: space, objective, study, trial loop, worker processes."""
