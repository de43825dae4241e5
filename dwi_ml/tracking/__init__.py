"""Tracking with a trained model: seeds, batched propagation, stopping
criteria, and the files it reads and writes; scoring of tractograms against
a reference (points, bundles, connectivity)."""
