"""Scoring predictions: per-case metrics and their summaries (``metrics``), the polyp protocol's metrics
(``polyp_metrics``), and the connected-component postprocessing chosen from out-of-fold scores
(``postprocessing``). Nothing here runs a model."""
