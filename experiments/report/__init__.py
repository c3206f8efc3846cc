"""Reporting: paired statistics, tables, figures, the matrix ranks, tuning transforms. Reads the run store;
never trains and never enters a run's code version."""
