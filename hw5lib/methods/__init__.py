"""The explanation methods: tensors in, tensors out (no figures, no files): gradients, SmoothGrad,
Integrated Gradients, CAMs, filter ascent, DeepDream, LIME, and the metrics that score maps."""
