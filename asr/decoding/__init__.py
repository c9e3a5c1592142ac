"""Decoding: CTC (T, V) matrices to hypotheses (greedy, beam search, phone lexicon) and the settings that pick one; imports lm, data and utils, never model, storage or inference."""
