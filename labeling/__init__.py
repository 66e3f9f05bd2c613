"""Labeling: frame pool, filters, crop, sampler, labels, captions, dataset export."""
