"""The engine: one run's data, model, loss contract, metrics, schedule, trainer and checkpoints.

It imports nothing above it (store, report, drivers) and no paper folder; paper folders and the loss library
reach it through config `_target_`s. Every module here is on the training path of every run, so each one
enters every run's code version."""
