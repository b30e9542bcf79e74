"""Measuring images: ROIs and contrast-to-noise ratio, image-quality metrics, their statistics, the evaluation of a
held-out set, and figures."""
