"""Numbers about predictions: metrics, calibration, confused pairs."""
