"""Data: audio reading, transcript text and vocabulary, phones, manifests (read and write), the training dataset and sampler, corpus preparation; imports utils, errors and config only."""
