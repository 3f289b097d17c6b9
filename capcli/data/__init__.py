"""Datasets: reading sources, the synthetic shapes set, vocabulary and the prepared HDF5 format."""
