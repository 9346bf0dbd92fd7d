"""The final model: schedule, retrain, the one test pass, stored results."""
