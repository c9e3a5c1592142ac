"""Storage: the checkpoint layout, model folders and Hub references, read and written in one place each; imports decoding settings, data and below, never model, inference or training."""
