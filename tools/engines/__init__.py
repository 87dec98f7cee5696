"""Engines the tools run: the DP-GAN, statistics, plots, quality report and knowledge index."""
