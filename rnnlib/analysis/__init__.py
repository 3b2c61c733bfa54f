"""Numpy and pandas statistics the pages show: Compare's groups and bands, predictions, lessons, gate traces."""
