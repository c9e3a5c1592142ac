"""Training: the loop, its steps, torchrun set-up, resume state and logs; imports data, model, decoding, storage, scoring.metrics and utils, never inference, serving, deploy or cli."""
