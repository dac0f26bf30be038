"""depotwatch services: capture, aggregator, estimators, state estimator, and their runtime."""
