"""The built-in dashboard (``depotwatch dashboard``) and Grafana provisioning.

``core`` computes what the page shows from plain messages; ``feed`` tails Kafka; ``server``
serves the page (package data in ``static/``), server-sent events, frames and metrics;
``grafana`` installs the dashboards of ``grafana/`` into a Grafana server.
"""
